"""The backend contract as data: what a backend declares drives the checks; third-party
schemes register through an entry point; and the core's one reconnect policy, with
persistent subscriptions and ``open(wait=True)``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from django_broadcast import GAP, BroadcastError, SubscriptionClosed
from django_broadcast.backends import schemes
from django_broadcast.backends.base import Features

from .conftest import PrivateRedis, using

TIMEOUT = 10


def errors(setting: object) -> list[str]:
    with override_settings(BROADCAST=setting):
        found = run_checks()
        return [
            f"{m.id}: {m.msg} {m.hint}"
            for m in found
            if (m.id or "").startswith("django_broadcast.E")
        ]


def test_an_option_the_backend_cannot_honour_is_a_startup_error() -> None:
    [message] = errors({"default": {"URL": "redis://127.0.0.1:6379/0", "OPTIONS": {"history": 5}}})
    assert message.startswith("django_broadcast.E004")
    assert "'history' needs a backend with history; RedisBackend has none" in message
    assert "redis+streams://" in message  # the hint names backends that do


def test_a_message_size_over_the_brokers_hard_limit_is_a_startup_error() -> None:
    entry = {"URL": "redis://127.0.0.1:6379/0", "OPTIONS": {"max_message_size": 2**30}}
    [message] = errors({"default": entry})
    assert "over the broker's hard limit of 536,870,912 bytes" in message


def test_every_shipped_backend_declares_its_features() -> None:
    from django.utils.module_loading import import_string

    for scheme in schemes.registered():
        features = import_string(scheme.backend).features
        assert isinstance(features, Features)
        assert features.history == (features.origin is not None), scheme


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[Path]:
    """A distribution installed on sys.path that registers two schemes: one whose
    backend imports, one whose driver is missing."""
    package = tmp_path / "thirdparty_broadcast"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from django_broadcast.backends.memory import MemoryBackend\n"
        "class LoopbackBackend(MemoryBackend):\n"
        "    '''The memory backend under another name.'''\n"
        "import dataclasses\n"
        "class NoQueuesBackend(MemoryBackend):\n"
        "    '''The memory backend without queues.'''\n"
        "    features = dataclasses.replace(MemoryBackend.features, queues=False)\n"
    )
    info = tmp_path / "thirdparty_broadcast-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-broadcast\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[django_broadcast.schemes]\n"
        "loopback = thirdparty_broadcast:LoopbackBackend\n"
        "noqueues = thirdparty_broadcast:NoQueuesBackend\n"
        "missing = thirdparty_broadcast.driverless:Backend\n"
    )
    sys.path.insert(0, str(tmp_path))
    saved = dict(schemes._schemes)
    schemes._loaded = False
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        schemes._schemes.clear()
        schemes._schemes.update(saved)
        schemes._loaded = False
        sys.modules.pop("thirdparty_broadcast", None)


def test_a_third_party_scheme_registers_through_an_entry_point(
    third_party: Path, channel: str
) -> None:
    assert errors({"default": {"URL": "loopback://"}}) == []
    with using({"URL": "loopback://"}) as bc:
        assert type(bc.backend).__name__ == "LoopbackBackend"
        assert bc.publish(channel, 1, on_commit=False) is not None
    [message] = errors({"default": {"URL": "missing://host"}})
    assert message.startswith("django_broadcast.E002")
    assert "pip install thirdparty-broadcast" in message


async def test_a_persistent_subscription_outlives_a_long_outage(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using({"URL": private_redis.url, "TIMEOUT": 1, "RECONNECT_TIMEOUT": 0.3}) as bc:
        async with bc.subscribe(channel, persistent=True) as kept, bc.subscribe(channel) as other:
            private_redis.kill()
            with pytest.raises(SubscriptionClosed, match="RECONNECT_TIMEOUT"):
                await other.get(timeout=TIMEOUT)
            private_redis.start()
            notice = await kept.get(timeout=TIMEOUT)
            assert notice.type == GAP and notice.data["reason"] == "reconnect"
            sent = await bc.apublish(channel, "back")
            assert (await kept.get(timeout=TIMEOUT)).id == sent.id
        await bc.aclose()


async def test_open_can_wait_for_the_broker(private_redis: PrivateRedis, channel: str) -> None:
    private_redis.kill()
    with using({"URL": private_redis.url, "TIMEOUT": 1}) as bc:
        subscription = bc.subscribe(channel)
        opening = asyncio.create_task(subscription.open(wait=True))
        private_redis.start()
        await asyncio.wait_for(opening, TIMEOUT)
        sent = await bc.apublish(channel, "hello")
        assert (await subscription.get(timeout=TIMEOUT)).id == sent.id
        await subscription.aclose()
        await bc.aclose()


def test_a_layer_on_a_backend_without_queues_is_a_startup_warning(third_party: Path) -> None:
    layers = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "events"},
        }
    }
    aliases = {"default": {"URL": "memory://"}, "events": {"URL": "noqueues://"}}
    with override_settings(BROADCAST=aliases, CHANNEL_LAYERS=layers):
        [warning] = [m for m in run_checks() if m.id == "django_broadcast.W002"]
    assert "CHANNEL_LAYERS['default']" in warning.msg
    assert "BROADCAST['events']" in warning.msg and "no queues" in warning.msg
    assert "runworker" in warning.msg
    assert "memory://" in (warning.hint or "")
    layers = {"default": {"BACKEND": "django_broadcast.layers.BroadcastChannelLayer"}}
    with override_settings(BROADCAST={"default": {"URL": "memory://"}}, CHANNEL_LAYERS=layers):
        assert not [m for m in run_checks() if m.id == "django_broadcast.W002"]


async def test_a_plain_channel_on_a_backend_without_queues_says_so(third_party: Path) -> None:
    from django_broadcast.layers import BroadcastChannelLayer

    with using({"URL": "noqueues://"}) as bc:
        layer = BroadcastChannelLayer()
        with pytest.raises(BroadcastError, match="has no queues: use a backend that has"):
            await layer.send("thumbnails", {"type": "job"})
        await bc.aclose()


async def test_memory_ids_never_repeat_and_an_older_processs_position_is_a_gap(
    channel: str,
) -> None:
    # Each override_settings makes a new memory backend: as a new process would.
    with using({"URL": "memory://"}) as before:
        old = await before.apublish(channel, "before the restart")
        await before.aclose()
    with using({"URL": "memory://"}) as after:
        new = await after.apublish(channel, "after the restart")
        assert after.backend.id_key(new.id) > after.backend.id_key(old.id)
        [notice, event] = await after.ahistory(channel, since=old.id)
        assert notice.type == GAP and event.id == new.id
        async with after.subscribe(channel, since=old.id) as resumed:
            assert (await resumed.get(timeout=5)).type == GAP
            assert (await resumed.get(timeout=5)).id == new.id
        await after.aclose()
