"""A user's Django project in a temporary directory, with its own tests run by pytest
in a subprocess: how ``django_broadcast.testing`` is seen from outside this suite (its
pytest plugin loaded through the entry point, none of our fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

SETTINGS = """\
SECRET_KEY = "a-user-project"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_broadcast",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

PYTEST_INI = """\
[pytest]
DJANGO_SETTINGS_MODULE = settings
pythonpath = .
asyncio_default_fixture_loop_scope = function
"""


@dataclass
class Result:
    """What the run printed, and its JUnit report."""

    output: str
    report: Path

    def outcomes(self) -> dict[str, str]:
        """``{"test_file.py::[Class::]test": "passed" | "failed" | "error" | "skipped"}``."""
        outcomes = {}
        for case in ElementTree.parse(self.report).iter("testcase"):
            module, *classes = case.attrib["classname"].split(".")
            node = "::".join([f"{module}.py", *classes, case.attrib["name"]])
            outcome = "passed"
            for child in case:
                if child.tag in {"failure", "error", "skipped"}:
                    outcome = {"failure": "failed"}.get(child.tag, child.tag)
            outcomes[node] = outcome
        return outcomes


def run_pytest(directory: Path, files: dict[str, str], timeout: float = 180) -> Result:
    """Write ``files`` (name -> text) next to the project's settings and ``pytest.ini``
    in ``directory``, run pytest there, and return what it did."""
    for name, text in {"settings.py": SETTINGS, "pytest.ini": PYTEST_INI, **files}.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    report = directory / "report.xml"
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "PYTHONPATH"}}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert report.exists(), output
    return Result(output, report)
