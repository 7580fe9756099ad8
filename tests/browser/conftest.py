"""Fixtures of the browser tests: Chromium (driven by Playwright), the example project
served by daphne on a broker, and pages that fail the test on any console error.

- ``browser``: one headless Chromium for all the browser tests (Debian's ``chromium``
  on PATH; Playwright never downloads one). Without Chromium or Playwright the tests are
  skipped, with a line at the end of the run saying why; under ``CI=true`` they fail.
- ``demo``: a :class:`~tests.browser.live.DemoServer` per test module and broker;
  modules choose the brokers with ``pytestmark = demo_on("memory", "redis")``.
- ``demo_server``: start servers of a test's own (``demo_server(url)``), for tests
  that hurt the broker; stopped and removed after the test.
- ``browsing``: a :class:`~tests.browser.live.Browsing` on ``demo`` (or, once a test
  started one, on its own server): ``browsing.page(user="staff", path="/chat/")``.
  When the test fails, screenshots, the console log, the server output and the error
  are saved in a temporary directory, named at the end of the run.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..brokers import BROKERS
from ..conftest import IN_CI, require_broker
from .live import Browsing, DemoServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

_skipped: list[str] = []
_saved: list[str] = []
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_BROWSING = pytest.StashKey[Browsing]()

# In CI the modules fail to import without Playwright: it is required there.
if importlib.util.find_spec("playwright") is None and not IN_CI:
    collect_ignore_glob = ["test_*.py"]
    _skipped.append("Playwright is not installed (pip install -e '.[test]')")


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: the browser tests are required)")
    if what not in _skipped:
        _skipped.append(what)
    pytest.skip(what)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _skipped:
        terminalreporter.write_line(f"browser tests skipped: {reason}.", yellow=True)
    for directory in _saved:
        terminalreporter.write_line(
            f"browser test failed: screenshots, console and server logs in {directory}", red=True
        )


def demo_on(*brokers: Any) -> pytest.MarkDecorator:
    """Run a module's tests against one example-project server per broker of ``brokers``
    (names, or ``pytest.param(name, marks=...)``)."""
    return pytest.mark.parametrize("demo", brokers, indirect=True, scope="module")


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium, for the browser tests (closed after them: Playwright's own
    event loop must be gone before the suite's asyncio tests run)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        _missing("chromium is not on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest) -> Iterator[DemoServer]:
    """The example project served by daphne on broker ``request.param``."""
    name: str = request.param
    if name != "memory":
        require_broker(name)
    server = DemoServer(BROKERS[name].url())
    try:
        server.setup().start()
        yield server
    finally:
        server.close()


@pytest.fixture
def demo_server() -> Iterator[Callable[[str], DemoServer]]:
    """``demo_server(url)``: an example-project server of the test's own, on broker
    ``url``, started; stopped and removed after the test."""
    started: list[DemoServer] = []

    def start(url: str) -> DemoServer:
        server = DemoServer(url)
        started.append(server)
        server.setup().start()
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def browsing(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Browsing]:
    """Browser contexts on the module's ``demo`` server (or, for a test without one,
    on the server it starts with ``demo_server``: use ``browsing.server = ...``)."""
    server = request.getfixturevalue("demo") if "demo" in request.fixturenames else None
    browsing = Browsing(browser, server)
    request.node.stash[_BROWSING] = browsing
    yield browsing
    try:
        report = request.node.stash.get(_REPORTS, {}).get("call")
        if report is not None and report.failed:
            directory = Path(tempfile.mkdtemp(prefix=f"browser-{request.node.name[:60]}-"))
            browsing.save(directory)
            (directory / "error.txt").write_text(report.longreprtext)
            _saved.append(str(directory))
            print(f"\nbrowser test failed: screenshots and logs in {directory}")
    finally:
        browsing.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a browser test whose pages logged a console error, threw, or had a
    request fail, even if its assertions passed."""
    yield
    browsing = item.stash.get(_BROWSING, None)
    if browsing is not None and browsing.problems():
        pytest.fail("the pages had problems:\n" + "\n".join(browsing.problems()), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, for ``browsing`` to save what a failed
    test's pages showed."""
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report
