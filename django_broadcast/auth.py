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
server list) are refused to browsers before the policy is asked. A policy that raises
is logged on the ``django_broadcast.auth`` logger and counts as a refusal.

Server-side code (``broadcast.publish()`` in views) is not subject to the policy.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.utils.module_loading import import_string

from .clients import auth_settings
from .events import is_reserved

__all__ = ["ACTIONS", "Action", "PatternPolicy", "authorize", "get_policy"]

logger = logging.getLogger("django_broadcast.auth")

Action = Literal["subscribe", "history", "publish"]
ACTIONS: tuple[Action, ...] = ("subscribe", "history", "publish")


class PatternPolicy:
    """Allow the channels matching ``PUBLIC`` (to read) and ``PUBLISH`` (to publish)."""

    def __call__(self, user: Any, channel: str, action: str) -> bool:
        """Whether ``action`` on ``channel`` is allowed; the user does not matter."""
        conf = auth_settings()
        patterns = conf.publish if action == "publish" else conf.public
        return any(fnmatchcase(channel, pattern) for pattern in patterns)


@lru_cache(maxsize=8)
def _load(path: str) -> Callable[..., Any]:
    target = import_string(path)
    if inspect.isclass(target):
        target = target()
    if not callable(target):
        raise TypeError(f"BROADCAST_AUTH['POLICY'] {path!r} is not callable")
    return target


def get_policy() -> Callable[..., Any]:
    """The configured policy callable."""
    return _load(auth_settings().policy)


async def authorize(user: Any, channel: str, action: Action) -> bool:
    """Ask the configured policy whether ``user`` may ``action`` on ``channel``.

    Reserved channels are refused without asking; a policy that raises is logged
    and refuses.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if is_reserved(channel):
        return False
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
