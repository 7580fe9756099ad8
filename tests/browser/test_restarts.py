"""An open chat page outlives its server restarting and its broker restarting, without
a reload; where the broker keeps history it loses nothing published meanwhile, and
where it does not it says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from ..brokers import PrivateRedis
from .conftest import demo_on
from .live import WAIT, Browsing, DemoServer, http_client, subscribed
from .test_chat import join, say, texts
from .test_seats import seat_map

#: What pages log while their server is killed and down: what was in flight is cut
#: (streams, a favicon...), then their WebSocket and EventSource cannot connect.
REFUSED = (
    r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/broadcast/ws/' failed",
    r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|INCOMPLETE_CHUNKED_ENCODING|EMPTY_RESPONSE)",
)
#: Taken while no server runs, and published by nobody: a page reads the map again.
TAKE_C4 = "from demo.models import Seat; Seat.objects.filter(label='C4').update(taken_by='cli')"


def open_room(browsing: Browsing, room: str) -> Page:
    page = join(browsing, room, user="staff")
    page.evaluate("window.notReloaded = true")
    say(page, "m1")
    return page


def post(server: DemoServer, room: str, text: str) -> None:
    """Post ``text`` in ``room`` through the chat view, as ``editor``."""
    with http_client(server, "editor") as client:
        client.post(f"/chat/{room}/post/", data={"text": text}).raise_for_status()


@demo_on("memory", "redis", "redis+streams")
def test_page_survives_server_restart(
    demo: DemoServer, browsing: Browsing, request: pytest.FixtureRequest
) -> None:
    history = request.node.callspec.params["demo"] == "redis+streams"
    room = f"r{uuid.uuid4().hex[:8]}"
    page = open_room(browsing, room)
    seats = seat_map(browsing)
    seats.evaluate("window.notReloaded = true")
    browsing.allow(*REFUSED)

    demo.crash()
    for each in (page, seats):
        expect(each.locator("#status")).to_have_attribute("data-state", "closed", timeout=WAIT)
    demo.manage("shell", "-c", TAKE_C4)
    if history:  # published while no server runs: the broker keeps it
        demo.manage(
            "broadcast_publish", f"chat.{room}", json.dumps({"author": "cli", "text": "m2"})
        )
    demo.start()
    if history:  # published before the page is back
        post(demo, room, "m3")
    subscribed(page, f"chat.{room}", times=2)
    for each in (page, seats):
        expect(each.locator("#status")).to_have_attribute("data-state", "open", timeout=WAIT)
    say(page, "m4")
    expect(seats.locator("button.seat[data-seat=C4]")).to_have_attribute(
        "data-state", "taken", timeout=WAIT
    )
    with http_client(demo, "editor") as client:  # after the restart: live again
        client.post("/seats/C5/").raise_for_status()
    expect(seats.locator("button.seat[data-seat=C5]")).to_have_attribute(
        "data-state", "taken", timeout=WAIT
    )
    assert seats.evaluate("window.notReloaded") is True

    if history:
        assert texts(page) == ["m1", "m2", "m3", "m4"]
        expect(page.locator("#notice")).to_be_hidden()
    else:  # nothing kept what was published while the page was away: it says so
        assert texts(page) == ["m1", "m4"]
        expect(page.locator("#notice")).to_contain_text("offline", timeout=WAIT)
    assert page.evaluate("window.notReloaded") is True


@pytest.mark.parametrize("scheme", ["redis", "redis+streams"])
def test_page_survives_broker_restart(
    scheme: str,
    private_redis: PrivateRedis,
    demo_server: Callable[[str], DemoServer],
    browsing: Browsing,
) -> None:
    url = private_redis.streams_url if scheme == "redis+streams" else private_redis.url
    browsing.server = server = demo_server(url)
    room = f"r{uuid.uuid4().hex[:8]}"
    page = open_room(browsing, room)

    private_redis.restart()  # killed, started again with its data
    post(server, room, "m2")  # while the server may not be subscribed again yet
    say(page, "m3")

    if scheme == "redis+streams":
        assert texts(page) == ["m1", "m2", "m3"]
    else:  # pub/sub: m2 arrives if the server was subscribed again in time, once;
        # the page says that it may have missed some
        assert texts(page) in (["m1", "m2", "m3"], ["m1", "m3"])
        expect(page.locator("#notice")).to_contain_text("offline", timeout=WAIT)
    assert page.evaluate("window.notReloaded") is True
