"""The example project that ``scripts/demo`` serves, on every backend: Django's checks
pass, every page renders with the elements its browser tests select, the chat view
saves and publishes, the seat map lets the database decide races, and only staff may
free every seat.

Each test runs a script in a fresh interpreter with the example's own settings
(``demo.settings``), a SQLite file of its own (``DEMO_DATABASE``) and the broker under
test (``BROADCAST_URL``, keys under this run's prefix).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .brokers import BROKERS
from .conftest import PREFIX, free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

PREAMBLE = """
import asyncio, threading
import django
django.setup()
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
from django_broadcast import broadcast
from demo.models import Message, Seat
setup_test_environment()
call_command("migrate", verbosity=0)
FETCH = {"X-Requested-With": "fetch"}
"""


def run_example(backend_name: str, tmp_path: Path, script: str, url: str | None = None) -> str:
    """Run ``script`` after the preamble in the example project (on the broker's URL,
    or ``url``); return its output."""
    broker = BROKERS[backend_name]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "DEMO_DATABASE": str(tmp_path / "demo.sqlite3"),
        "BROADCAST_URL": url or broker.url(),
    }
    if "prefix" in broker.default_options():
        env["BROADCAST_PREFIX"] = PREFIX + "demo:"
    done = subprocess.run(
        [sys.executable, "-c", PREAMBLE + script], cwd=EXAMPLE, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


PAGES = """
call_command("check", fail_level="WARNING")
client = Client()
for url, page in [("/", "index"), ("/chat/", "chat"), ("/chat/lobby/", "chat"),
                  ("/seats/", "seats")]:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    html = response.content.decode()
    assert f'<body data-page="{page}">' in html, url
    for nav in ("chat", "seats", "admin"):
        assert f'data-nav="{nav}"' in html, (url, nav)
    assert 'id="status" class="status" data-state="connecting"' in html, url
    assert 'rel="icon"' in html, url
chat = client.get("/chat/").content.decode()
assert 'class="room" data-room="lobby"' in chat
room = client.get("/chat/lobby/").content.decode()
for needle in ('id="name-form"', 'name="name"', 'id="messages"', 'id="presence"'):
    assert needle in room, needle
seats = client.get("/seats/").content.decode()
assert seats.count('class="seat"') == 40
assert 'data-seat="A1" data-state="free"' in seats
assert 'id="reset"' not in seats  # staff only
favicon = client.get("/favicon.ico")
assert favicon.status_code == 200 and favicon["Content-Type"] == "image/svg+xml"
assert client.get("/admin/login/").status_code == 200
print("pages ok")
"""


def test_every_page_renders_with_its_elements(backend_name: str, tmp_path: Path) -> None:
    assert "pages ok" in run_example(backend_name, tmp_path, PAGES)


CHAT = """
client = Client()
client.post("/chat/lobby/name/", {"name": "ada"})
room = client.get("/chat/lobby/").content.decode()
assert 'id="chat-form"' in room and 'name="text"' in room

async def post_and_receive():
    async with broadcast.subscribe("chat.lobby") as sub:
        post = sync_to_async(client.post)
        response = await post("/chat/lobby/post/", {"text": "hello"}, headers=FETCH)
        assert response.status_code == 204, response.status_code
        return await sub.get(timeout=10)

event = asyncio.run(post_and_receive())
assert event.type == "message" and event.data == {"author": "ada", "text": "hello"}, event
message = Message.objects.get()
assert (message.room, message.author, message.text) == ("lobby", "ada", "hello")
assert message.event_id == event.id
page = client.get("/chat/lobby/").content.decode()
assert f'data-id="{event.id}"' in page and "hello" in page, page
print("chat ok")
"""


def test_the_chat_view_saves_then_publishes(backend_name: str, tmp_path: Path) -> None:
    assert "chat ok" in run_example(backend_name, tmp_path, CHAT)


NO_JS = """
client = Client()
assert client.post("/chat/lobby/post/", {"text": "anonymous"}).status_code == 400
# A room name longer than the model keeps (and than a channel name may be) is no room.
long_room = "r" * 120
assert client.get(f"/chat/{long_room}/").status_code == 404
assert client.post(f"/chat/{long_room}/post/", {"text": "x"}).status_code == 404
response = client.post("/chat/lobby/name/", {"name": "  "})
assert response.status_code == 400
client.post("/chat/lobby/name/", {"name": "bob"})
assert client.post("/chat/lobby/post/", {"text": "   "}).status_code == 400
response = client.post("/chat/lobby/post/", {"text": "no script here"})
assert response.status_code == 302 and response["Location"] == "/chat/lobby/", response
page = client.get(response["Location"]).content.decode()
assert '<span class="author">bob</span> <span class="text">no script here</span>' in page, page
assert Message.objects.count() == 1
print("no-js ok")
"""


def test_posting_without_javascript_redirects_to_the_room(
    backend_name: str, tmp_path: Path
) -> None:
    assert "no-js ok" in run_example(backend_name, tmp_path, NO_JS)


RACE = """
LABELS = ["A1", "B2", "C3", "D4", "E5"]

