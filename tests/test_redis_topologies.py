"""Redis Cluster and Sentinel: where commands go, and what a failover costs.

They run on the cluster (three masters, a replica each) and the Sentinel set (a
master, its replica, three sentinels) that the session starts once
(``tests/brokers.py``); a test that fails a master over brings the old one back as a
replica before it ends, so the next test finds them whole.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import override_settings

from django_broadcast import GAP, Broadcast, Event, Subscription, broadcasts
from django_broadcast.backends.redis import RedisBackend, RedisClusterBackend

from .brokers import BROKERS, _command, shared_cluster, shared_sentinel

TIMEOUT = 30  # a failover takes a few seconds; every wait is bounded by this

CLUSTER = ["redis+cluster", "redis+cluster+streams"]
SENTINEL = ["redis+sentinel", "redis+sentinel+streams"]


@pytest.fixture(autouse=True)
def _binaries() -> None:
    if not BROKERS["redis+cluster"].reachable():
        pytest.skip("redis-server and redis-cli are not on PATH")


def entry(name: str, url: str | None = None) -> dict[str, object]:
    return BROKERS[name].entry(url=url, TIMEOUT=2, RECONNECT_TIMEOUT=TIMEOUT)


@contextmanager
def aliases(**entries: dict[str, object]) -> Iterator[dict[str, Broadcast]]:
    with override_settings(BROADCAST=entries):
        yield {alias: broadcasts[alias] for alias in entries}


async def received(sub: Subscription) -> Event:
    return await sub.get(timeout=TIMEOUT)


def elsewhere(bc: Broadcast, channel: str) -> str:
    """A channel whose key lives on another master of the cluster than ``channel``'s."""
    cluster = shared_cluster()
    where = cluster.master_of(bc.backend.key(channel))  # type: ignore[attr-defined]
    for n in itertools.count():
        other = f"{channel}-{n}"
        if cluster.master_of(bc.backend.key(other)) != where:  # type: ignore[attr-defined]
            return other
    raise AssertionError("unreachable")


# Cluster ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLUSTER)
async def test_a_publish_through_one_node_reaches_a_subscriber_through_another(
    name: str,
) -> None:
    cluster = shared_cluster()
    at = [f"{name}://127.0.0.1:{port}/0" for port in cluster.ports[:2]]
    with aliases(default=entry(name, at[0]), other=entry(name, at[1])) as found:
        bc, publisher = found["default"], found["other"]
        first = f"t-{uuid.uuid4().hex[:12]}"
        channels = (first, elsewhere(bc, first))
        async with bc.subscribe(*channels) as sub:
            for channel in channels:
                # Held at the master of each channel's slot: one connection per node.
                assert await BROKERS[name].subscriptions(bc, channel) == 1
                sent = await publisher.apublish(channel, channel)
                event = await received(sub)
                assert (event.id, event.channel, event.data) == (sent.id, channel, channel)
            synced = await asyncio.to_thread(
                lambda: publisher.publish(channels[1], "sync", on_commit=False)
            )
            assert synced is not None
            assert (await received(sub)).id == synced.id
        await bc.aclose()
        await publisher.aclose()


async def test_cluster_pub_sub_is_sharded() -> None:
    with aliases(default=entry("redis+cluster")) as found:
        bc = found["default"]
        channel = f"t-{uuid.uuid4().hex[:12]}"
        key = bc.backend.key(channel)  # type: ignore[attr-defined]
        port = shared_cluster().master_of(key)
        async with bc.subscribe(channel) as sub:
            assert _command(port, "PUBSUB", "SHARDNUMSUB", key) == [key, 1]
            assert _command(port, "PUBSUB", "NUMSUB", key) == [key, 0]  # no SUBSCRIBE
            sent = await bc.apublish(channel, 1)
            assert (await received(sub)).id == sent.id
        await bc.aclose()


def test_cluster_stream_keys_are_hash_tagged_per_channel() -> None:
    with aliases(default=entry("redis+cluster+streams")) as found:
        backend = found["default"].backend
        assert backend.key("news") == "{" + backend.prefix + "news}"  # type: ignore[attr-defined]


