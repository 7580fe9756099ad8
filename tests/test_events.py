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


def test_events_and_messages_stay_frozen_dataclasses() -> None:
    """Both build through their slots' setters (cheaper than the generated __init__):
    still immutable, compared and hashed by value (an event's time aside), with
    keywords, defaults and ``replace`` as a dataclass has them."""
    import dataclasses

    from django_broadcast.backends.base import Message

    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    event = Event(channel="c", type="t", data={"n": 1}, id="1-0", time=when)
    assert (event.channel, event.type, event.data, event.id, event.time) == (
        "c",
        "t",
        {"n": 1},
        "1-0",
        when,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = {}  # type: ignore[misc]
    later = dataclasses.replace(event, time=datetime.now(timezone.utc))
    assert later == event
    plain = dataclasses.replace(event, data=1)
    assert hash(plain) == hash(dataclasses.replace(plain, time=later.time))
    assert dataclasses.replace(event, data=2).data == 2
    assert repr(event).startswith("Event(channel='c', type='t', data={'n': 1}, id='1-0'")

    message = Message("c", "1-0", b"x")
    assert (message.gap, message.pattern) == (None, None)
    assert Message("c", "", b"", gap="reset").gap == "reset"
    assert Message("c", "1-0", b"x", pattern="c*") != message
    assert message == Message(channel="c", id="1-0", payload=b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.payload = b"y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Event("c", "t", None, "1-0")  # type: ignore[call-arg]
