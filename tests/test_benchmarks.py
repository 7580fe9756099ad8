"""Each benchmark runs at a tiny size, so the scripts cannot rot.

Nothing here asserts a speed: the figures come from running the scripts themselves.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import redis

from .brokers import reachable_binaries, shared_cluster
from .conftest import REDIS_URL, require_broker


@pytest.fixture(autouse=True)
def _redis(monkeypatch: pytest.MonkeyPatch) -> None:
    require_broker("redis", REDIS_URL)
    if reachable_binaries():  # the cluster rows run on the session's cluster
        url = shared_cluster().url.replace("redis://", "redis+cluster://", 1)
        monkeypatch.setenv("REDIS_CLUSTER_URL", url)
    require_broker("nats")
    require_broker("postgresql")


@pytest.mark.django_db(transaction=True)  # the transaction rows
def test_sync_publish_benchmark_runs() -> None:
    from benchmarks import sync_publish

    result = sync_publish.run(events=20, rounds=1, anchor_events=5)
    table = result.render()
    for case in (
        "redis-py PUBLISH",
        "publish redis://",
        "publish redis+streams://",
        "publish redis+cluster://",
        "publish nats://",
        "nats-py JetStream publish",
        "publish postgres://",
        "10 publishes in one atomic() redis://",
        "10 publishes outside a transaction redis+streams://",
        "redis:// from 8 threads at once",
        "BroadcastChannelLayer redis://: group_send on a persistent loop",
        "channels_redis core: group_send on a persistent loop",
        "channels_redis core: async_to_sync(group_send)",
    ):
        assert case in table
    assert "target: sync publish redis:// >= 0.9x raw PUBLISH" in table
    assert "target: 8 threads publish more than 1" in table
    # Counted, not timed: the same however loaded the machine.
    rows = {row[0]: row for row in result.rows}
    assert rows["round trips of 10 publishes in one atomic() redis://"][2] == "1"
    assert rows["round trips of 10 publishes outside a transaction redis://"][2] == "10"
    assert rows["target: a transaction of 10 in one round trip (redis://)"][2] == "met"


def test_fanout_benchmark_runs() -> None:
    from benchmarks import fanout

    table = fanout.run(sizes=[2, 3], events=2, rounds=1).render()
    for case in (
        "redis://",
        "redis+streams://",
        "redis+cluster://",
        "nats://",
        "postgres://",
        "BroadcastChannelLayer",
        "channels_redis pubsub",
        "encode/broadcaster",
    ):
        assert case in table
    assert "failed" not in table.split("channels_redis core")[0]
    [cluster] = [line for line in table.splitlines() if "redis+cluster://" in line]
    assert "failed" not in cluster
    assert "target: redis:// >= 5x channels_redis pubsub" in table
    assert "median (min-max) of 1 rounds" in table
    for n in (2, 3):
        assert f"target: layer >= 2x channels_redis pubsub at N={n}" in table


def test_fanout_benchmark_says_not_measured_without_its_anchor() -> None:
    from benchmarks import fanout

    table = fanout.run(sizes=[3], events=2, rounds=1, cases=["BroadcastChannelLayer"]).render()
    [target] = [line for line in table.splitlines() if "target: layer >= 2x" in line]
    assert target.endswith("not measured")
    assert not any(line.startswith("channels_redis pubsub") for line in table.splitlines())


def test_many_channels_benchmark_runs() -> None:
    from benchmarks import fanout

    table = fanout.many_channels(channels=3, events=2, rounds=1).render()
    assert "BroadcastChannelLayer" in table and "channels_redis pubsub" in table
    assert "failed" not in table
    [target] = [line for line in table.splitlines() if line.startswith("target:")]
    assert "many channels (3 x 1 member)" in target
    assert target.rstrip().endswith(("met", "NOT MET"))


def fixed_prefix(monkeypatch: pytest.MonkeyPatch, module: object) -> str:
    """Make ``module``'s runs write under one known key prefix; return it."""
    run = uuid.uuid4()
    monkeypatch.setattr(module, "uuid", SimpleNamespace(uuid4=lambda: run))
    return f"bench:{run.hex[:6]}:"


def keys_under(prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def test_memory_benchmark_runs_and_deletes_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import memory

    prefix = fixed_prefix(monkeypatch, memory)
    table = memory.run(subscribers=3, repeats=1).render()
    assert "django_broadcast redis://" in table and "channels_redis pubsub" in table
    assert "failed" not in table.split("channels_redis core")[0]
    assert keys_under(prefix) == []


def test_memory_per_connection_benchmark_runs_and_deletes_its_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import memory

    prefix = fixed_prefix(monkeypatch, memory)
    table = memory.websocket_table(connections=3, repeats=1).render()
    assert "BroadcastWebsocketConsumer" in table and "anchor" in table
    assert "target: BroadcastWebsocketConsumer <= the anchor" in table
    assert keys_under(prefix) == []


def test_plain_channels_benchmark_runs() -> None:
    from benchmarks import plain_channels

    table = plain_channels.run(messages=5, rounds=1).render()
    cases = (
        "BroadcastChannelLayer redis://",
        "redis+streams://",
        "nats://",
        "postgres://",
        "channels_redis core",
    )
    for case in cases:
        assert case in table
    assert "target: redis:// >= 1x channels_redis core" in table


def test_a_spread_prints_its_median_with_the_least_and_the_greatest() -> None:
    from benchmarks._common import Spread

    assert Spread.of([3.0, 1.0, 2.0]).format() == "2 (1-3)"
    assert Spread.of([1500.0]).format() == "1,500"
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


def test_a_target_whose_anchor_was_not_measured_is_never_met() -> None:
    from benchmarks._common import verdict

    assert [verdict(True), verdict(False), verdict(None)] == ["met", "NOT MET", "not measured"]
