"""One test harness per broker: how to reach the shared one, how to start a private
one and hurt it (kill, freeze, restart with or without its data), and what the broker
holds of this library (subscriptions, receiving connections).

Tests never name a broker: they take the ``broker`` fixture (or ``backend_name``,
``bc``, ``server``), which runs them against every broker whose backend declares the
features a ``@pytest.mark.features(...)`` marker asks for (``"history"``, or
``history=False`` for the backends without). Adding a broker is adding a class here.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, ClassVar

from django.utils.module_loading import import_string

from django_broadcast import Broadcast
from django_broadcast.backends import schemes
from django_broadcast.backends.base import Features

__all__ = ["BROKERS", "Broker", "PrivatePostgres", "PrivateRedis", "PrivateServer", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class PrivateServer(abc.ABC):
    """A broker server of one test's own, on a free port, that it may hurt at will."""

    #: The binary that must be on PATH.
    binary: ClassVar[str]
    url: str

    @abc.abstractmethod
    def start(self) -> None:
        """Start (again), with the data it had, and return once it answers."""

    @abc.abstractmethod
    def kill(self) -> None:
        """``kill -9``, as a crash would."""

    @abc.abstractmethod
    def restart(self, *, persist: bool = True) -> None:
        """Kill and start again, with its data, or without (``persist=False``)."""

    @abc.abstractmethod
    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""

    @abc.abstractmethod
    def thaw(self) -> None:
        """SIGCONT: it runs whatever it was sent meanwhile."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Kill it and remove its data."""


class Broker(abc.ABC):
    """One broker, as the tests see it."""

    #: The name tests are reported under (the URL scheme).
    name: ClassVar[str]
    #: Whether a private server can be started (and hurt).
    can_start: ClassVar[bool] = False

    @property
    def features(self) -> Features:
        """What its backend declares."""
        scheme = schemes.get(self.name)
        assert scheme is not None, self.name
        features: Features = import_string(scheme.backend).features
        return features

    @abc.abstractmethod
    def url(self) -> str:
        """The shared broker's URL."""

    def entry(self, url: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``BROADCAST`` alias on the shared broker (or on ``url``), keys and
        channels under this run's prefix; ``extra`` keys go in (``OPTIONS`` merged)."""
        entry: dict[str, Any] = {"URL": url or self.url()}
        options = {**self.default_options(), **dict(extra.pop("OPTIONS", {}))}
        if options:
            entry["OPTIONS"] = options
        entry.update(extra)
        return entry

    def default_options(self) -> dict[str, Any]:
        """Options every alias of the tests gets (a per-run key prefix, say)."""
        return {}

    def reachable(self) -> bool:
        """Whether the shared broker answers."""
        return True

    def start_private(self) -> PrivateServer:
        """A private server of this broker, started."""
        raise NotImplementedError(f"{self.name} has no server to start")

    def private_url(self, server: PrivateServer) -> str:
        """The URL of this broker's backend on ``server``."""
        return server.url

    @abc.abstractmethod
    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        """How many subscriptions the broker itself holds for ``channel`` of ``bc``."""

    async def holds_nothing(self, bc: Broadcast, *channels: str) -> bool:
        """Whether the broker holds no subscription of ``bc`` for ``channels``."""
        for channel in channels:
            if await self.subscriptions(bc, channel):
                return False
        return True


# Memory --------------------------------------------------------------------------------


class MemoryBroker(Broker):
    name = "memory"

    def url(self) -> str:
        return "memory://"

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        return int(channel in bc.backend.subscribed_channels())  # type: ignore[attr-defined]


# Redis ---------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: Every key and channel the tests write carries it; the session deletes them at the end.
PREFIX = f"test-broadcast:{os.urandom(4).hex()}:"


class PrivateRedis(PrivateServer):
    """A private redis-server.

    It persists every write (``appendfsync always``), so :meth:`restart` keeps the
    data; ``restart(persist=False)`` brings it back empty, as a server without
    persistence (or with its data lost) comes back. DEBUG is enabled, for
    :meth:`debug_sleep`.
    """

    binary = "redis-server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="broadcast-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.streams_url = self.url.replace("redis://", "redis+streams://", 1)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
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
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, *, persist: bool = True) -> None:
        self.kill()
        if not persist:
            shutil.rmtree(self.dir)
            os.mkdir(self.dir)
        self.start()

    def freeze(self) -> None:
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
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
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _RedisBroker(Broker):
    can_start = True

    def url(self) -> str:
        return REDIS_URL

    def default_options(self) -> dict[str, Any]:
        return {"prefix": PREFIX}

    def reachable(self) -> bool:
        from urllib.parse import urlsplit

        parts = urlsplit(REDIS_URL)
        return reachable(parts.hostname or "127.0.0.1", parts.port or 6379)

    def start_private(self) -> PrivateServer:
        server = PrivateRedis()
        server.start()
        return server

    async def _client_list(self, bc: Broadcast) -> list[dict[str, Any]]:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(bc.backend.url)  # type: ignore[attr-defined]
        try:
            found: list[dict[str, Any]] = await client.client_list()
            return found
        finally:
            await client.aclose()


