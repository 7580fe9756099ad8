"""Every example of ``docs/testing.rst`` runs: each Python block of the page is a file
(named by its ``:caption:``) of a project that pytest runs in a subprocess, and every
test the page defines passes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from django_broadcast import Event
from django_broadcast.events import utcnow
from django_broadcast.testing import assert_broadcast

from .conftest import REDIS_URL, require_broker
from .userproject import run_pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.rst"
BLOCK = re.compile(r"^\.\. code-block:: (\w+)\n((?:   :\w+:.*\n)*)\n((?:   .*\n|\n)+)", re.M)


def python_blocks() -> list[tuple[str | None, str]]:
    """Each Python block of the page: its caption (None without one) and its code."""
    blocks = []
    for language, options, body in BLOCK.findall(PAGE.read_text()):
        if language != "python":
            continue
        caption = re.search(r":caption: (.+)", options)
        code = "\n".join(line[3:] for line in body.splitlines()).strip() + "\n"
        blocks.append((caption.group(1).strip() if caption else None, code))
    return blocks


def defined_tests(name: str, code: str) -> set[str]:
    """The pytest node ids of the tests ``code`` defines."""
    found = set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test_"
        ):
            found.add(f"{name}::{node.name}")
        elif isinstance(node, ast.ClassDef):
            found |= {
                f"{name}::{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and item.name.startswith("test_")
            }
    return found


def test_every_example_is_a_file_of_the_project() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 7
    assert all(name for name, _ in blocks), "a Python example without a :caption: file name"
    assert len({name for name, _ in blocks}) == len(blocks), "two examples with one name"


def test_every_example_passes(tmp_path: Path) -> None:
    require_broker("redis", REDIS_URL)  # the page's Redis example
    files = {
        str(name): code.replace("redis://127.0.0.1:6379/0", REDIS_URL)
        for name, code in python_blocks()
    }
    expected = set().union(*(defined_tests(name, code) for name, code in files.items()))
    assert len(expected) >= 9
    result = run_pytest(tmp_path, files)
    assert result.outcomes() == dict.fromkeys(expected, "passed"), result.output


def test_the_failure_shown_is_the_real_one() -> None:
    shown = next(
        "\n".join(line[3:] for line in body.splitlines()).strip()
        for language, _, body in BLOCK.findall(PAGE.read_text())
        if language == "text" and "AssertionError" in body
    )
    published = [
        Event("ticket.7", "ticket.opened", {"id": 7, "status": "open"}, "1", utcnow()),
        Event("ticket.8", "ticket.closed", {"id": 8, "status": "closed"}, "2", utcnow()),
    ]
    expected = {"id": 7, "status": "closed"}
    with pytest.raises(AssertionError) as failure:
        assert_broadcast(published, "ticket.7", type="ticket.closed", data=expected)
    assert shown == f"AssertionError: {failure.value}"
