"""The example project that ``scripts/demo`` serves passes Django's checks and serves
its page on every backend, publishes from its sync view and, where the broker keeps
history, shows the event in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .brokers import BROKERS
from .conftest import PREFIX

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

SCRIPT = """
import django
django.setup()
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
call_command("check", fail_level="WARNING")
client = Client()
assert client.get("/").status_code == 200
response = client.post("/publish/", {"text": "hello"}, headers={"X-Requested-With": "fetch"})
assert response.status_code == 204, response.status_code
page = client.get("/").content.decode()
from django_broadcast import broadcast
if broadcast.features.history:
    assert "hello" in page, page
else:
    assert "keeps no history" in page, page
print("example ok")
"""


def test_example_project_works(backend_name: str) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "BROADCAST_URL": BROKERS[backend_name].url(),
        "BROADCAST_PREFIX": PREFIX + "demo:",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=EXAMPLE, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "example ok" in done.stdout
