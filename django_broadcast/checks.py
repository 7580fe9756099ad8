"""System checks for ``settings.BROADCAST`` (ids ``django_broadcast.E001``...)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning

from .auth import validate_auth
from .conf import Problem, validate
from .consumers.settings import validate_clients


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report every problem in ``settings.BROADCAST`` at startup, each with a hint."""
    aliases, problems = validate()
    messages: list[CheckMessage] = [
        Error(p.msg, hint=p.hint or None, id=f"django_broadcast.{p.id}") for p in problems
    ]
    if not settings.DEBUG:
        for config in aliases.values():
            if not config.backend.features.crosses_processes:
                messages.append(
                    Warning(
                        f"BROADCAST[{config.alias!r}] uses {config.backend.__name__} with "
                        f"DEBUG=False: events cannot cross processes or servers.",
                        hint='Use a broker, e.g. "URL": "redis://127.0.0.1:6379/0".',
                        id="django_broadcast.W001",
                    )
                )
    return messages


def check_clients(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report problems in ``BROADCAST_CLIENTS`` and ``BROADCAST_AUTH`` (E010-E014)."""
    problems: list[Problem] = []
    validate_clients(getattr(django_settings, "BROADCAST_CLIENTS", {}), problems)
    validate_auth(getattr(django_settings, "BROADCAST_AUTH", {}), problems)
    return [Error(p.msg, hint=p.hint or None, id=f"django_broadcast.{p.id}") for p in problems]
