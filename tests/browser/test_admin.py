"""The real-time admin in a browser: the live dashboard moves under traffic, a live
changelist shows what another staff session saves, and a user who is not staff gets
neither."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Page, expect

from .conftest import demo_on
from .live import WAIT, Browsing, DemoServer, http_client, probe, subscribed

pytestmark = demo_on("memory", "redis")

DASHBOARD = "/admin/broadcast_admin/dashboard/"
CHANGELIST = "/admin/demo/message/"
ADMIN_CHANNEL = "broadcast.admin.demo.message"
#: The y of a zero in the dashboard's charts (viewBox 160 high, 8 above, 4 below).
ZERO_Y = 156


@contextmanager
def traffic(server: DemoServer) -> Iterator[None]:
    """Requests and chat messages (through the chat view) sent while the block runs."""
    done = threading.Event()
    failures: list[BaseException] = []

    def send() -> None:
        try:
            with http_client(server, "editor") as client:
                while not done.is_set():
                    client.get("/").raise_for_status()
                    client.post("/chat/traffic/post/", data={"text": "load"}).raise_for_status()
                    done.wait(0.05)  # pacing, about 20 of each a second
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=WAIT / 1000)
    if failures:
        raise failures[0]


def last_point_y(page: Page, chart: str, series: int = 0) -> float:
    """The y of the newest point of a dashboard chart's line."""
    y: float = page.evaluate(
        """([chart, series]) => {
             const line = document.querySelector(`#${chart} polyline.bd-s${series}`);
             const points = line.getAttribute("points").trim().split(" ");
             return parseFloat(points[points.length - 1].split(",")[1]);
           }""",
        [chart, series],
    )
    return y


def wait_quiet(page: Page) -> None:
    """Wait until the dashboard shows no traffic: no request and no event in the last
    heartbeat, and the charts' newest points at zero."""
    expect(page.locator("#bd-requests")).to_have_text("0", timeout=WAIT)
    expect(page.locator("#bd-published")).to_have_text("0", timeout=WAIT)
    page.wait_for_function(
        f"""() => ["bd-chart-requests", "bd-chart-events"].every((chart) => {{
              const line = document.querySelector(`#${{chart}} polyline.bd-s0`);
              const points = line ? line.getAttribute("points").trim().split(" ") : [];
              const last = points.length ? points[points.length - 1].split(",")[1] : null;
              return last !== null && parseFloat(last) === {ZERO_Y};
           }})""",
        timeout=WAIT,
    )


def test_dashboard_moves_under_traffic(demo: DemoServer, browsing: Browsing) -> None:
    # A reader of the room the traffic goes to, for events to be delivered.
    reader = browsing.page(user="editor", path="/chat/traffic/")
    subscribed(reader, "chat.traffic")
    page = browsing.page(user="staff", path=DASHBOARD)
    expect(page.locator("#bd-status")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(page.locator("#bd-servers")).to_have_text("1", timeout=WAIT)
    wait_quiet(page)

    with traffic(demo):
        page.wait_for_function(
            """() => ["bd-requests", "bd-published", "bd-delivered"].every(
                 (id) => parseFloat(document.getElementById(id).textContent) > 0)""",
            timeout=WAIT,
        )
        page.wait_for_function(
            f"""() => ["bd-chart-requests", "bd-chart-events"].every((chart) => {{
                  const line = document.querySelector(`#${{chart}} polyline.bd-s0`);
                  const points = line.getAttribute("points").trim().split(" ");
                  return parseFloat(points[points.length - 1].split(",")[1]) < {ZERO_Y};
               }})""",
            timeout=WAIT,
        )
    assert last_point_y(page, "bd-chart-events", series=1) <= ZERO_Y
    expect(page.locator("#bd-server-table tbody tr:not(.bd-empty)")).to_have_count(1, timeout=WAIT)
    expect(page.locator("#bd-latency")).to_have_text(re.compile(r"p50 \d"), timeout=WAIT)


def test_changelist_shows_what_another_session_saves(demo: DemoServer, browsing: Browsing) -> None:
    watcher = browsing.page(user="staff", path=CHANGELIST)
    subscribed(watcher, ADMIN_CHANNEL)
    watcher.evaluate("window.notReloaded = true")

    editor = browsing.page(user="editor", path=CHANGELIST + "add/")
    editor.fill("#id_room", "lobby")
    editor.fill("#id_author", "editor")
    editor.fill("#id_text", "added in another session")
    editor.click("input[name=_save]")
    expect(editor).to_have_url(re.compile(re.escape(CHANGELIST) + r"$"), timeout=WAIT)

    added = watcher.locator("#result_list tbody tr.broadcast-new")
    expect(added).to_have_count(1, timeout=WAIT)
    expect(added).to_contain_text("added in another session", timeout=WAIT)
    expect(added.locator(".broadcast-badge")).to_have_text("added by editor", timeout=WAIT)
    expect(watcher.locator(".broadcast-live li")).to_have_count(1, timeout=WAIT)

    editor.locator("#result_list tbody tr a[href*='/change/']").first.click()
    editor.fill("#id_text", "changed in another session")
    editor.click("input[name=_save]")
    expect(editor).to_have_url(re.compile(re.escape(CHANGELIST) + r"$"), timeout=WAIT)

    changed = watcher.locator("#result_list tbody tr.broadcast-changed")
    expect(changed).to_have_count(1, timeout=WAIT)
    expect(changed).to_contain_text("changed in another session", timeout=WAIT)
    expect(changed.locator(".broadcast-badge")).to_have_text("changed by editor", timeout=WAIT)
    assert watcher.evaluate("window.notReloaded") is True


def test_visitor_gets_no_dashboard_and_no_model_events(
    demo: DemoServer, browsing: Browsing
) -> None:
    visitor = browsing.page(user="visitor", path=DASHBOARD)
    expect(visitor).to_have_url(re.compile(r"/admin/login/\?next="), timeout=WAIT)

    # The visitor asks for the admin's channel and a public one on a page of the site.
    visitor.goto(demo.url("/"))
    probe(visitor, ADMIN_CHANNEL, "chat.lobby")
    refusals = visitor.evaluate("window.probe.errors")
    assert [(e["code"], e["channel"]) for e in refusals] == [("forbidden", ADMIN_CHANNEL)]
    # Staff may: proof that the model event below is published at all.
    staff = browsing.page(user="staff", path="/")
    probe(staff, ADMIN_CHANNEL, "chat.lobby")
    assert staff.evaluate("window.probe.errors") == []

    # Posting in the lobby saves a Message (a model event on the admin's channel),
    # then publishes the chat event: the marker that everything before it arrived.
    with http_client(demo, "editor") as client:
        client.post("/chat/lobby/post/", data={"text": "marker"}).raise_for_status()
    for page in (visitor, staff):
        page.wait_for_function(
            """() => window.probe.events["chat.lobby"].some((e) => e.data.text === "marker")""",
            timeout=WAIT,
        )
    staff.wait_for_function(
        f"""() => window.probe.events["{ADMIN_CHANNEL}"].some((e) => e.type === "created")""",
        timeout=WAIT,
    )
    assert visitor.evaluate(f"window.probe.events['{ADMIN_CHANNEL}']") == []


@pytest.mark.parametrize("path", [DASHBOARD, CHANGELIST])
def test_anonymous_is_sent_to_login(demo: DemoServer, browsing: Browsing, path: str) -> None:
    page = browsing.page(path=path)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=" + re.escape(path)), timeout=WAIT)
