"""The example's chat in two browsers: each sees the other's messages once, in order,
and who is in the room; a page opened later shows the history."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from .conftest import demo_on
from .live import WAIT, Browsing, DemoServer, subscribed

pytestmark = demo_on("memory", "redis+streams")


def join(browsing: Browsing, room: str, user: str | None = None, name: str = "") -> Page:
    """A page in ``room``, as ``user`` (named after them) or anonymous picking ``name``."""
    page = browsing.page(user=user, path=f"/chat/{room}/")
    if user is None:
        page.fill("#name-form input[name=name]", name)
        page.press("#name-form input[name=name]", "Enter")
    expect(page.locator("#chat-form")).to_be_visible(timeout=WAIT)
    subscribed(page, f"chat.{room}")
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=WAIT)
    return page


def say(page: Page, text: str) -> None:
    """Send ``text``, wait for the view's answer and until it is back in the sender's
    own page, once (so that the next message, from whichever page, is published after
    it). Other messages may arrive meanwhile."""
    page.fill("#chat-form input[name=text]", text)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/post/"), timeout=WAIT
    ) as answer:
        page.press("#chat-form input[name=text]", "Enter")
    assert answer.value.status == 204, answer.value.text()
    sent = page.locator("#messages li.message .text").filter(
        has_text=re.compile(f"^{re.escape(text)}$")
    )
    expect(sent).to_have_count(1, timeout=WAIT)


def texts(page: Page) -> list[str]:
    return page.locator("#messages li.message .text").all_inner_texts()


def test_two_browsers_chat(demo: DemoServer, browsing: Browsing) -> None:
    room = f"r{uuid.uuid4().hex[:8]}"
    alice = join(browsing, room, name="alice")
    staff = join(browsing, room, user="staff")
    for page in (alice, staff):
        page.evaluate("window.notReloaded = true")

    say(alice, "hello from alice")
    say(staff, "hello from staff")
    say(alice, "bye")
    for page in (alice, staff):
        expect(page.locator("#messages li.message")).to_have_count(3, timeout=WAIT)
        assert texts(page) == ["hello from alice", "hello from staff", "bye"]
        authors = page.locator("#messages li.message .author").all_inner_texts()
        assert authors == ["alice", "staff", "alice"]
        assert page.evaluate("window.notReloaded") is True
    ids = alice.locator("#messages li.message").evaluate_all(
        "(items) => items.map((i) => i.dataset.id)"
    )
    assert all(ids) and len(set(ids)) == 3
    assert (
        staff.locator("#messages li.message").evaluate_all(
            "(items) => items.map((i) => i.dataset.id)"
        )
        == ids
    )

    # Presence: each sees the other (and themselves).
    for page in (alice, staff):
        for name in ("alice", "staff"):
            expect(page.locator(f"#presence li[data-name={name}]")).to_have_count(1, timeout=WAIT)

    # A page opened now shows the history, then the next message once.
    later = join(browsing, room, user="editor")
    expect(later.locator("#messages li.message")).to_have_count(3, timeout=WAIT)
    assert texts(later) == ["hello from alice", "hello from staff", "bye"]
    say(later, "late")
    for page in (alice, staff, later):
        expect(page.locator("#messages li.message")).to_have_count(4, timeout=WAIT)
        assert texts(page)[-1] == "late"
    expect(alice.locator("#presence li[data-name=editor]")).to_have_count(1, timeout=WAIT)