class RedisPubSubBroker(_RedisBroker):
    name = "redis"

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        import redis.asyncio

        backend = bc.backend
        client = redis.asyncio.Redis.from_url(backend.url)  # type: ignore[attr-defined]
        try:
            [(_, count)] = await client.pubsub_numsub(backend.key(channel))  # type: ignore[attr-defined]
            return int(count)
        finally:
            await client.aclose()


class RedisStreamsBroker(_RedisBroker):
    name = "redis+streams"

    def url(self) -> str:
        scheme, rest = REDIS_URL.split("://", 1)
        return f"{scheme}+streams://{rest}"

    def private_url(self, server: PrivateServer) -> str:
        return server.url.replace("redis://", "redis+streams://", 1)

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        # A streams receiver is one named connection blocked in XREAD over every
        # channel of its process: count those connections.
        name = bc.backend.connection_name("streams")  # type: ignore[attr-defined]
        return sum(1 for c in await self._client_list(bc) if c.get("name") == name)


#: Every broker the suite runs against, by name.
BROKERS: dict[str, Broker] = {
    broker.name: broker for broker in (MemoryBroker(), RedisPubSubBroker(), RedisStreamsBroker())
}


# PostgreSQL ----------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_PG_BIN = "/usr/lib/postgresql/15/bin"


class PrivatePostgres(PrivateServer):
    """A private PostgreSQL cluster (initdb in a temp dir, trust auth, fsync off: a
    kill -9 keeps the data, the OS still has it). Run as the ``postgres`` user where
    the tests run as root, which initdb refuses."""

    binary = f"{_PG_BIN}/postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="broadcast-postgres-")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._initdb()

    def _initdb(self) -> None:
        subprocess.run(
            [*self.prefix, f"{_PG_BIN}/initdb", "-D", self.data, "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.prefix, self.binary, "-D", self.data, "-p", str(self.port),
             "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private postgres on port {self.port} did not start")
            time.sleep(0.05)

    def _answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def _pid(self) -> int:
        """The postmaster's pid (runuser forks it as its child)."""
        with open(os.path.join(self.data, "postmaster.pid")) as file:
            return int(file.readline())

    def _signal(self, sig: int) -> None:
        """Send ``sig`` to the postmaster and every backend it runs."""
        try:
            pid = self._pid()
        except FileNotFoundError:  # it did not get as far as writing it
            return
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for each in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, sig)

    def kill(self) -> None:
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.kill()  # runuser, where it runs the server
            self.process.wait(timeout=10)
            self.process = None
            # What a postmaster killed so leaves behind, and refuses to start with.
            for leftover in [
                os.path.join(self.data, "postmaster.pid"),
                os.path.join(self.dir, f".s.PGSQL.{self.port}"),
                os.path.join(self.dir, f".s.PGSQL.{self.port}.lock"),
            ]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)

    def restart(self, *, persist: bool = True) -> None:
        self.kill()
        if not persist:
            shutil.rmtree(self.data)
            self._initdb()
        self.start()

    def freeze(self) -> None:
        assert self.process is not None, "the server is not running"
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None, "the server is not running"
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresBroker(Broker):
    name = "postgresql"
    can_start = True

    def url(self) -> str:
        return POSTGRES_URL

    def default_options(self) -> dict[str, Any]:
        return {"prefix": PREFIX}

    def reachable(self) -> bool:
        from urllib.parse import urlsplit

        parts = urlsplit(POSTGRES_URL)
        return reachable(parts.hostname or "127.0.0.1", parts.port or 5432)

    def start_private(self) -> PrivateServer:
        server = PrivatePostgres()
        server.start()
        return server

    def cleanup(self) -> None:
        """Delete the rows this run wrote in the shared database (every alias of the
        tests prefixes its channels with :data:`PREFIX`)."""
        import psycopg

        from django_broadcast.backends.postgres import schema

        with (
            psycopg.connect(POSTGRES_URL, autocommit=True) as conn,
            contextlib.suppress(psycopg.errors.UndefinedTable),  # no test made them
        ):
            for table in (schema.TABLE, schema.TRIMMED):
                conn.execute(
                    f"DELETE FROM {table} WHERE starts_with(channel, %s)".encode(), [PREFIX]
                )

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        # LISTEN is per session and pg_listening_channels() reads only one's own: count
        # the listening connections of the alias (one per event loop, every channel).
        import psycopg

        name = bc.backend.application_name  # type: ignore[attr-defined]
        async with await psycopg.AsyncConnection.connect(bc.backend.url) as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0


BROKERS["postgresql"] = PostgresBroker()
