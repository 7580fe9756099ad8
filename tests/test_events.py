"""Channel names, events and the codec."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from django_broadcast import GAP, Event
from django_broadcast.codec import Codec, JSONCodec
from django_broadcast.events import validate_channel


@pytest.mark.parametrize("name", ["a", "chat.lobby", "user-42_feed", "A.b-C_9", "x" * 100])
def test_valid_channel_names(name: str) -> None:
    assert validate_channel(name) == name


def test_channel_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="must be a str, not int"):
        validate_channel(42)


def test_gap_event() -> None:
    event = Event("a", GAP, {"reason": "overflow"}, "", datetime.now(timezone.utc))
    assert event.is_gap
    assert not Event("a", "message", 1, "1", datetime.now(timezone.utc)).is_gap


def test_json_codec_round_trip() -> None:
    codec = JSONCodec()
    assert isinstance(codec, Codec)
    data = {"text": "h\u00e9llo \u2603", "n": [1, 2.5, None, True]}
    encoded = codec.encode(data)
    assert encoded == '{"text":"h\u00e9llo \u2603","n":[1,2.5,null,true]}'.encode()
    assert codec.decode(encoded) == data


@pytest.mark.parametrize(
    ("payload", "decoded"),
    [(b' {"a": 1} \n', {"a": 1}), (b"7", 7), (b'"x"', "x"), (b"[]", [])],
)
def test_json_codec_reads_json_from_other_writers(payload: bytes, decoded: object) -> None:
    """Another publisher's JSON (spaces around it, any value) reads as it would with
    ``json.loads``."""
    assert JSONCodec().decode(payload) == decoded


@pytest.mark.parametrize("payload", [b'{"a": 1} x', b'{"a": 1', b"", b"  ", b"nope"])
def test_json_codec_refuses_what_is_not_one_json_value(payload: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        JSONCodec().decode(payload)
