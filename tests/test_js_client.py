"""The browser client: its unit test under Node, and that collectstatic serves it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import override_settings

from .conftest import IN_CI

HERE = Path(__file__).resolve().parent


def test_client_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        if IN_CI:
            pytest.fail("node is not installed (CI=true: it is required)")
        pytest.skip("node is not installed")
    done = subprocess.run(
        [node, str(HERE / "js" / "client.test.js")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "all checks passed" in done.stdout


def test_collectstatic_finds_the_client() -> None:
    apps = ["django.contrib.staticfiles", "django_broadcast"]
    with override_settings(INSTALLED_APPS=apps, STATIC_URL="/static/"):
        found = finders.find("django_broadcast/broadcast.js")
    assert found and Path(str(found)).name == "broadcast.js"
