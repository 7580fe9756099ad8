"""The example project served by a real daphne, and the browser pages that visit it.

:class:`DemoServer` runs ``daphne demo.asgi:application`` on a free port, on a broker
of its own choosing, with a temporary SQLite database migrated first and three users
logged in (``staff`` and ``editor``, superusers, and ``visitor``, who is not staff). It
can be stopped and started again on the same port with the same database, as a deploy
or a crash does.

:class:`Browsing` opens browser contexts on it (logged in or not), records every
console message, uncaught page error, failed request and HTTP error of their pages,
and saves screenshots, console logs and the server output when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..brokers import PREFIX
from ..servers import ROOT, Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Response

EXAMPLE = ROOT / "example_project"
#: The password of the users every demo database has.
PASSWORD = "browser-tests-password"
#: The users every demo database has: name -> is staff (a superuser) or not.
USERS = {"staff": True, "editor": True, "visitor": False}
#: Milliseconds every wait of a browser test may take (Playwright's unit).
WAIT = 20_000

_SETUP = f"""
import json
from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.core.management import call_command

call_command("migrate", interactive=False, verbosity=0)
sessions = {{}}
for name, staff in {USERS!r}.items():
    if staff:
        user = User.objects.create_superuser(name, password={PASSWORD!r})
    else:
        user = User.objects.create_user(name, password={PASSWORD!r})
    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    sessions[name] = session.session_key
