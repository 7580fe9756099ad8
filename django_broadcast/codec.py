"""Codecs turn an event envelope into bytes for the broker and back.

The default is JSON with Django's ``DjangoJSONEncoder`` (datetimes, dates, times,
timedeltas, Decimals, UUIDs and lazy strings become strings). A codec is any class
with ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``; name it in an alias's
``CODEC`` setting. Pickle is never used: a broker is not a trusted source of code.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from django.core.serializers.json import DjangoJSONEncoder

__all__ = ["Codec", "JSONCodec"]


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

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` to UTF-8 JSON bytes."""
        return self._encoder.encode(obj).encode()

    def decode(self, data: bytes) -> Any:
        """Decode UTF-8 JSON bytes."""
        return self._decoder.decode(data.decode())
