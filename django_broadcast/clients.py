"""Settings of the browser-facing parts: ``BROADCAST_CLIENTS`` and ``BROADCAST_AUTH``.

::

    BROADCAST_CLIENTS = {
        "USING": "default",          # the BROADCAST alias the consumers use
        "KEEPALIVE": 15,             # seconds between SSE keep-alive comments
        "RETRY": 3000,               # SSE "retry:" in milliseconds
        "MAX_FRAME_SIZE": 65536,     # bytes of one WebSocket frame from a client
        "MAX_SUBSCRIPTIONS": 50,     # channels one WebSocket may subscribe to
        "MAX_CHANNELS_PER_STREAM": 20,  # channels one SSE stream may name
        "MAX_BUFFER": 262144,        # bytes a server may hold unsent for one client
    }
    BROADCAST_AUTH = {
        "POLICY": "django_broadcast.auth.PatternPolicy",  # (user, channel, action) -> bool
        "PUBLIC": ["news.*"],        # channels anyone may subscribe to and replay
        "PUBLISH": [],               # channels browsers may publish to
    }

Both are read when used, so ``override_settings`` works in tests; a bad value is a
system-check error (``django_broadcast.E010`` to ``E014``) with a hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import Problem

__all__ = ["AuthSettings", "ClientSettings", "auth_settings", "client_settings", "validate"]

DEFAULT_POLICY = "django_broadcast.auth.PatternPolicy"

_CLIENT_DEFAULTS: dict[str, Any] = {
    "USING": "default",
    "KEEPALIVE": 15.0,
    "RETRY": 3000,
    "MAX_FRAME_SIZE": 65536,
    "MAX_SUBSCRIPTIONS": 50,
    "MAX_CHANNELS_PER_STREAM": 20,
    "MAX_BUFFER": 262144,
}
_AUTH_DEFAULTS: dict[str, Any] = {"POLICY": DEFAULT_POLICY, "PUBLIC": [], "PUBLISH": []}


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


@dataclass(frozen=True)
class AuthSettings:
    """``BROADCAST_AUTH`` with its defaults filled in."""

    policy: str
    public: tuple[str, ...]
    publish: tuple[str, ...]


def validate() -> tuple[ClientSettings | None, AuthSettings | None, list[Problem]]:
    """Read both settings; return them (None where invalid) and every problem found."""
    problems: list[Problem] = []
    clients = _validate_clients(getattr(settings, "BROADCAST_CLIENTS", {}), problems)
    auth = _validate_auth(getattr(settings, "BROADCAST_AUTH", {}), problems)
    return clients, auth, problems


def client_settings() -> ClientSettings:
    """The current ``BROADCAST_CLIENTS``; raise ``ImproperlyConfigured`` if invalid."""
    problems: list[Problem] = []
    result = _validate_clients(getattr(settings, "BROADCAST_CLIENTS", {}), problems)
    _raise(problems)
    assert result is not None
    return result


def auth_settings() -> AuthSettings:
    """The current ``BROADCAST_AUTH``; raise ``ImproperlyConfigured`` if invalid."""
    problems: list[Problem] = []
    result = _validate_auth(getattr(settings, "BROADCAST_AUTH", {}), problems)
    _raise(problems)
    assert result is not None
    return result


def _raise(problems: list[Problem]) -> None:
    if problems:
        first = problems[0]
        raise ImproperlyConfigured(f"django_broadcast.{first.id}: {first.msg} {first.hint}")


def _validate_clients(value: Any, problems: list[Problem]) -> ClientSettings | None:
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
    for key in ("KEEPALIVE",):
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


def _validate_auth(value: Any, problems: list[Problem]) -> AuthSettings | None:
    if not isinstance(value, dict):
        problems.append(
            Problem("E012", "BROADCAST_AUTH must be a dict.", 'Write {"PUBLIC": ["news.*"]}.')
        )
        return None
    before = len(problems)
    unknown = set(value) - set(_AUTH_DEFAULTS)
    if unknown:
        problems.append(
            Problem(
                "E012",
                f"BROADCAST_AUTH has unknown keys: {', '.join(sorted(map(str, unknown)))}.",
                "Use only POLICY, PUBLIC and PUBLISH.",
            )
        )
    merged = {**_AUTH_DEFAULTS, **value}
    for key in ("PUBLIC", "PUBLISH"):
        patterns = merged[key]
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns or ()):
            problems.append(
                Problem(
                    "E012",
                    f"BROADCAST_AUTH[{key!r}] must be a list of channel patterns.",
                    f'Write "{key}": ["news.*"] (shell-style wildcards).',
                )
            )
    policy = merged["POLICY"]
    try:
        if not isinstance(policy, str):
            raise ImportError(f"{policy!r} is not a dotted path")
        target = import_string(policy)
    except ImportError as exc:
        problems.append(
            Problem(
                "E013",
                f"BROADCAST_AUTH['POLICY'] cannot be imported: {exc}.",
                "Name a callable (user, channel, action) -> bool, or a class making one.",
            )
        )
    else:
        if not callable(target):
            problems.append(
                Problem(
                    "E013",
                    f"BROADCAST_AUTH['POLICY'] {policy!r} is not callable.",
                    "Name a callable (user, channel, action) -> bool, or a class making one.",
                )
            )
    if len(problems) > before:
        return None
    return AuthSettings(policy, tuple(merged["PUBLIC"]), tuple(merged["PUBLISH"]))