def take_each_seat_twice_at_once():
    barrier = threading.Barrier(2, timeout=10)
    answers = {label: [] for label in LABELS}

    def taker():
        client = Client()
        for label in LABELS:
            barrier.wait()
            answers[label].append(client.post(f"/seats/{label}/", headers=FETCH))

    threads = [threading.Thread(target=taker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers

async def race():
    async with broadcast.subscribe("seats") as sub:
        answers = await sync_to_async(take_each_seat_twice_at_once, thread_sensitive=False)()
        events = [await sub.get(timeout=10) for _ in LABELS]
    return answers, events

answers, events = asyncio.run(race())
for label, pair in answers.items():
    assert [answer.status_code for answer in pair] == [200, 200], label
    lost, won = sorted(pair, key=lambda answer: answer.json()["ok"])
    assert (lost.json()["ok"], won.json()["ok"]) == (False, True), label
    assert won.json()["message"] == f"Seat {label} is yours.", won.json()
    assert lost.json()["message"] == f"Sorry, seat {label} was just taken.", lost.json()
    seat = Seat.objects.get(label=label)
    assert seat.taken_by == won.json()["holder"] != lost.json()["holder"]
assert sorted(event.data["pk"] for event in events) == LABELS, events
assert all(event.type == "updated" and event.data["fields"]["taken_by"] for event in events)
print("race ok")
"""


def test_two_takes_of_one_seat_make_one_winner(backend_name: str, tmp_path: Path) -> None:
    assert "race ok" in run_example(backend_name, tmp_path, RACE)


SEATS = """
visitor = Client()
assert visitor.post("/seats/A1/").status_code == 302  # without JavaScript
assert "Seat A1 is yours." in visitor.get("/seats/").content.decode()
assert visitor.get("/seats/state/").json()["A1"] == "mine"
assert Client().get("/seats/state/").json()["A1"] == "taken"
assert visitor.post("/seats/Z9/").status_code == 404

response = visitor.post("/seats/reset/")
assert response.status_code == 302 and "/admin/login/" in response["Location"], response
assert Seat.objects.get(label="A1").taken_by

from django.contrib.auth.models import User
staff = Client()
staff.force_login(User.objects.create_user("staff", is_staff=True))
assert 'id="reset"' in staff.get("/seats/").content.decode()

async def reset():
    async with broadcast.subscribe("seats") as sub:
        response = await sync_to_async(staff.post)("/seats/reset/", headers=FETCH)
        return response, await sub.get(timeout=10)

response, event = asyncio.run(reset())
assert response.status_code == 200 and response.json()["ok"], response
assert event.type == "updated" and event.data["pk"] == "A1"
assert event.data["fields"] == {"taken_by": ""}, event
assert not Seat.objects.exclude(taken_by="").exists()
from django_broadcast.contrib.admin import admin_channel

async def take_and_give_back():
    # The live admin's changelist of seats sees takes too.
    async with broadcast.subscribe(admin_channel(Seat)) as sub:
        taken = await sync_to_async(visitor.post)("/seats/A1/", headers=FETCH)
        first = await sub.get(timeout=10)
        given = await sync_to_async(visitor.post)("/seats/A1/", headers=FETCH)
        second = await sub.get(timeout=10)
    return taken.json(), given.json(), first, second

taken, given, first, second = asyncio.run(take_and_give_back())
assert taken["message"] == "Seat A1 is yours.", taken
assert given["message"] == "You gave back seat A1.", given
assert first.type == second.type == "updated" and first.data["pk"] == "A1", (first, second)
print("seats ok")
"""


def test_seats_are_given_back_and_only_staff_free_them_all(
    backend_name: str, tmp_path: Path
) -> None:
    assert "seats ok" in run_example(backend_name, tmp_path, SEATS)


UNREACHABLE = """
client = Client()
client.post("/chat/lobby/name/", {"name": "ada"})
response = client.post("/chat/lobby/post/", {"text": "hello"}, headers=FETCH)
assert response.status_code == 503, response.status_code
text = response.content.decode()
assert "saved" in text and "could not be sent live" in text, text
assert Message.objects.get().text == "hello"
print("unreachable ok")
"""


def test_a_message_posted_while_the_broker_is_away_is_saved_and_says_so(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert "unreachable ok" in run_example("redis", tmp_path, UNREACHABLE, url=closed)
