"""What travels: a channel-layer message as a broadcast event and back.

Channel-layer messages may carry ``bytes`` (WebSocket binary frames), which the JSON
codec cannot: they travel as ``{"__bytes__": "<base64>"}``. A group member receives a
fresh copy of the message, never a dict shared with another consumer.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ..codec import BYTES_TAG, tag_bytes
from ..events import Event

__all__ = [
    "SEND_TYPE",
    "copier",
    "decode_bytes",
    "encode_bytes",
    "fresh_copy",
    "member_message",
]

#: The event type of a ``send()`` to another process's channel.
SEND_TYPE = "channels.send"


def encode_bytes(value: Any) -> Any:
    """``value`` with every ``bytes`` inside replaced by a JSON-safe tagged dict."""
    if isinstance(value, bytes):
        return tag_bytes(value)
    if isinstance(value, dict):
        return {key: encode_bytes(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_bytes(item) for item in value]
    return value


def decode_bytes(value: Any) -> Any:
    """A fresh copy of ``value`` with the tagged dicts of :func:`encode_bytes` turned
    back into ``bytes``: every call builds new containers, so receivers never share."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_TAG), str):
            return base64.b64decode(value[BYTES_TAG])
        for item in value.values():  # a loop: cheaper than issuperset(map(...)) here
            if type(item) not in _ATOMS:
                break
        else:
            return value.copy()  # leaves only: no tag inside
        return {
            key: item if type(item) in _ATOMS else decode_bytes(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [item if type(item) in _ATOMS else decode_bytes(item) for item in value]
    return value


#: The types of the immutable leaves, which copies share.
_ATOMS = frozenset({str, int, float, bool, bytes, type(None)})


def fresh_copy(value: Any) -> Any:
    """A copy of every dict and list in ``value`` (as :func:`decode_bytes` returns
    them), sharing only immutable leaves: cheaper than decoding again per receiver."""
    if type(value) is dict:
        copied = value.copy()
        for key, item in copied.items():
            if type(item) not in _ATOMS:
                copied[key] = fresh_copy(item)  # replaces a value: the size stays
        return copied
    if type(value) is list:
        return [item if type(item) in _ATOMS else fresh_copy(item) for item in value]
    return value


def member_message(event: Event) -> dict[str, Any]:
    """The channel-layer message a group member receives for ``event`` (a new dict)."""
    data = decode_bytes(event.data)
    message: dict[str, Any] = {"channel": event.channel, "id": event.id, "data": data}
    if isinstance(data, dict):
        message.update(data)
    message["type"] = event.type
    return message


def copier(message: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that makes a member's own copy of the group message ``message``: a
    new dict whose values that are not immutable leaves are copied too (a dict or list
    of leaves at one level, anything deeper with :func:`fresh_copy`). What to copy is
    worked out here, once per message, not per member."""
    flat: list[str] = []
    deep: list[str] = []
    for key, value in message.items():
        kind = type(value)
        if kind in _ATOMS:
            continue
        if kind is dict:
            value = value.values()
        elif kind is not list:
            deep.append(key)
            continue
        (flat if _ATOMS.issuperset(map(type, value)) else deep).append(key)

    def copy(original: dict[str, Any]) -> dict[str, Any]:
        copied = original.copy()
        for key in flat:
            copied[key] = copied[key].copy()
        for key in deep:
            copied[key] = fresh_copy(copied[key])
        return copied

    return copy