print(json.dumps(sessions))
"""


class DemoServer(Server):
    """daphne serving the example project on broker ``url``, with a database of its own."""

    def __init__(self, url: str, *, heartbeat: int = 1) -> None:
        super().__init__("daphne")
        self.url_of_broker = url
        self.dir = Path(tempfile.mkdtemp(prefix="broadcast-demo-"))
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo.settings",
            "PYTHONPATH": str(EXAMPLE),
            "DEMO_DATABASE": str(self.dir / "db.sqlite3"),
            "BROADCAST_URL": url,
            "BROADCAST_PREFIX": f"{PREFIX}demo:{uuid.uuid4().hex[:8]}:",
            "DEMO_HEARTBEAT": str(heartbeat),
            # Its access log reaches the file line by line, even if it is killed.
            "PYTHONUNBUFFERED": "1",
        }
        #: Each user's session key, once :meth:`setup` made them.
        self.sessions: dict[str, str] = {}
        #: The CSRF secret of every page and client (Django takes it unmasked).
        self.csrf_token = secrets.token_hex(16)

    def command(self) -> list[str]:
        """daphne, on this server's port."""
        return [
            sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
            "demo.asgi:application",
        ]  # fmt: skip

    def setup(self) -> DemoServer:
        """Migrate the database, make the users and log them in (before the first
        :meth:`start`)."""
        self.sessions = json.loads(self.manage("shell", "-c", _SETUP).splitlines()[-1])
        return self

    def manage(self, *args: str) -> str:
        """Run ``manage.py ARGS`` of the example project on this server's database and
        broker; its output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def crash(self) -> None:
        """``kill -9`` the server (its port and database stay for :meth:`start`)."""
        self.stop(signal.SIGKILL)

    def login_state(self, user: str) -> dict[str, Any]:
        """The cookies of ``user`` logged in (a session made by :meth:`setup`, which
        outlives restarts: it is in the database) and of a CSRF token, as Playwright's
        ``storage_state``."""
        cookies = {"sessionid": self.sessions[user], "csrftoken": self.csrf_token}
        return {
            "cookies": [
                {"name": name, "value": value, "domain": "127.0.0.1", "path": "/",
                 "expires": -1, "httpOnly": False, "secure": False, "sameSite": "Lax"}
                for name, value in cookies.items()
            ],
            "origins": [],
        }  # fmt: skip

    def close(self) -> None:
        """Stop the server, remove its log and database."""
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


#: A line of daphne's access log for a response >= 400: the request and the status.
_ACCESS_ERROR = re.compile(r'"([A-Z]+ [^"]*)" ([45]\d\d) ')


class Browsing:
    """The browser contexts of one test, with what went wrong in their pages.

    ``page(user=...)`` opens a page in a context of its own (``user`` logged in, or
    anonymous). Every console error, uncaught exception, failed request and HTTP
    status >= 400 is a problem that fails the test, unless :meth:`allow` expects it
    (a WebSocket refused while the test restarts the server, say).
    """

    def __init__(self, browser: Browser, server: DemoServer | None) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[BrowserContext] = []
        self.pages: list[tuple[str, Page]] = []
        self.log: list[str] = []
        self._problems: list[str] = []
        self._allowed: list[re.Pattern[str]] = []
        self._log_start = len(server.output()) if server is not None else 0

    def page(self, user: str | None = None, path: str | None = None) -> Page:
        """A new page in a context of its own, ``user`` logged in (or anonymous),
        at ``path`` if given."""
        assert self.server is not None, "no server: set browsing.server"
        state = self.server.login_state(user) if user else None
        context = self.browser.new_context(
            storage_state=state,  # type: ignore[arg-type]
            viewport={"width": 1200, "height": 800},
        )
        self.contexts.append(context)
        context.add_init_script(_RECORD_FRAMES)
        page = context.new_page()
        name = f"{len(self.pages) + 1}-{user or 'anonymous'}"
        self.pages.append((name, page))
        self._watch(name, page)
        if path is not None:
            page.goto(self.url(path))
        return page

    def url(self, path: str) -> str:
        """The URL of ``path`` on the server."""
        assert self.server is not None, "no server: set browsing.server"
        return self.server.url(path)

    def allow(self, *patterns: str) -> None:
        """Expect problems matching these regular expressions from now on."""
        self._allowed.extend(re.compile(p) for p in patterns)

    def _watch(self, name: str, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            where = message.location.get("url", "")
            line = f"[{name}] console.{message.type}: {message.text} ({where})"
            self.log.append(line)
            if message.type == "error":
                self._problem(line)

        def failed(request: Request) -> None:
            self._problem(
                f"[{name}] request failed: {request.method} {request.url}: {request.failure}"
            )

        def response(response: Response) -> None:
            if response.status >= 400:
                self._problem(
                    f"[{name}] HTTP {response.status}: {response.request.method} {response.url}"
                )

        page.on("console", console)
        page.on("pageerror", lambda error: self._problem(f"[{name}] page error: {error}"))
        page.on("requestfailed", failed)
        page.on("response", response)

    def _problem(self, line: str) -> None:
        self.log.append(line)
        if not any(pattern.search(line) for pattern in self._allowed):
            self._problems.append(line)

    def problems(self) -> list[str]:
        """The problems not allowed so far, the server's responses >= 400 included
        (requests the browser makes unseen by Playwright, like the favicon's)."""
        served = self.server.output()[self._log_start :] if self.server is not None else ""
        errors = [
            f"[server] HTTP {status}: {request}"
            for request, status in _ACCESS_ERROR.findall(served)
            if not any(p.search(f"HTTP {status}: {request}") for p in self._allowed)
        ]
        return self._problems + errors

    def save(self, directory: Path) -> None:
        """Screenshots of every open page, the console log and the server's output."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, page in self.pages:
            if not page.is_closed():
                try:
                    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)
                except Exception as exc:  # a crashed page: say so next to the others
                    (directory / f"{name}.txt").write_text(f"no screenshot: {exc}\n")
        (directory / "console.log").write_text("\n".join(self.log) + "\n")
        if self.server is not None:
            (directory / "server.log").write_text(self.server.output())

    def close(self) -> None:
        """Close every context."""
        for context in self.contexts:
            context.close()


#: Every page keeps the frames its WebSockets received in ``window.receivedFrames``,
#: for tests to wait for a subscription's confirmation.
_RECORD_FRAMES = """(() => {
  const Native = window.WebSocket;
  window.receivedFrames = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (message) => {
        try { window.receivedFrames.push(JSON.parse(message.data)); } catch (error) {}
      });
    }
  };
})();"""


def subscribed(page: Page, channel: str, times: int = 1) -> None:
    """Wait until ``page`` has had ``times`` subscriptions to ``channel`` confirmed by the
    server (a reconnect subscribes again)."""
    page.wait_for_function(
        """([channel, times]) => window.receivedFrames.filter(
             (f) => f.op === "subscribed" && f.channel === channel).length >= times""",
        arg=[channel, times],
        timeout=WAIT,
    )


_PROBE = """(channels) => {
  const probe = {events: {}, errors: []};
  probe.client = DjangoBroadcast.connect("/broadcast/ws/", {
    onError: (frame) => probe.errors.push(frame),
  });
  for (const channel of channels) {
    probe.events[channel] = [];
    probe.client.subscribe(channel, (event) => probe.events[channel].push(event));
  }
  window.probe = probe;
}"""


def probe(page: Page, *channels: str) -> None:
    """Subscribe ``page`` (which loaded the shipped client) to ``channels`` on a
    connection of its own; what arrives is in ``window.probe.events[channel]``, the
    error frames in ``window.probe.errors``. Returns once the server answered every
    subscription (confirmed it, or refused it with an error frame)."""
    page.evaluate(_PROBE, list(channels))
    page.wait_for_function(
        """(channels) => channels.every((c) => window.probe.client.states[c] === "live"
             || window.probe.errors.some((e) => e.channel === c))""",
        arg=list(channels),
        timeout=WAIT,
    )


def http_client(server: DemoServer, user: str) -> httpx.Client:
    """An HTTP client with ``user``'s session and CSRF token, for a test to send
    requests and post forms as that user does."""
    return httpx.Client(
        base_url=server.url(""),
        cookies={"sessionid": server.sessions[user], "csrftoken": server.csrf_token},
        headers={"X-CSRFToken": server.csrf_token, "X-Requested-With": "fetch"},
        timeout=WAIT / 1000,
    )
