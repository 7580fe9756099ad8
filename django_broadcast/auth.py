"""Who may subscribe to, replay and publish on which channel, from a browser.

Nothing is readable by a browser unless the policy says so. The policy is the
callable at ``BROADCAST_AUTH["POLICY"]``, called as ``policy(user, channel, action)``
with ``action`` one of ``"subscribe"``, ``"history"`` (a resume with ``since`` or
``Last-Event-ID``) and ``"publish"``; it returns whether to allow. It may be a plain
function (run in a thread, so it may query the database), a coroutine function, or a
class, which is instantiated once.

The default, :class:`PatternPolicy`, allows ``subscribe`` and ``history`` on the
channels matching ``BROADCAST_AUTH["PUBLIC"]`` and ``publish`` on those matching
``BROADCAST_AUTH["PUBLISH"]`` (shell-style patterns such as ``"news.*"``), for every
user, and denies everything else. For per-user rules, write your own::

    def policy(user, channel, action):
        if channel.startswith("user."):
            return action != "publish" and channel == f"user.{user.pk}"
        return action != "publish" and channel.startswith("news.")

Channels in the reserved namespace (``broadcast.``: the channel layer's inboxes, the
server list) are refused to browsers before the policy is asked, except where an app
of django_broadcast's own opens one for reading with :func:`allow_reserved` (the
real-time admin lets staff read the server list, and users with an admin's view
permission a model's live changes). Nothing reserved is ever published from a
browser. A policy or a rule that raises is logged on the ``django_broadcast.auth``
logger and counts as a refusal.

Server-side code (``broadcast.publish()`` in views) is not subject to the policy.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .conf import Problem
from .events import is_reserved

__all__ = [
    "ACTIONS",
    "Action",
    "AuthSettings",
    "PatternPolicy",
    "ReservedRule",
    "allow_reserved",
    "auth_settings",
    "authorize",
    "disallow_reserved",
    "get_policy",
    "validate_auth",
]

logger = logging.getLogger("django_broadcast.auth")

DEFAULT_POLICY = "django_broadcast.auth.PatternPolicy"

_AUTH_DEFAULTS: dict[str, Any] = {"POLICY": DEFAULT_POLICY, "PUBLIC": [], "PUBLISH": []}


@dataclass(frozen=True)
class AuthSettings:
    """``BROADCAST_AUTH`` with its defaults filled in."""

    policy: str
    public: tuple[str, ...]
    publish: tuple[str, ...]


def validate_auth(value: Any, problems: list[Problem]) -> AuthSettings | None:
    """Read ``BROADCAST_AUTH`` (``value``); append a Problem for each fault."""
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


@functools.cache
def auth_settings() -> AuthSettings:
    """The current ``BROADCAST_AUTH``; raise ``ImproperlyConfigured`` if invalid."""
    problems: list[Problem] = []
    result = validate_auth(getattr(settings, "BROADCAST_AUTH", {}), problems)
    if problems:
        first = problems[0]
        raise ImproperlyConfigured(f"django_broadcast.{first.id}: {first.msg} {first.hint}")
    assert result is not None
    return result


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "BROADCAST_AUTH":
        auth_settings.cache_clear()
        get_policy.cache_clear()


Action = Literal["subscribe", "history", "publish"]
ACTIONS: tuple[Action, ...] = ("subscribe", "history", "publish")

#: ``rule(user, channel) -> bool``: may ``user`` read the reserved ``channel``? Run in
#: a thread, so it may query the database.
ReservedRule = Callable[[Any, str], bool]
_reserved_rules: list[tuple[str, ReservedRule]] = []


def allow_reserved(pattern: str, rule: ReservedRule) -> None:
    """Let browsers read (subscribe to and replay) the reserved channels matching
    ``pattern`` (shell-style) when ``rule(user, channel)`` says so. Publishing on a
    reserved channel stays refused. For django_broadcast's own apps; adding the same
    rule twice adds it once."""
    if (pattern, rule) not in _reserved_rules:
        _reserved_rules.append((pattern, rule))


def disallow_reserved(pattern: str, rule: ReservedRule) -> None:
    """Remove a rule added by :func:`allow_reserved` (no error if it is not there)."""
    if (pattern, rule) in _reserved_rules:
        _reserved_rules.remove((pattern, rule))


async def _reserved_allowed(user: Any, channel: str, action: Action) -> bool:
    if action == "publish":
        return False
    for pattern, rule in tuple(_reserved_rules):
        if fnmatchcase(channel, pattern):
            try:
                if await sync_to_async(rule)(user, channel):
                    return True
            except Exception:
                logger.exception(
                    "the rule for reserved channels %r raised for %s on %r: refused",
                    pattern,
                    action,
                    channel,
                )
    return False


class PatternPolicy:
    """Allow the channels matching ``PUBLIC`` (to read) and ``PUBLISH`` (to publish)."""

    def __call__(self, user: Any, channel: str, action: str) -> bool:
        """Whether ``action`` on ``channel`` is allowed; the user does not matter."""
        conf = auth_settings()
        patterns = conf.publish if action == "publish" else conf.public
        return any(fnmatchcase(channel, pattern) for pattern in patterns)


@functools.cache
def get_policy() -> Callable[..., Any]:
    """The configured policy callable (a class is instantiated once)."""
    path = auth_settings().policy
    target = import_string(path)
    if inspect.isclass(target):
        target = target()
    if not callable(target):
        raise TypeError(f"BROADCAST_AUTH['POLICY'] {path!r} is not callable")
    return target


async def authorize(user: Any, channel: str, action: Action) -> bool:
    """Ask the configured policy whether ``user`` may ``action`` on ``channel``.

    Reserved channels are refused without asking the policy, unless a rule added
    with :func:`allow_reserved` allows reading them; a policy that raises is logged
    and refuses.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if is_reserved(channel):
        return await _reserved_allowed(user, channel, action)
    policy = get_policy()
    if isinstance(policy, PatternPolicy):
        return policy(user, channel, action)
    try:
        if inspect.iscoroutinefunction(policy) or inspect.iscoroutinefunction(
            getattr(policy, "__call__", None)  # noqa: B004 (an instance with async __call__)
        ):
            return bool(await policy(user, channel, action))
        return bool(await sync_to_async(policy)(user, channel, action))
    except Exception:
        logger.exception(
            "the BROADCAST_AUTH policy raised for %s on channel %r: refused", action, channel
        )
        return False
