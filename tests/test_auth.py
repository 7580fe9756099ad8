"""The authorization policy and the browser-client settings' system checks."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_broadcast.auth import authorize
from django_broadcast.checks import check_clients
from django_broadcast.consumers.settings import client_settings

CALLS: list[tuple[Any, str, str]] = []


async def test_default_policy_denies_everything() -> None:
    for action in ("subscribe", "history", "publish"):
        assert not await authorize(AnonymousUser(), "news.today", action)


@override_settings(BROADCAST_AUTH={"PUBLIC": ["news.*"], "PUBLISH": ["chat.*"]})
async def test_pattern_policy() -> None:
    user = AnonymousUser()
    assert await authorize(user, "news.today", "subscribe")
    assert await authorize(user, "news.today", "history")
    assert not await authorize(user, "news.today", "publish")
    assert await authorize(user, "chat.lobby", "publish")
    assert not await authorize(user, "chat.lobby", "subscribe")
    assert not await authorize(user, "newsx", "subscribe")


@override_settings(BROADCAST_AUTH={"PUBLIC": ["*"], "PUBLISH": ["*"]})
async def test_reserved_channels_are_read_only_through_the_rules_apps_add(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django_broadcast.auth import allow_reserved, disallow_reserved

    class Staff:
        is_staff = True

    def staff_only(user: Any, channel: str) -> bool:
        return bool(getattr(user, "is_staff", False))

    def broken(user: Any, channel: str) -> bool:
        raise RuntimeError("the rule has a bug")

    anonymous = AnonymousUser()
    assert not await authorize(Staff(), "broadcast.servers", "subscribe")  # no rule yet
    allow_reserved("broadcast.servers", staff_only)
    allow_reserved("broadcast.test.*", broken)
    try:
        assert await authorize(Staff(), "broadcast.servers", "subscribe")
        assert await authorize(Staff(), "broadcast.servers", "history")
        assert not await authorize(Staff(), "broadcast.servers", "publish")  # never
        assert not await authorize(anonymous, "broadcast.servers", "subscribe")
        assert not await authorize(Staff(), "broadcast.layer.inbox.x", "subscribe")
        assert not await authorize(Staff(), "broadcast.test.x", "subscribe")
        assert "the rule has a bug" in caplog.text
    finally:
        disallow_reserved("broadcast.servers", staff_only)
        disallow_reserved("broadcast.test.*", broken)
    assert not await authorize(Staff(), "broadcast.servers", "subscribe")


def sync_policy(user: Any, channel: str, action: str) -> bool:
    CALLS.append((user, channel, action))
    return channel == "mine"


async def async_policy(user: Any, channel: str, action: str) -> bool:
    return channel == "mine"


class ClassPolicy:
    def __call__(self, user: Any, channel: str, action: str) -> bool:
        return action == "history"


@pytest.mark.parametrize("name", ["sync_policy", "async_policy", "ClassPolicy"])
async def test_custom_policies(name: str) -> None:
    with override_settings(BROADCAST_AUTH={"POLICY": f"{__name__}.{name}"}):
        mine = await authorize(AnonymousUser(), "mine", "subscribe")
        other = await authorize(AnonymousUser(), "other", "history")
    assert (mine, other) == ((False, True) if name == "ClassPolicy" else (True, False))


async def test_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        await authorize(AnonymousUser(), "x", "delete")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("BROADCAST_CLIENTS", [], "E010"),
        ("BROADCAST_CLIENTS", {"KEEPALVE": 1}, "E010"),
        ("BROADCAST_CLIENTS", {"KEEPALIVE": 0}, "E011"),
        ("BROADCAST_CLIENTS", {"MAX_FRAME_SIZE": "big"}, "E011"),
        ("BROADCAST_CLIENTS", {"USING": "nope"}, "E014"),
        ("BROADCAST_AUTH", {"PUBLIC": "news.*"}, "E012"),
        ("BROADCAST_AUTH", {"PUBLIK": []}, "E012"),
        ("BROADCAST_AUTH", {"POLICY": "no.such.policy"}, "E013"),
        ("BROADCAST_AUTH", {"POLICY": "django_broadcast.auth.ACTIONS"}, "E013"),
    ],
)
def test_system_checks(setting: str, value: Any, expected: str) -> None:
    with override_settings(**{setting: value}):
        messages = check_clients()
    assert [m.id for m in messages] == [f"django_broadcast.{expected}"]
    assert messages[0].hint


def test_good_settings_pass_the_checks() -> None:
    with override_settings(
        BROADCAST_CLIENTS={"KEEPALIVE": 5, "MAX_SUBSCRIPTIONS": 10},
        BROADCAST_AUTH={"PUBLIC": ["a.*"], "POLICY": f"{__name__}.ClassPolicy"},
    ):
        assert check_clients() == []
        assert client_settings().keepalive == 5.0


def test_bad_settings_are_refused_at_use() -> None:
    with (
        override_settings(BROADCAST_CLIENTS={"RETRY": -1}),
        pytest.raises(ImproperlyConfigured, match="E011"),
    ):
        client_settings()


def owner_only(user: Any, channel: str, action: str) -> bool:
    return user.is_authenticated and channel == f"user.{user.pk}"


@pytest.mark.django_db(transaction=True)
async def test_consumers_see_the_logged_in_user_through_the_routing() -> None:
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import User
    from django.test import Client

    from django_broadcast.routing import websocket_router

    def log_in() -> tuple[int, str]:
        user = User.objects.create_user("ada", password="pw")
        client = Client()
        assert client.login(username="ada", password="pw")
        return user.pk, client.cookies["sessionid"].value

    pk, session = await sync_to_async(log_in)()
    settings = {
        "BROADCAST_AUTH": {"POLICY": f"{__name__}.owner_only"},
        "ALLOWED_HOSTS": ["testserver"],
    }
    with override_settings(**settings):
        for cookie, expected in ((f"sessionid={session}", "subscribed"), ("", "error")):
            headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
            if cookie:
                headers.append((b"cookie", cookie.encode()))
            ws = WebsocketCommunicator(websocket_router(), "/broadcast/ws/", headers=headers)
            connected, _ = await ws.connect(timeout=5)
            assert connected
            await ws.send_json_to({"op": "subscribe", "channel": f"user.{pk}"})
            assert (await ws.receive_json_from(timeout=5))["op"] == expected
            await ws.disconnect()
