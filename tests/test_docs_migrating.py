"""Every snippet of ``docs/migrating.rst`` runs, against a real Redis.

The snippets are files under ``docs/migrating/`` that the page includes. The
channels_redis settings build their layers and carry a group message; the settings
after the move carry it through ``BroadcastChannelLayer``, with the capacities and the
expiry the channels_redis ones had; the code after the move from broadcaster publishes
and receives. broadcaster is not a test dependency: its code is only parsed."""

from __future__ import annotations

import ast
import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils.module_loading import import_string

from django_broadcast import broadcasts

from .conftest import PREFIX, REDIS_URL, require_broker

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "migrating.rst"
SNIPPETS = DOCS / "migrating"
TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


def run(name: str, prefix: str) -> dict[str, Any]:
    """Execute snippet ``name`` as a module, with the test's Redis and key prefix."""
    code = (SNIPPETS / name).read_text()
    code = code.replace("redis://127.0.0.1:6379/0", REDIS_URL).replace("myproject", prefix)
    namespace: dict[str, Any] = {"__name__": f"docs_migrating_{name[:-3]}"}
    exec(compile(code, str(SNIPPETS / name), "exec"), namespace)
    return namespace


def make_layer(settings: dict[str, Any]) -> Any:
    entry = settings["CHANNEL_LAYERS"]["default"]
    return import_string(entry["BACKEND"])(**entry["CONFIG"])


async def carries_a_group_message(sender: Any, receiver: Any) -> None:
    group = f"g-{uuid.uuid4().hex[:10]}"
    channel = await receiver.new_channel()
    await receiver.group_add(group, channel)
    try:
        await sender.group_send(group, {"type": "chat.message", "text": "hi"})
        message = await asyncio.wait_for(receiver.receive(channel), TIMEOUT)
        assert (message["type"], message["text"]) == ("chat.message", "hi")
    finally:
        await receiver.group_discard(group, channel)


async def subscribed(channel: str, listening: asyncio.Task[None]) -> None:
    """Wait until this event loop holds a confirmed subscription to ``channel``."""
    while channel not in broadcasts["default"]._hub().channels:
        assert not listening.done(), listening
        await asyncio.sleep(0.01)


@pytest.fixture
def prefix() -> str:
    require_broker("redis", REDIS_URL)
    return f"{PREFIX}mig{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def after(prefix: str) -> AsyncIterator[dict[str, Any]]:
    settings = run("channels_redis_after.py", prefix)
    with override_settings(
        BROADCAST=settings["BROADCAST"], CHANNEL_LAYERS=settings["CHANNEL_LAYERS"]
    ):
        try:
            yield settings
        finally:
            await broadcasts["default"].aclose()


def test_every_snippet_is_on_the_page_and_every_include_exists() -> None:
    included = set(re.findall(r"^\.\. literalinclude:: migrating/(\S+)$", PAGE.read_text(), re.M))
    assert included == {path.name for path in SNIPPETS.glob("*.py")}
    assert len(included) == 6


@pytest.mark.parametrize("before", ["channels_redis_core.py", "channels_redis_pubsub.py"])
async def test_the_channels_redis_settings_carry_a_group_message(before: str, prefix: str) -> None:
    settings = run(before, prefix)
    layer = make_layer(settings)
    try:
        await carries_a_group_message(layer, layer)
    finally:
        await layer.flush()


async def test_the_settings_after_carry_a_group_message_with_the_same_limits(
    after: dict[str, Any], prefix: str
) -> None:
    before = make_layer(run("channels_redis_core.py", prefix))
    layer, other_process = make_layer(after), make_layer(after)
    try:
        for attribute in ("expiry", "capacity"):
            assert getattr(layer, attribute) == getattr(before, attribute)
        for name in ("thumbnails", "websocket.send!abc", "other"):
            assert layer.get_capacity(name) == before.get_capacity(name)
        assert layer.broadcast.config.options["prefix"] == f"{prefix}:"
        await carries_a_group_message(other_process, layer)
    finally:
        await layer.flush()
        await other_process.flush()
        await before.flush()


async def test_the_code_after_broadcaster_publishes_and_receives(prefix: str) -> None:
    settings = run("broadcaster_settings.py", prefix)
    settings["BROADCAST"]["default"]["OPTIONS"] = {"prefix": f"{prefix}:"}
    with override_settings(BROADCAST=settings["BROADCAST"]):
        code = run("broadcaster_after.py", prefix)
        sent: asyncio.Queue[str] = asyncio.Queue()

        class WebSocket:
            async def send_text(self, text: str) -> None:
                await sent.put(text)

        listening = asyncio.create_task(code["listen"](WebSocket()))
        try:
            await asyncio.wait_for(subscribed("chatroom", listening), TIMEOUT)
            await code["send_message"]("hello")
            assert await asyncio.wait_for(sent.get(), TIMEOUT) == "hello"
            await asyncio.to_thread(code["send_message_from_a_view"], "from sync code")
            assert await asyncio.wait_for(sent.get(), TIMEOUT) == "from sync code"
        finally:
            listening.cancel()
            await broadcasts["default"].aclose()


def test_the_code_before_broadcaster_parses_and_uses_its_api() -> None:
    tree = ast.parse((SNIPPETS / "broadcaster_before.py").read_text())
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert {"connect", "disconnect", "publish", "subscribe"} <= called