async def survive(bc: Broadcast, sub: Subscription, channel: str, fail_over: Any) -> None:
    """Fail the master of ``channel`` over under a live subscriber: pub/sub sends it a
    gap notice, Streams loses nothing that was replicated; publishing goes on."""
    history = bc.backend.features.history
    # Sync and async publishing both know the old master before it fails.
    first = await asyncio.to_thread(lambda: bc.publish(channel, 0, on_commit=False))
    assert first is not None
    sent = [first, *[await bc.apublish(channel, n) for n in range(1, 5)]]
    assert [(await received(sub)).data for _ in range(5)] == [0, 1, 2, 3, 4]
    await asyncio.to_thread(fail_over)
    if not history:
        notice = await received(sub)
        assert notice.type == GAP and notice.channel == channel
        assert notice.data["reason"] == "reconnect"
    after = await asyncio.to_thread(bc.publish, channel, "sync", on_commit=False)
    assert after is not None
    event = await received(sub)
    assert event.id == after.id, (event.channel, event.type, event.data)  # (Streams: no gap)
    more = await bc.apublish(channel, "async")
    assert (await received(sub)).id == more.id
    if history:  # what was replicated is all there, on the new master
        page = await bc.ahistory(channel)
        assert [e.id for e in page] == [e.id for e in [*sent, after, more]]


@pytest.mark.parametrize("name", CLUSTER)
async def test_a_subscriber_survives_the_failover_of_its_channels_master(
    name: str, channel: str
) -> None:
    cluster = shared_cluster()
    with aliases(default=entry(name)) as found:
        bc = found["default"]
        other = elsewhere(bc, channel)
        port = cluster.master_of(bc.backend.key(channel))  # type: ignore[attr-defined]

        def fail_over() -> None:
            cluster.wait_replicated(port)
            cluster.fail_over(port)

        async with bc.subscribe(channel, other) as sub:
            try:
                await survive(bc, sub, channel, fail_over)
                # The channel on a master that did not fail is still served.
                sent = await bc.apublish(other, "elsewhere")
                assert (await received(sub)).id == sent.id
            finally:
                await asyncio.to_thread(cluster.rejoin, port)
        await bc.aclose()


# Sentinel -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SENTINEL)
async def test_the_backend_follows_the_master_a_sentinel_quorum_promotes(
    name: str, channel: str
) -> None:
    sentinel = shared_sentinel()
    old = sentinel.master()

    def fail_over() -> None:
        sentinel.wait_replicated(old)
        sentinel.fail_over()

    with aliases(default=entry(name)) as found:
        bc = found["default"]
        async with bc.subscribe(channel) as sub:
            try:
                await survive(bc, sub, channel, fail_over)
            finally:
                await asyncio.to_thread(sentinel.rejoin, old)
        await bc.aclose()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///mymaster", r"expected 'redis\+sentinel://host:port"),
        ("redis+sentinel://127.0.0.1:26379", r"expected 'redis\+sentinel://host:port"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/zero", "expected"),
        ("redis+sentinel://127.0.0.1/mymaster", "must be 'host:port'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_clearly(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RedisBackend(url, {}, timeout=1)


def test_a_malformed_sentinel_url_does_not_show_its_password() -> None:
    with pytest.raises(ValueError) as error:
        RedisBackend("redis+sentinel://:secret@127.0.0.1:26379", {}, timeout=1)
    assert "secret" not in str(error.value)


def test_a_sentinel_url_names_sentinels_service_and_db() -> None:
    backend = RedisBackend("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/3", {}, timeout=1)
    topology = backend.topology
    assert topology.sentinels == [("h1", 26379), ("h2", 26380)]  # type: ignore[attr-defined]
    assert topology.service == "mymaster"  # type: ignore[attr-defined]
    assert topology.server_kwargs == {"db": 3, "password": "pw"}  # type: ignore[attr-defined]


def test_a_cluster_prefix_with_braces_is_refused() -> None:
    problems = RedisClusterBackend.validate_options({"prefix": "app{1}:"})
    assert problems and "brace" in problems[0]


def test_a_cluster_url_may_name_several_nodes() -> None:
    backend = RedisClusterBackend("redis+cluster://:pw@h1:7000,h2:7001/0", {}, timeout=1)
    assert backend.topology.startup == [("h1", 7000), ("h2", 7001)]  # type: ignore[attr-defined]
    assert backend.topology.node_kwargs["password"] == "pw"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="must be 'host:port'"):
        RedisClusterBackend("redis+cluster://h1:7000,h2/0", {}, timeout=1)
