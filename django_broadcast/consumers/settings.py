"""``BROADCAST_CLIENTS``: the settings of the browser consumers.

::

    BROADCAST_CLIENTS = {
        "USING": "default",          # the BROADCAST alias the consumers use
        "KEEPALIVE": 15,             # seconds between SSE keep-alive comments
        "RETRY": 3000,               # SSE "retry:" in milliseconds
        "MAX_FRAME_SIZE": 65536,     # bytes of one WebSocket frame from a client
        "MAX_SUBSCRIPTIONS": 50,     # channels one WebSocket may subscribe to
        "MAX_CHANNELS_PER_STREAM": 20,  # channels one SSE stream may name
        "MAX_BUFFER": 262144,        # bytes a server may hold unsent for one client
        "HEARTBEAT": 5,              # seconds between the server list's heartbeats
    }

Read once, and again after ``override_settings`` changes it (or ``BROADCAST``, which
``USING`` names); a bad value is a system-check error (``django_broadcast.E010``,
``E011``, ``E014``) with a hint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import Problem

__all__ = ["ClientSettings", "client_settings", "validate_clients"]

_CLIENT_DEFAULTS: dict[str, Any] = {
    "USING": "default",
    "KEEPALIVE": 15.0,
    "RETRY": 3000,
    "MAX_FRAME_SIZE": 65536,
    "MAX_SUBSCRIPTIONS": 50,
    "MAX_CHANNELS_PER_STREAM": 20,
    "MAX_BUFFER": 262144,
    "HEARTBEAT": 5.0,
}


@dataclass(frozen=True)
class ClientSettings:
    """``BROADCAST_CLIENTS`` with its defaults filled in."""

    using: str
    keepalive: float
    retry: int
    max_frame_size: int
    max_subscriptions: int
    max_channels_per_stream: int
    max_buffer: int
    heartbeat: float


@functools.cache
def client_settings() -> ClientSettings:
    """The current ``BROADCAST_CLIENTS``; raise ``ImproperlyConfigured`` if invalid."""
    problems: list[Problem] = []
    result = validate_clients(getattr(settings, "BROADCAST_CLIENTS", {}), problems)
    if problems:
        first = problems[0]
        raise ImproperlyConfigured(f"django_broadcast.{first.id}: {first.msg} {first.hint}")
    assert result is not None
    return result


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("BROADCAST_CLIENTS", "BROADCAST"):
        client_settings.cache_clear()


def validate_clients(value: Any, problems: list[Problem]) -> ClientSettings | None:
    """Read ``BROADCAST_CLIENTS`` (``value``); append a Problem for each fault."""
    if not isinstance(value, dict):
        problems.append(
            Problem("E010", "BROADCAST_CLIENTS must be a dict.", 'Write {"KEEPALIVE": 15}, say.')
        )
        return None
    before = len(problems)
    unknown = set(value) - set(_CLIENT_DEFAULTS)
    if unknown:
        problems.append(
            Problem(
                "E010",
                f"BROADCAST_CLIENTS has unknown keys: {', '.join(sorted(map(str, unknown)))}.",
                f"Use only {', '.join(_CLIENT_DEFAULTS)}.",
            )
        )
    merged = {**_CLIENT_DEFAULTS, **value}
    using = merged["USING"]
    if not isinstance(using, str):
        problems.append(
            Problem(
                "E011",
                f"BROADCAST_CLIENTS['USING'] = {using!r} is not an alias name.",
                'Write "USING": "default" or another alias of BROADCAST.',
            )
        )
    elif using not in _aliases():
        problems.append(
            Problem(
                "E014",
                f"BROADCAST_CLIENTS['USING'] names {using!r}, which is not in BROADCAST.",
                "Name one of the aliases of BROADCAST.",
            )
        )
    for key in ("KEEPALIVE", "HEARTBEAT"):
        if not _positive(merged[key], (int, float)):
            problems.append(_must_be_positive(key, merged[key], "a number of seconds"))
    for key in (
        "RETRY",
        "MAX_FRAME_SIZE",
        "MAX_SUBSCRIPTIONS",
        "MAX_CHANNELS_PER_STREAM",
        "MAX_BUFFER",
    ):
        if not _positive(merged[key], (int,)):
            problems.append(_must_be_positive(key, merged[key], "an integer"))
    if len(problems) > before:
        return None
    return ClientSettings(
        using=using,
        keepalive=float(merged["KEEPALIVE"]),
        retry=merged["RETRY"],
        max_frame_size=merged["MAX_FRAME_SIZE"],
        max_subscriptions=merged["MAX_SUBSCRIPTIONS"],
        max_channels_per_stream=merged["MAX_CHANNELS_PER_STREAM"],
        max_buffer=merged["MAX_BUFFER"],
        heartbeat=float(merged["HEARTBEAT"]),
    )


def _aliases() -> Any:
    configured = getattr(settings, "BROADCAST", {"default": None})
    return configured if isinstance(configured, dict) else {}


def _positive(value: Any, types: tuple[type[int] | type[float], ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool) and value > 0


def _must_be_positive(key: str, value: Any, what: str) -> Problem:
    return Problem(
        "E011",
        f"BROADCAST_CLIENTS[{key!r}] = {value!r} must be {what} above zero.",
        f"Leave {key} out for its default, {_CLIENT_DEFAULTS[key]!r}.",
    )
