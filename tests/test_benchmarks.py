"""Each benchmark runs at a tiny size, so the scripts cannot rot.

Nothing here asserts a speed: the figures come from running the scripts themselves.
"""

from __future__ import annotations

import pytest

from .conftest import REDIS_URL, require_broker


@pytest.fixture(autouse=True)
def _redis() -> None:
    require_broker("redis", REDIS_URL)
    require_broker("postgresql")


def test_sync_publish_benchmark_runs() -> None:
    from benchmarks import sync_publish

    table = sync_publish.run(events=20, rounds=1, anchor_events=5).render()
    for case in (
        "redis-py PUBLISH",
        "publish redis://",
        "publish redis+streams://",
        "publish postgres://",
        "channels_redis",
    ):
        assert case in table
    assert "target: redis:// >= 80% of raw PUBLISH" in table


def test_fanout_benchmark_runs() -> None:
    from benchmarks import fanout

    table = fanout.run(sizes=[3], events=2, rounds=1).render()
    for case in (
        "redis://",
        "redis+streams://",
        "postgres://",
        "BroadcastChannelLayer",
        "channels_redis pubsub",
        "encode/broadcaster",
    ):
        assert case in table
    assert "failed" not in table.split("channels_redis core")[0]
    assert "target: redis:// >= 5x channels_redis pubsub" in table


def test_memory_benchmark_runs() -> None:
    from benchmarks import memory

    table = memory.run(subscribers=3).render()
    assert "django_broadcast redis://" in table and "channels_redis pubsub" in table
    assert "failed" not in table.split("channels_redis core")[0]


def test_memory_per_connection_benchmark_runs() -> None:
    from benchmarks import memory

    table = memory.websocket_table(connections=3).render()
    assert "BroadcastWebsocketConsumer" in table and "anchor" in table
