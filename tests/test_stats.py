"""Stats: the counters of an alias after known traffic, and their Prometheus export."""

from __future__ import annotations

import pytest
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from django.test import RequestFactory, override_settings

from django_broadcast import Broadcast, broadcasts
from django_broadcast.consumers import BroadcastWebsocketConsumer, EventStreamConsumer

from .brokers import Broker, PrivateServer
from .conftest import alias_settings, using

TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_counters_after_known_traffic(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as one, bc.subscribe(channel) as two:
        sent = [await bc.apublish(channel, n) for n in range(5)]
        for sub in (one, two):
            assert [(await sub.get(timeout=TIMEOUT)).id for _ in range(5)] == [e.id for e in sent]
        bc.publish(channel, "sync", on_commit=False)
        figures = bc.stats()
        assert figures["alias"] == "default" and figures["published"] == 6
        assert figures["subscribers"] == 2 and figures["channels"] == {channel: 2}
        assert figures["broker_subscriptions"] == 1
        latency = figures["publish_latency_ms"]
        assert latency["samples"] == 6 and 0 < latency["p50"] <= latency["p99"]
        await one.get(timeout=TIMEOUT)
        await two.get(timeout=TIMEOUT)
        assert bc.stats()["delivered"] == 12
    assert bc.stats()["subscribers"] == 0 and bc.stats()["channels"] == {}
    assert broadcasts.stats()["default"]["published"] == 6


async def test_drops_and_gap_notices_are_counted(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name, QUEUE_SIZE=2)) as bc:
        async with bc.subscribe(channel) as slow, bc.subscribe(channel) as witness:
            for n in range(5):
                sent = await bc.apublish(channel, n)
                assert (await witness.get(timeout=TIMEOUT)).id == sent.id
            notice = await slow.get(timeout=TIMEOUT)
            assert notice.is_gap
        figures = bc.stats()
        await bc.aclose()
    assert figures["dropped"] == 3 and figures["gaps"] == 1


async def test_reconnects_are_counted(broker: Broker, server: PrivateServer, channel: str) -> None:
    with using(broker.entry(url=broker.private_url(server), TIMEOUT=1)) as bc:
        async with bc.subscribe(channel) as sub:
            server.kill()
            server.start()
            sent = None
            while sent is None or (await sub.get(timeout=TIMEOUT)).id != sent.id:
                sent = await bc.apublish(channel, "marker")
        assert bc.stats()["reconnects"] == 1
        await bc.aclose()


async def test_open_connections_are_counted(channel: str) -> None:
    with (
        using(alias_settings("memory")) as bc,
        override_settings(BROADCAST_AUTH={"PUBLIC": ["t-*"]}),
    ):
        ws = WebsocketCommunicator(BroadcastWebsocketConsumer.as_asgi(), "/broadcast/ws/")
        assert (await ws.connect(timeout=TIMEOUT))[0]
        sse = ApplicationCommunicator(
            EventStreamConsumer.as_asgi(),
            {"type": "http", "method": "GET", "path": "/broadcast/events/",
             "query_string": f"channel={channel}".encode(), "headers": []},
        )  # fmt: skip
        await sse.send_input({"type": "http.request", "body": b""})
        assert (await sse.receive_output(TIMEOUT))["status"] == 200
        await sse.receive_output(TIMEOUT)  # the first block: the stream is open
        assert bc.stats()["connections"] == {"websocket": 1, "sse": 1}
        await ws.disconnect()
        await sse.send_input({"type": "http.disconnect"})
        await sse.wait(TIMEOUT)
        assert bc.stats()["connections"] == {"websocket": 0, "sse": 0}


async def test_the_prometheus_export(channel: str) -> None:
    from django_broadcast.metrics import metrics_view

    with using(alias_settings("memory")) as bc:
        async with bc.subscribe(channel) as sub:
            await bc.apublish(channel, 1)
            await sub.get(timeout=TIMEOUT)
            response = metrics_view(RequestFactory().get("/metrics/"))
    text = response.content.decode()
    assert response["Content-Type"].startswith("text/plain")
    assert 'django_broadcast_events_published_total{alias="default"} 1.0' in text
    assert 'django_broadcast_events_delivered_total{alias="default"} 1.0' in text
    assert 'django_broadcast_subscribers{alias="default"} 1.0' in text
    assert 'django_broadcast_connections{alias="default",kind="websocket"} 0.0' in text
    assert 'django_broadcast_publish_latency_seconds{alias="default",quantile="0.99"}' in text
