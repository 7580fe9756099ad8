"""The example's seat map in two browsers: a seat taken in one greys out in the
other, and when both click the same free seat at once the database picks one."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from .conftest import demo_on
from .live import WAIT, Browsing, DemoServer

pytestmark = demo_on("memory", "redis")


def seat_map(browsing: Browsing) -> Page:
    """An anonymous seat map (a session of its own), live, and done reading the map
    once its stream opened."""
    page = browsing.page()
    with page.expect_response(lambda r: r.url.endswith("/seats/state/"), timeout=WAIT):
        page.goto(browsing.url("/seats/"))
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=WAIT)
    return page


def test_a_taken_seat_greys_out_elsewhere(demo: DemoServer, browsing: Browsing) -> None:
    one, other = seat_map(browsing), seat_map(browsing)
    for page in (one, other):
        page.evaluate("window.notReloaded = true")
        expect(page.locator("button.seat[data-seat=A1]")).to_have_attribute(
            "data-state", "free", timeout=WAIT
        )

    one.click("button.seat[data-seat=A1]")
    expect(one.locator("button.seat[data-seat=A1]")).to_have_attribute(
        "data-state", "mine", timeout=WAIT
    )
    expect(other.locator("button.seat[data-seat=A1]")).to_have_attribute(
        "data-state", "taken", timeout=WAIT
    )

    one.click("button.seat[data-seat=A1]")  # given back
    expect(other.locator("button.seat[data-seat=A1]")).to_have_attribute(
        "data-state", "free", timeout=WAIT
    )
    for page in (one, other):
        assert page.evaluate("window.notReloaded") is True


def test_the_database_decides_a_race(demo: DemoServer, browsing: Browsing) -> None:
    pages = [seat_map(browsing), seat_map(browsing)]
    # Both click B2 at the same moment (one clock: both pages run on this machine).
    at = pages[0].evaluate("Date.now() + 500")
    taking = [
        page.expect_response(lambda r: r.url.endswith("/seats/B2/"), timeout=WAIT) for page in pages
    ]
    with taking[0] as first, taking[1] as second:
        for page in pages:
            page.evaluate(
                """(at) => setTimeout(
                     () => document.querySelector("button.seat[data-seat=B2]").click(),
                     at - Date.now())""",
                at,
            )
    won = [first.value.json()["ok"], second.value.json()["ok"]]
    assert sorted(won) == [False, True], won
    winner, loser = (pages[0], pages[1]) if won[0] else (pages[1], pages[0])
    expect(winner.locator("button.seat[data-seat=B2]")).to_have_attribute(
        "data-state", "mine", timeout=WAIT
    )
    expect(loser.locator("button.seat[data-seat=B2]")).to_have_attribute(
        "data-state", "taken", timeout=WAIT
    )
    expect(loser.locator("#notice")).to_be_visible(timeout=WAIT)
