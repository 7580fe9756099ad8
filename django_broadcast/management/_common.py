"""What the management commands share: the alias and the channels they are given,
checked into ``CommandError`` messages that say how to fix them."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError

from ..broadcast import Broadcast
from ..events import validate_channel
from ..exceptions import BroadcastUnavailable
from ..registry import broadcasts


def get_broadcast(alias: str) -> Broadcast:
    """The :class:`Broadcast` of ``alias`` (the ``--using`` option)."""
    try:
        known = list(broadcasts)
        if alias in known:
            return broadcasts[alias]
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from None
    raise CommandError(
        f"there is no broadcast alias {alias!r}: BROADCAST defines "
        f"{', '.join(map(repr, known))}; name one of them with --using"
    )


def check_channel(channel: str) -> str:
    """``channel`` if it is a valid channel name."""
    try:
        return validate_channel(channel)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def unreachable(broadcast: Broadcast, exc: BroadcastUnavailable) -> CommandError:
    """The error for a broker that could not be reached (the text says why and, for a
    publish, whether the event may still be delivered)."""
    return CommandError(f"cannot reach the broker of alias {broadcast.alias!r}: {exc}")
