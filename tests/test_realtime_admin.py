"""The real-time admin: the live dashboard (staff only, fed by the servers'
heartbeats), the request counting middleware, and live model admins whose events
reach only those who may view the model. The pages' scripts are driven in a real
browser by tests/browser/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.checks import run_checks
from django.test import AsyncClient, Client, override_settings

from django_broadcast import broadcasts, presence
from django_broadcast.contrib.admin import admin_channel
from django_broadcast.contrib.admin.middleware import BOUNDS_MS, requests
from django_broadcast.events import HEARTBEAT, SERVERS_CHANNEL
from django_broadcast.routing import websocket_router
from django_broadcast.testing import capture_broadcasts

from .testapp.models import Article

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/broadcast_admin/dashboard/"
ARTICLES = "/admin/testapp/article/"
CHANNEL = admin_channel(Article)


def make_user(name: str, *, staff: bool = False, perms: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def config_of(response: Any) -> dict[str, Any]:
    found = re.search(
        r'<script id="broadcast-dashboard-config" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert found, "the dashboard page carries its configuration"
    return json.loads(found.group(1))


# The dashboard ---------------------------------------------------------------------


def test_the_admin_index_links_the_dashboard_for_staff() -> None:
    response = logged_in(make_user("staff", staff=True)).get("/admin/")
    assert response.status_code == 200
    assert f'href="{DASHBOARD}"' in response.content.decode()
    assert "Live dashboard" in response.content.decode()


def test_the_dashboard_is_for_staff_only() -> None:
    assert logged_in(make_user("staff", staff=True)).get(DASHBOARD).status_code == 200
    for client in (Client(), logged_in(make_user("visitor"))):
        response = client.get(DASHBOARD)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_dashboard_starts_from_the_servers_heard_and_names_its_channel() -> None:
    bc = broadcasts["default"]  # memory://, which keeps history
    beat = presence.snapshot(bc, 5.0, {})
    bc.publish(SERVERS_CHANNEL, beat, type=HEARTBEAT, on_commit=False)
    config = config_of(logged_in(make_user("staff", staff=True)).get(DASHBOARD))
    assert [server["id"] for server in config["servers"]] == [presence.IDENTITY]
    assert config["channel"] == SERVERS_CHANNEL and config["url"] == "/broadcast/ws/"
    assert config["interval"] == 5 and config["counts_requests"] is True
    assert config["crosses_processes"] is False  # the page says it sees one process


def test_the_dashboard_finds_the_consumer_under_a_script_prefix() -> None:
    from django.urls import set_script_prefix

    from django_broadcast.contrib.admin.admin import DashboardAdmin
    from django_broadcast.contrib.admin.models import Dashboard

    set_script_prefix("/site/")  # as a server mounted under /site/ sets it
    try:
        config = DashboardAdmin(Dashboard, admin.site).dashboard_config()
    finally:
        set_script_prefix("/")
    assert config["url"] == "/site/broadcast/ws/"


# Counting requests -------------------------------------------------------------------


def test_requests_are_counted_and_timed_sync_and_async() -> None:
    requests.take()
    client = logged_in(make_user("staff", staff=True))
    client.get("/admin/")
    client.get("/admin/nowhere/")  # a 404 is a request too
    counted = requests.take()
    assert counted["count"] == 2 and sum(counted["buckets"]) == 2
    assert counted["bounds_ms"] == list(BOUNDS_MS) and counted["per_second"] > 0
    assert requests.take()["count"] == 0  # taken: counting starts again


async def test_async_requests_are_counted() -> None:
    await sync_to_async(requests.take)()
    response = await AsyncClient().get("/admin/login/")
    assert response.status_code == 200
    assert requests.take()["count"] == 1


def test_every_heartbeat_carries_the_requests_counted_since_the_last() -> None:
    logged_in(make_user("staff", staff=True)).get("/admin/")  # loads the middleware
    requests.take()
    Client().get("/admin/login/")
    beat = presence.snapshot(broadcasts["default"], 5.0, {})
    assert beat["requests"]["count"] == 1
    assert presence.snapshot(broadcasts["default"], 5.0, {})["requests"]["count"] == 0


def test_the_system_checks_name_what_is_missing() -> None:
    def ids() -> set[str]:
        return {message.id for message in run_checks() if message.id}

    assert not {i for i in ids() if i.startswith("broadcast_admin.")}
    with override_settings(MIDDLEWARE=[]):
        assert "broadcast_admin.W001" in ids()


# Who may read what ---------------------------------------------------------------------


async def subscribe_as(user: User | None, channel: str) -> dict[str, Any]:
    """Open the WebSocket consumer as ``user`` and answer its first frame."""

    def session_of() -> str:
        client = Client()
        assert user is not None
        client.force_login(user)
        return client.cookies["sessionid"].value

    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await sync_to_async(session_of)()}".encode()))
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        ws = WebsocketCommunicator(websocket_router(), "/broadcast/ws/", headers=headers)
        connected, _ = await ws.connect(timeout=5)
        assert connected
        try:
            await ws.send_json_to({"op": "subscribe", "channel": channel})
            return await ws.receive_json_from(timeout=5)
        finally:
            await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_only_active_staff_read_the_server_list() -> None:
    staff = await sync_to_async(make_user)("staff", staff=True)
    inactive = await sync_to_async(make_user)("gone", staff=True)
    inactive.is_active = False
    await sync_to_async(inactive.save)()
    visitor = await sync_to_async(make_user)("visitor")
    assert (await subscribe_as(staff, SERVERS_CHANNEL))["op"] == "subscribed"
    for user in (visitor, inactive, None):
        frame = await subscribe_as(user, SERVERS_CHANNEL)
        assert (frame["op"], frame["code"]) == ("error", "forbidden")


@pytest.mark.django_db(transaction=True)
async def test_a_models_live_events_reach_only_those_who_may_view_it() -> None:
    make = sync_to_async(make_user)
    allowed = [
        await make("viewer", staff=True, perms=("view_article",)),
        await make("editor", staff=True, perms=("change_article",)),
        await sync_to_async(User.objects.create_superuser)("root", password="pw"),
    ]
    refused = [
        await make("staff", staff=True),  # staff, but no permission on the model
        await make("outsider", perms=("view_article",)),  # not staff: no admin at all
        None,
    ]
    for user in allowed:
        assert (await subscribe_as(user, CHANNEL))["op"] == "subscribed", user
    for user in refused:
        assert (await subscribe_as(user, CHANNEL))["code"] == "forbidden", user
    # Models without a live admin have no readable channel, whoever asks.
    assert (await subscribe_as(allowed[2], "broadcast.admin.auth.user"))["code"] == "forbidden"


# What a live admin publishes --------------------------------------------------------------


@pytest.fixture
def editor() -> Iterator[Client]:
    yield logged_in(User.objects.create_superuser("ada", password="pw"))


def test_saves_in_the_admin_say_who_saved_and_from_which_form(editor: Client) -> None:
    article = Article.objects.create(title="Draft")
    with capture_broadcasts() as captured:
        response = editor.post(
            f"{ARTICLES}{article.pk}/change/",
            {"title": "Final", "body": "", "_broadcast_editor": "tab-1"},
        )
        assert response.status_code == 302
        editor.post(f"{ARTICLES}add/", {"title": "Second", "body": ""})
    events = [event for event in captured if event.channel == CHANNEL]
    assert [(e.type, e.data["repr"], e.data["by"], e.data["editor"]) for e in events] == [
        ("updated", "Final", "ada", "tab-1"),
        ("created", "Second", "ada", None),
    ]
    assert events[0].data["pk"] == str(article.pk)  # as text, as admin URLs carry it
    assert set(events[0].data) == {"model", "pk", "repr", "by", "editor"}  # no fields


def test_deletes_in_the_admin_and_changes_elsewhere_are_published(editor: Client) -> None:
    first, second = Article.objects.create(title="One"), Article.objects.create(title="Two")
    with capture_broadcasts() as captured:
        editor.post(
            ARTICLES,
            {"action": "delete_selected", "_selected_action": [first.pk], "post": "yes"},
        )
        editor.post(f"{ARTICLES}{second.pk}/delete/", {"post": "yes"})
        Article.objects.create(title="From a view")  # not through the admin: nobody named
    assert [(e.type, e.data["repr"], e.data["by"]) for e in captured if e.channel == CHANNEL] == [
        ("deleted", "One", "ada"),
        ("deleted", "Two", "ada"),
        ("created", "From a view", None),
    ]


def test_the_live_pages_load_the_client_and_the_live_script(editor: Client) -> None:
    article = Article.objects.create(title="x")
    for url in (ARTICLES, f"{ARTICLES}{article.pk}/change/"):
        page = editor.get(url).content.decode()
        assert "django_broadcast/broadcast.js" in page and "broadcast_admin/live.js" in page
        assert "broadcast_admin/live.css" in page
        assert "app-testapp model-article" in page  # what live.js reads the model from


def test_the_shipped_migrations_match_the_models() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "broadcast_admin", "--check", "--dry-run", verbosity=0)
