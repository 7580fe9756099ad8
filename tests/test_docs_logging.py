"""``docs/logging.rst`` lists every logger of the package, and for each the levels its
code logs at: read from the package's source, so a logger added on any branch fails
this test until the page says what it logs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_broadcast"
PAGE = ROOT / "docs" / "logging.rst"

#: The level each logging method logs at.
LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
}
SECTION = re.compile(
    r"^``(django_broadcast[\w.]*)``\n~+\n(.*?)(?=^``django_broadcast|\Z)", re.M | re.S
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def logger_name(call: ast.expr, module: str) -> str | None:
    """The logger name of a ``logging.getLogger(...)`` call, or None if it is not one."""
    if not isinstance(call, ast.Call) or not call.args:
        return None
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called != "getLogger":
        return None
    (arg,) = call.args
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    assert isinstance(arg, ast.Name) and arg.id == "__name__", (
        f"{module}: a getLogger argument this test cannot read: {ast.unparse(arg)}"
    )
    return module


def loggers_in_code() -> dict[str, set[str]]:
    """Every logger name of the package and the levels its modules log at."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        variables: dict[str, str] = {}  # module-level name -> logger name
        for node in ast.walk(tree):
            name = logger_name(node, module) if isinstance(node, ast.expr) else None
            if name is not None:
                found.setdefault(name, set())  # listed even if it logs nothing yet
            if isinstance(node, ast.Assign) and logger_name(node.value, module):
                for target in node.targets:
                    assert isinstance(target, ast.Name), f"{module}: {ast.unparse(node)}"
                    variables[target.id] = logger_name(node.value, module) or ""
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
            ):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in variables:
                found[variables[owner.id]].add(LEVELS[node.func.attr])
            elif (name := logger_name(owner, module)) is not None:  # getLogger(...).info()
                found[name].add(LEVELS[node.func.attr])
    return found


def loggers_on_the_page() -> dict[str, set[str]]:
    """Each logger section of the page and the levels its ``Levels:`` line names."""
    documented = {}
    for name, body in SECTION.findall(PAGE.read_text()):
        line = re.search(r"^Levels: (.+)\.$", body, re.M)
        assert line, f"the section of {name} has no 'Levels: ...' line"
        documented[name] = {level.strip() for level in line.group(1).split(",")}
    return documented


def test_the_code_is_read() -> None:
    found = loggers_in_code()
    # __name__ and literal names, levels from logger.exception() too.
    assert found["django_broadcast.consumers.websocket"] == {"WARNING", "ERROR"}
    assert found["django_broadcast.hub"] == {"DEBUG", "INFO", "WARNING", "ERROR"}


def test_every_logger_is_documented_with_its_levels() -> None:
    assert loggers_on_the_page() == loggers_in_code()


def test_every_level_listed_is_explained() -> None:
    for name, body in SECTION.findall(PAGE.read_text()):
        levels = re.search(r"^Levels: (.+)\.$", body, re.M)
        assert levels
        for level in levels.group(1).split(", "):
            assert re.search(rf"^\* {level}\b", body, re.M), f"{name}: no item says {level}"


def test_the_logging_setting_shown_is_valid() -> None:
    (code,) = (
        "\n".join(line[3:] for line in body.splitlines())
        for body in re.findall(
            r"^\.\. code-block:: python\n\n((?:   .*\n|\n)+)", PAGE.read_text(), re.M
        )
    )
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    # Applied in a process of its own: the test run's logging stays as it is.
    script = (
        f"import logging, logging.config\nlogging.config.dictConfig({namespace['LOGGING']!r})\n"
    )
    script += (
        "assert logging.getLogger('django_broadcast.hub').getEffectiveLevel() == logging.DEBUG\n"
    )
    script += (
        "assert logging.getLogger('django_broadcast.layers').getEffectiveLevel() == logging.INFO\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
