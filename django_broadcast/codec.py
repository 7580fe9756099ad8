"""Codecs turn an event envelope into bytes for the broker and back.

The default is JSON with Django's ``DjangoJSONEncoder`` (datetimes, dates, times,
timedeltas, Decimals, UUIDs and lazy strings become strings). :class:`MsgpackCodec`
(``pip install msgpack``) is smaller and carries ``bytes`` as they are. A codec is any
class with ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``, and optionally
``carries_bytes = True`` where ``bytes`` values survive it; name it in an alias's
``CODEC`` setting. Pickle is never used: a broker is not a trusted source of code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from django.core.serializers.json import DjangoJSONEncoder

__all__ = ["BYTES_TAG", "Codec", "JSONCodec", "MsgpackCodec", "carries_bytes", "tag_bytes"]

#: The key of the JSON form of ``bytes``: ``{"__bytes__": "<base64>"}``.
BYTES_TAG = "__bytes__"


def tag_bytes(value: bytes) -> dict[str, str]:
    """The JSON form of ``value``: ``{"__bytes__": "<base64>"}``, as the channel layer
    sends ``bytes`` through a codec that cannot carry them and as browsers get them."""
    return {BYTES_TAG: base64.b64encode(value).decode("ascii")}


@runtime_checkable
class Codec(Protocol):
    """What a codec must provide."""

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj``; raise ``TypeError`` for a value it cannot encode."""
        ...

    def decode(self, data: bytes) -> Any:
        """Decode what :meth:`encode` produced."""
        ...


class JSONCodec:
    """Compact UTF-8 JSON, with Django's encoder for the usual non-JSON types.

    NaN and infinities are refused (browsers' ``JSON.parse`` cannot read them).
    """

    def __init__(self) -> None:
        self._encoder = DjangoJSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        self._decoder = json.JSONDecoder()
        # The decoder's scanner, called directly: what json.loads does, without its
        # two Python frames and two whitespace matches (a payload this codec wrote has
        # no whitespace around it; any other goes the long way).
        self._scan: Callable[[str, int], tuple[Any, int]] = self._decoder.scan_once  # type: ignore[attr-defined]

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` to UTF-8 JSON bytes."""
        return self._encoder.encode(obj).encode()

    def decode(self, data: bytes) -> Any:
        """Decode UTF-8 JSON bytes."""
        text = data.decode()
        try:
            obj, end = self._scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            return self._decoder.decode(text)
        return obj


class MsgpackCodec:
    """MessagePack (``pip install msgpack``): smaller than JSON, and ``bytes`` values
    (WebSocket binary frames in channel-layer messages) travel as they are instead of
    as base64. Other values as with :class:`JSONCodec`: datetimes, Decimals, UUIDs and
    lazy strings become strings, tuples become lists."""

    #: ``bytes`` values survive an encode and decode.
    carries_bytes = True

    def __init__(self) -> None:
        import msgpack

        self._strings = DjangoJSONEncoder().default
        self._packb = msgpack.packb  # a Packer per call: a codec is shared by threads
        self._unpackb = msgpack.unpackb

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj``; raise ``TypeError`` or ``ValueError`` for what it cannot."""
        packed: bytes = self._packb(obj, default=self._default, use_bin_type=True)
        return packed

    def _default(self, value: Any) -> Any:
        if isinstance(value, int):  # the only ints msgpack hands over: past 64 bits
            raise ValueError(f"{value} is out of range: MessagePack carries 64-bit integers")
        return self._strings(value)

    def decode(self, data: bytes) -> Any:
        """Decode what :meth:`encode` produced."""
        return self._unpackb(data, raw=False)


def carries_bytes(codec: Codec) -> bool:
    """Whether ``bytes`` values survive ``codec`` (its ``carries_bytes`` attribute)."""
    return getattr(codec, "carries_bytes", False) is True
