"""The wheel ships every file of the package: the client script, the contrib apps'
templates, static files and migrations, not only the Python modules; and its metadata
points at the documentation, the source and the tracker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_broadcast"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy, so that the build leaves nothing in the work tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "django_broadcast", ignore=IGNORED)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(out)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    (built,) = out.glob("django_broadcast_bridge-*.whl")
    return zipfile.ZipFile(built)


def shipped_files() -> set[str]:
    """Every file of the package tree a user needs (no bytecode)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_holds_every_file_of_the_package(wheel: zipfile.ZipFile) -> None:
    expected = shipped_files()
    # The files this test is about, present in the tree (so it checks something).
    assert {
        "django_broadcast/static/django_broadcast/broadcast.js",
        "django_broadcast/contrib/admin/templates/broadcast_admin/dashboard.html",
        "django_broadcast/contrib/admin/static/broadcast_admin/live.js",
        "django_broadcast/contrib/admin/migrations/0001_initial.py",
        "django_broadcast/py.typed",
    } <= expected
    assert expected - set(wheel.namelist()) == set()


def test_the_metadata_links_documentation_source_and_tracker(wheel: zipfile.ZipFile) -> None:
    (name,) = (n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(wheel.read(name).decode())
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Documentation", "Source", "Tracker"}
    assert all(
        url.startswith("https://github.com/django-broadcast/django-broadcast-bridge")
        for url in urls.values()
    )
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"redis", "channels", "daphne", "test", "lint", "docs"} <= extras
