"""Settings, the registry and the system checks."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_broadcast import Broadcast, broadcast, broadcasts
from django_broadcast.backends.memory import MemoryBackend
from django_broadcast.checks import check_settings


def check_ids(setting: Any, debug: bool = True) -> list[str]:
    with override_settings(BROADCAST=setting, DEBUG=debug):
        return [message.id for message in check_settings()]  # type: ignore[misc]


def test_no_setting_means_in_memory() -> None:
    with override_settings(DEBUG=True):
        from django.conf import settings

        del settings.BROADCAST  # type: ignore[misc]
        assert isinstance(broadcasts["default"].backend, MemoryBackend)
        assert check_settings() == []


def test_registry_builds_each_alias_once() -> None:
    setting = {"default": {"URL": "memory://"}, "audit": {"URL": "memory://"}}
    with override_settings(BROADCAST=setting):
        assert broadcasts["audit"] is broadcasts["audit"]
        assert broadcasts["audit"] is not broadcasts["default"]
        assert list(broadcasts) == ["default", "audit"]
        assert broadcast.alias == "default"
        assert isinstance(broadcasts["default"], Broadcast)


def test_override_settings_takes_effect() -> None:
    with override_settings(BROADCAST={"default": {"URL": "memory://", "QUEUE_SIZE": 7}}):
        assert broadcast.config.queue_size == 7
        with override_settings(BROADCAST={"default": {"URL": "memory://", "QUEUE_SIZE": 9}}):
            assert broadcast.config.queue_size == 9
        assert broadcast.config.queue_size == 7


def test_unknown_alias_is_a_clear_error() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"no broadcast alias 'nope'.*'default'"):
        broadcasts["nope"]


def test_a_bad_setting_is_reported_at_first_use() -> None:
    with (
        override_settings(BROADCAST={"default": {"URL": "kafka://x"}}),
        pytest.raises(ImproperlyConfigured, match=r"E001.*kafka"),
    ):
        broadcasts["default"]


def test_backend_and_location() -> None:
    setting = {
        "default": {
            "BACKEND": "django_broadcast.backends.memory.MemoryBackend",
            "OPTIONS": {"history": 3},
        }
    }
    with override_settings(BROADCAST=setting):
        assert broadcast.backend.history_size == 3  # type: ignore[attr-defined]
    assert check_ids(setting) == []


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"default": {"URL": "kafka://broker:9092"}}, ["django_broadcast.E001"]),
        ({"default": {"URL": "127.0.0.1:6379"}}, ["django_broadcast.E001"]),
        ({"default": {"BACKEND": "no.such.Backend"}}, ["django_broadcast.E002"]),
        (
            {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            ["django_broadcast.E002"],
        ),
        ({"default": {"URL": "memory://", "CODEC": "no.such.Codec"}}, ["django_broadcast.E002"]),
        ({"default": {}}, ["django_broadcast.E003"]),
        (
            {"default": {"BACKEND": "django_broadcast.backends.redis.RedisBackend"}},
            ["django_broadcast.E003"],
        ),
        ({"default": {"URL": "memory://", "OPTIONS": {"histroy": 5}}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "OPTIONS": {"history": "5"}}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "OPTIONS": {"history": 0}}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "OPTIONS": []}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "QUEUE_SIZE": 0}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "OVERFLOW": "block"}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "TIMEOUT": "5"}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "RECONNECT_TIMEOUT": None}}, []),
        ({"default": {"URL": "memory://", "LOCATON": "x"}}, ["django_broadcast.E004"]),
        ({"default": {"URL": "memory://", "BACKEND": "x.Y"}}, ["django_broadcast.E004"]),
        (["memory://"], ["django_broadcast.E005"]),
        ({"audit": {"URL": "memory://"}}, ["django_broadcast.E005"]),
        ({"default": "memory://"}, ["django_broadcast.E005"]),
    ],
)
def test_system_checks(setting: Any, expected: list[str]) -> None:
    assert check_ids(setting) == expected


def test_every_error_has_a_hint() -> None:
    with override_settings(BROADCAST={"default": {"URL": "kafka://x", "OPTIONS": {"x": 1}}}):
        messages = check_settings()
    assert messages and all(m.hint for m in messages)
    assert "memory://" in str(messages[0].hint)


def test_memory_backend_without_debug_warns() -> None:
    assert check_ids({"default": {"URL": "memory://"}}, debug=False) == ["django_broadcast.W001"]
    assert check_ids({"default": {"URL": "memory://"}}, debug=True) == []


def test_checks_run_at_startup() -> None:
    with (
        override_settings(BROADCAST={"default": {"URL": "kafka://x"}}),
        pytest.raises(SystemCheckError, match=r"django_broadcast\.E001"),
    ):
        call_command("check")
