"""The NATS backend on a three-node cluster of its own (nats-server from PATH, on free
loopback ports, JetStream on every node, the stream replicated three times): events
cross nodes, and a subscriber whose node is killed mid-stream carries on through
another node, losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
from django.test import override_settings

from django_broadcast import Broadcast, BroadcastUnavailable, Event, QueueFull, broadcasts

from .brokers import NATS_PREFIX, PrivateNats, free_port
from .conftest import IN_CI

TIMEOUT = 20
#: How long the cluster may take to recover from a killed node (new stream leader,
#: the subscriber on another node), on a loaded machine.
RECOVERY = 60


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait, at most ``timeout`` seconds, until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[list[PrivateNats]]:
    """Three nodes routed to each other, each healthy (JetStream's meta group has a
    leader); all killed and their directories removed after the test."""
    if shutil.which("nats-server") is None:
        if IN_CI:
            pytest.fail("nats-server is not on PATH (CI=true: brokers are required)")
        pytest.skip("nats-server is not on PATH")
    ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in ports)
    nodes = [
        PrivateNats(
            "--cluster",
            f"nats://127.0.0.1:{port}",
            "--routes",
            routes,
            "--cluster_name",
            "broadcast-test",
            name=f"node{i + 1}",
        )
        for i, port in enumerate(ports)
    ]
    try:
        for node in nodes:
            node.launch()
        for node in nodes:
            wait_for(lambda node=node: node.monitoring("routez")["num_routes"] >= 2, "routes up")  # type: ignore[misc]
            node.wait_healthy(TIMEOUT)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def aliases(**urls: str) -> dict[str, dict[str, Any]]:
    """An alias per URL, every one on the same replicated stream."""
    prefix = f"{NATS_PREFIX}-cluster-{uuid.uuid4().hex[:6]}"
    options = {"prefix": prefix, "replicas": 3}
    return {
        "default": {"URL": "memory://"},
        **{
            name: {"URL": url, "OPTIONS": options, "TIMEOUT": 5, "RECONNECT_TIMEOUT": RECOVERY}
            for name, url in urls.items()
        },
    }


async def first_publish(bc: Broadcast, channel: str) -> Event:
    """Publish once the replicated stream can be made (the cluster elects its
    leaders after it is up), then wait until both of its other replicas are current."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            first = await bc.apublish(channel, "first")
            break
        except BroadcastUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    backend: Any = bc.backend
    client = await nats.connect(backend.servers)
    try:
        while True:
            cluster = (await client.jetstream().stream_info(backend.stream)).cluster
            replicas = (cluster.replicas or []) if cluster is not None else []
            if len(replicas) == 2 and all(r.current for r in replicas):
                return first
            assert time.monotonic() < deadline, "the stream's replicas did not catch up"
            await asyncio.sleep(0.05)
    finally:
        await client.close()


def receiving_node(nodes: list[PrivateNats]) -> PrivateNats:
    """The node that holds the receiving connection (``/connz``)."""
    for node in nodes:
        names = [c.get("name", "") for c in node.monitoring("connz")["connections"]]
        if any(name.startswith("django_broadcast:receive:") for name in names):
            return node
    raise AssertionError("no node holds the receiving connection")


async def test_a_publish_through_one_node_reaches_a_subscriber_on_another(
    cluster: list[PrivateNats], channel: str
) -> None:
    one, two, _ = cluster
    with override_settings(BROADCAST=aliases(one=one.url, two=two.url)):
        publisher, subscriber = broadcasts["one"], broadcasts["two"]
        try:
            await first_publish(publisher, channel)
            async with subscriber.subscribe(channel) as sub:
                sent = await publisher.apublish(channel, "across")
                event = await sub.get(timeout=TIMEOUT)
                assert receiving_node(cluster) is two
            assert (event.id, event.data) == (sent.id, "across")
            # The history is the replicated stream's, read through either node.
            assert [e.data for e in await subscriber.ahistory(channel)] == ["first", "across"]
        finally:
            await publisher.aclose()
            await subscriber.aclose()


async def test_a_subscriber_whose_node_is_killed_carries_on_and_loses_nothing(
    cluster: list[PrivateNats], channel: str
) -> None:
    every = ",".join(node.url for node in cluster)
    with override_settings(BROADCAST=aliases(pub=every, sub=every)):
        publisher, subscriber = broadcasts["pub"], broadcasts["sub"]
        try:
            await first_publish(publisher, channel)
            acknowledged: list[Event] = []
            refused = 0
            killed = asyncio.Event()

            async def publish_on() -> None:
                nonlocal refused
                n = after = 0
                while after < 30:
                    n += 1
                    try:
                        acknowledged.append(await publisher.apublish(channel, n))
                    except BroadcastUnavailable:
                        refused += 1
                    after += killed.is_set()
                    await asyncio.sleep(0.005)
                acknowledged.append(await publisher.apublish(channel, "end"))

            received: list[Event] = []
            async with subscriber.subscribe(channel) as sub:
                task = asyncio.create_task(publish_on())
                while len(received) < 10:
                    received.append(await sub.get(timeout=TIMEOUT))
                victim = receiving_node(cluster)
                victim.kill()
                killed_at = time.monotonic()
                killed.set()
                while received[-1].data != "end":
                    received.append(await sub.get(timeout=RECOVERY))
                recovered = time.monotonic() - killed_at
                await asyncio.wait_for(task, RECOVERY)
                # It carries on through another node.
                assert receiving_node([n for n in cluster if n is not victim]) is not victim
        finally:
            await publisher.aclose()
            await subscriber.aclose()
    gaps = [e for e in received if e.is_gap]
    ids = [e.id for e in received if not e.is_gap]
    print(
        f"\ncluster: {len(acknowledged)} acknowledged, {refused} refused, killed "
        f"{victim.name}, 'end' received {recovered:.1f} s after"
    )
    assert gaps == []
    assert len(ids) == len(set(ids))
    assert [e.id for e in acknowledged if e.id not in ids] == []  # nothing acknowledged lost
    assert ids == sorted(ids, key=subscriber.backend.id_key)


async def test_a_queue_is_one_across_nodes(cluster: list[PrivateNats], channel: str) -> None:
    """The queue stream is replicated as the events' is; puts through one node and
    takes through another share each queue and its capacity."""
    one, two, _ = cluster
    with override_settings(BROADCAST=aliases(one=one.url, two=two.url)):
        putter, taker = broadcasts["one"], broadcasts["two"]
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:  # until the cluster has elected the queue stream's leader
                try:
                    await putter.aqueue_put(channel, "first", capacity=2, ttl=60)
                    break
                except BroadcastUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await taker.aqueue_put(channel, "second", capacity=2, ttl=60)
            with pytest.raises(QueueFull):
                await putter.aqueue_put(channel, "third", capacity=2, ttl=60)
            assert await asyncio.wait_for(taker.aqueue_take(channel), TIMEOUT) == "first"
            assert await asyncio.wait_for(putter.aqueue_take(channel), TIMEOUT) == "second"
            backend: Any = taker.backend
            client = await nats.connect(backend.servers)
            try:
                info = await client.jetstream().stream_info(backend.queue_stream)
                assert info.config.num_replicas == 3
            finally:
                await client.close()
        finally:
            await putter.aclose()
            await taker.aclose()
