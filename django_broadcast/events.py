"""Events and the rules for channel names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "GAP",
    "GOODBYE",
    "HEARTBEAT",
    "MAX_CHANNEL_LENGTH",
    "RESERVED_PREFIX",
    "SERVERS_CHANNEL",
    "Event",
    "gap_event",
    "is_reserved",
    "utcnow",
    "validate_channel",
    "validate_pattern",
]

#: ``Event.type`` of the notice a subscriber receives where events may have been lost.
GAP = "broadcast.gap"

#: Channels whose names start with this belong to django_broadcast itself (the
#: channel layer's inboxes, the server list): browsers can never subscribe to, replay
#: or publish on them, whatever the policy says.
RESERVED_PREFIX = "broadcast."

#: The reserved channel the server processes announce themselves on, and its types.
SERVERS_CHANNEL = RESERVED_PREFIX + "servers"
HEARTBEAT = "broadcast.heartbeat"
GOODBYE = "broadcast.goodbye"

MAX_CHANNEL_LENGTH = 100
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_BAD_CHAR_RE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True, slots=True)
class Event:
    """One event as subscribers receive it.

    ``id`` is an opaque string, increasing per channel; on backends with history it is
    the broker's position, so it can be passed back as ``since`` to resume. ``data`` is
    what the codec decoded: treat it as read-only, it may be shared between the local
    subscribers of a process.
    """

    channel: str
    type: str
    data: Any
    id: str
    time: datetime = field(compare=False)

    def __init__(self, channel: str, type: str, data: Any, id: str, time: datetime) -> None:
        # What the generated frozen __init__ does, through the slots' own setters: it
        # looks up object.__setattr__ per field, a third of the cost of receiving an
        # event with many channels.
        _set_channel(self, channel)
        _set_type(self, type)
        _set_data(self, data)
        _set_id(self, id)
        _set_time(self, time)

    @property
    def is_gap(self) -> bool:
        """True for the notice that events may have been lost (``type == GAP``)."""
        return self.type == GAP


_set_channel, _set_type, _set_data, _set_id, _set_time = (
    Event.__dict__[name].__set__ for name in ("channel", "type", "data", "id", "time")
)


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name, else raise ``ValueError``.

    Valid names are 1 to 100 ASCII letters, digits, ``-``, ``_`` or ``.``: the rule of
    Django Channels' group names, so every channel is also a valid group.
    """
    if type(channel) is str and _CHANNEL_RE.fullmatch(channel):
        return channel
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, not {type(channel).__name__}: {channel!r}")
    if not channel:
        raise ValueError("channel name is empty: use 1 to 100 letters, digits, '-', '_' or '.'")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise ValueError(
            f"channel {channel[:40]!r}... is {len(channel)} characters long: "
            f"the limit is {MAX_CHANNEL_LENGTH}"
        )
    bad = _BAD_CHAR_RE.search(channel)
    assert bad is not None
    char = bad.group()
    what = "a space" if char == " " else f"the character {char!r}"
    raise ValueError(
        f"channel {channel!r} has {what} at position {bad.start()}: "
        f"use ASCII letters, digits, '-', '_' or '.'"
    )


_PATTERN_RE = re.compile(r"[A-Za-z0-9_.\-*?]{1,100}")


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid channel pattern, else raise ``ValueError``.

    A pattern is a channel name that may hold ``*`` (any run of characters, dots
    included) and ``?`` (one character): ``"chat.*"``, ``"scores.?"``.
    """
    if type(pattern) is str and _PATTERN_RE.fullmatch(pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, not {type(pattern).__name__}: {pattern!r}")
    raise ValueError(
        f"pattern {pattern[:100]!r} is not valid: use 1 to 100 ASCII letters, digits, "
        f"'-', '_', '.', and the wildcards '*' and '?'"
    )


def is_reserved(channel: str) -> bool:
    """Whether ``channel`` is in the namespace django_broadcast keeps for itself."""
    return channel.startswith(RESERVED_PREFIX)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)


def gap_event(channel: str, reason: str, **data: Any) -> Event:
    """The notice that events of ``channel`` may have been lost (``type == GAP``)."""
    return Event(channel, GAP, {"reason": reason, **data}, "", utcnow())
