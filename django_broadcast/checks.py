"""System checks for ``settings.BROADCAST`` (ids ``django_broadcast.E001``...)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning

from .auth import validate_auth
from .backends import schemes
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


#: The layer class, by the dotted path ``CHANNEL_LAYERS`` names it with.
_LAYER = "django_broadcast.layers.BroadcastChannelLayer"


def check_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn where a ``BroadcastChannelLayer`` of ``CHANNEL_LAYERS`` travels through an
    alias whose backend has no queues (W002): its plain channels cannot work."""
    layers = getattr(django_settings, "CHANNEL_LAYERS", None)
    if not isinstance(layers, dict):
        return []
    aliases, _ = validate()
    messages: list[CheckMessage] = []
    for name, entry in layers.items():
        if not isinstance(entry, dict) or entry.get("BACKEND") != _LAYER:
            continue
        config = entry.get("CONFIG") or {}
        alias = config.get("using", "default") if isinstance(config, dict) else "default"
        found = aliases.get(alias)
        if found is None or found.backend.features.queues:
            continue
        messages.append(
            Warning(
                f"CHANNEL_LAYERS[{name!r}] travels through BROADCAST[{alias!r}], whose "
                f"backend {found.backend.__name__} has no queues: its plain channels "
                f"(send() and receive() of names without '!', runworker) raise "
                f"BroadcastError; groups and consumers work.",
                hint=f"Use a backend with queues ({schemes.describe('queues')}) for "
                f"workers, or silence django_broadcast.W002 if you have none.",
                id="django_broadcast.W002",
            )
        )
    return messages
