"""What only the Redis backends do: URLs, stream ids, trimmed and deleted history."""

from __future__ import annotations

import redis

from django_broadcast import GAP, BroadcastUnavailable
from django_broadcast.backends.redis import RedisStreamsBackend, safe_url

from .conftest import PREFIX, REDIS_URL, alias_settings, free_port, require_broker, using


def test_passwords_stay_out_of_messages() -> None:
    assert safe_url("redis://:s3cret@host:6379/0") == "redis://***@host:6379/0"
    assert safe_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"
    port = free_port()
    with using({"URL": f"redis://user:s3cret@127.0.0.1:{port}/0", "TIMEOUT": 1}) as bc:
        try:
            bc.publish("c", 1, on_commit=False)
        except BroadcastUnavailable as exc:
            assert "s3cret" not in str(exc) and "user:***@" in str(exc)
        else:
            raise AssertionError("publish to a closed port succeeded")


def test_stream_ids_are_checked() -> None:
    backend = RedisStreamsBackend("redis+streams://127.0.0.1/0", {}, timeout=1)
    assert backend.id_key("1700000000000-3") == (1700000000000, 3)
    for bad in ("17", "a-1", "1-", "-1", "1-2-3"):
        try:
            backend.id_key(bad)
        except ValueError as exc:
            assert "stream id" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_history_after_a_deleted_entry_reports_a_gap(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        sent = [bc.publish(channel, n, on_commit=False) for n in range(5)]
        ids = [e.id for e in sent if e is not None]
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.xdel(PREFIX + channel, ids[2])
        finally:
            client.close()
        events = bc.history(channel, since=ids[1])
        assert events[0].type == GAP
        assert [e.data for e in events[1:]] == [3, 4]
        assert [e.data for e in bc.history(channel, since=ids[2])] == [3, 4]


def test_history_of_a_stream_that_never_existed(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        assert bc.history(channel, since="0-0") == []
        [notice] = bc.history(channel, since="1700000000000-0")
        assert notice.type == GAP
