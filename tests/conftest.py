"""Fixtures shared by the suite: brokers, aliases bound to them, unique channels.

Backend tests talk to real brokers at ``REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). Under ``CI=true`` an unreachable broker fails those
tests; elsewhere they are skipped and the run ends with a line saying which.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import override_settings

from django_broadcast import Broadcast, broadcasts

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
RUN_ID = uuid.uuid4().hex[:8]
PREFIX = f"test-broadcast:{RUN_ID}:"

_unreachable: dict[str, str] = {}


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=2):
            return True
    except OSError:
        return False


def require_broker(name: str, url: str) -> None:
    """Fail (in CI) or skip (elsewhere) when the broker at ``url`` is unreachable."""
    if _reachable(url):
        return
    _unreachable[name] = url
    message = f"{name} broker unreachable at {url}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: brokers are required)")
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unreachable:
        listed = ", ".join(f"{name} ({url})" for name, url in sorted(_unreachable.items()))
        terminalreporter.write_line(
            f"django_broadcast: tests of these brokers were skipped, unreachable: {listed}. "
            f"Start them or set REDIS_URL.",
            yellow=True,
        )


BACKEND_URLS = {
    "memory": "memory://",
    "redis": REDIS_URL,
    "redis+streams": REDIS_URL.replace("redis://", "redis+streams://", 1).replace(
        "rediss://", "rediss+streams://", 1
    ),
}


def alias_settings(name: str, **extra: Any) -> dict[str, Any]:
    """The BROADCAST entry for backend ``name``, with a per-run key prefix on Redis."""
    entry: dict[str, Any] = {"URL": BACKEND_URLS[name]}
    options = dict(extra.pop("OPTIONS", {}))
    if name != "memory":
        options.setdefault("prefix", PREFIX)
    if options:
        entry["OPTIONS"] = options
    entry.update(extra)
    return entry


@contextmanager
def using(entry: dict[str, Any]) -> Iterator[Broadcast]:
    """Make ``entry`` the default alias for the block and yield it."""
    with override_settings(BROADCAST={"default": entry}):
        yield broadcasts["default"]


@pytest.fixture(params=list(BACKEND_URLS))
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name != "memory":
        require_broker("redis", REDIS_URL)
    return name


@pytest.fixture(params=[name for name in BACKEND_URLS if name != "redis"])
def history_backend_name(request: pytest.FixtureRequest) -> str:
    """The backends that keep history (redis:// pub/sub keeps none)."""
    name: str = request.param
    if name != "memory":
        require_broker("redis", REDIS_URL)
    return name


@pytest.fixture
async def bc(backend_name: str) -> AsyncIterator[Broadcast]:
    """The default alias on each backend in turn."""
    with using(alias_settings(backend_name)) as instance:
        try:
            yield instance
        finally:
            await instance.aclose()


@pytest.fixture
def channel() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def _delete_test_streams() -> Iterator[None]:
    yield
    if not _reachable(REDIS_URL):
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that it may break at will.

    It persists every write (``appendfsync always``), so :meth:`restart` keeps the
    data; ``restart(persist=False)`` brings it back empty, as a server without
    persistence (or with its data lost) comes back. DEBUG is enabled, for
    :meth:`debug_sleep`. :meth:`stop` (the fixture calls it) kills the server and
    removes its data directory.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="broadcast-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.streams_url = self.url.replace("redis://", "redis+streams://", 1)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (again) on the same port and data directory."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """Whether the server answers PING (it accepts connections before it has
        loaded its data, and answers LOADING meanwhile)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """``kill -9`` the server, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, *, persist: bool = True) -> None:
        """Kill the server and start it again, with its data or (``persist=False``)
        without: every stream is gone, as after a restart without persistence."""
        self.kill()
        if not persist:
            shutil.rmtree(self.dir)
            os.mkdir(self.dir)
        self.start()

    def freeze(self) -> None:
        """Stop the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen server (SIGCONT): it runs whatever it was sent meanwhile."""
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGCONT)

    def debug_sleep(self, seconds: float) -> socket.socket:
        """Make the server sleep ``seconds`` (``DEBUG SLEEP``, sent from a client of
        its own) and return once it sleeps, so that the next command any other client
        sends is answered late. Close the returned socket when done."""
        assert self.process is not None, "the server is not running"
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
        # Linux: the main thread waits in (hrtimer_/do_)nanosleep while it sleeps.
        wchan = f"/proc/{self.process.pid}/wchan"
        deadline = time.monotonic() + 5
        while True:
            with open(wchan) as file:
                if "nanosleep" in file.read():
                    return sock
            if time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the private redis-server did not start its DEBUG SLEEP")
            time.sleep(0.001)

    def stop(self) -> None:
        """Kill the server (frozen or not) and remove its data directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private redis-server (see :class:`PrivateRedis`), stopped after the test."""
    if shutil.which("redis-server") is None:
        _unreachable["redis-server binary"] = "PATH"
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true: it is required)")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start servers of the test project (``tests/servers.py``): ``serve("daphne",
    url=..., entry=...)``; every one is stopped at the end of the test."""
    from .servers import Server

    started: list[Server] = []

    def start(kind: str, **settings: Any) -> Server:
        server = Server(kind, **settings)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()
