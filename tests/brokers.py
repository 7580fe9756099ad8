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

__all__ = [
    "BROKERS",
    "Broker",
    "PrivateCluster",
    "PrivateNats",
    "PrivatePostgres",
    "PrivateRedis",
    "PrivateSentinel",
    "PrivateServer",
    "free_port",
    "shared_cluster",
    "shared_sentinel",
]


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
    #: The test modules it runs in (None: every one).
    suites: ClassVar[frozenset[str] | None] = None

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


class _ServerBroker(Broker):
    """A broker on a server of its own: the shared one at ``shared_url``, a private
    one of ``private_server`` where a test needs to stop or hurt it."""

    can_start = True
    #: The shared server's URL (the first, where it lists several).
    shared_url: ClassVar[str]
    #: The port a URL without one means.
    default_port: ClassVar[int]
    #: The prefix every alias of the tests gets (keys, subjects or rows of this run).
    prefix: ClassVar[str]
    private_server: ClassVar[type[PrivateServer]]

    def url(self) -> str:
        return self.shared_url

    def default_options(self) -> dict[str, Any]:
        return {"prefix": self.prefix}

    def reachable(self) -> bool:
        from urllib.parse import urlsplit

        parts = urlsplit(self.shared_url.split(",")[0])
        return reachable(parts.hostname or "127.0.0.1", parts.port or self.default_port)

    def start_private(self) -> PrivateServer:
        server = self.private_server()
        server.start()
        return server


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


class _RedisBroker(_ServerBroker):
    shared_url = REDIS_URL
    default_port = 6379
    prefix = PREFIX
    private_server = PrivateRedis

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


# Redis Cluster and Sentinel --------------------------------------------------------------


def reachable_binaries() -> bool:
    """Whether redis-server and redis-cli are on PATH (to start clusters and sentinels)."""
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


def _wait(what: str, check: Any, timeout: float = 30) -> None:
    """Poll ``check()`` until it is true, or fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s")
        time.sleep(0.05)


def _command(port: int, *args: Any) -> Any:
    """One command to the local server on ``port``, on a connection of its own."""
    import redis

    # A bare connection: the reply as the server sent it (redis-py would parse some).
    conn = redis.Connection(port=port, socket_timeout=5, decode_responses=True)
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        conn.disconnect()


class _Processes:
    """redis-server processes on free ports, in one temp dir, stopped at exit."""

    def __init__(self, prefix: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    def spawn(self, port: int, *args: str) -> None:
        home = os.path.join(self.dir, str(port))
        os.makedirs(home, exist_ok=True)
        self.args[port] = [*args, "--port", str(port), "--bind", "127.0.0.1", "--dir", home]
        self.start(port)

    def start(self, port: int) -> None:
        """Start the server on ``port`` (again) and return once it answers PING."""
        self.processes[port] = subprocess.Popen(
            ["redis-server", *self.args[port]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(f"redis-server on port {port} did not start", lambda: _command(port, "PING"), 10)

    def kill(self, port: int) -> None:
        """``kill -9`` the server on ``port``."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def wait_replicated(port: int) -> None:
        """Wait until the replicas of the master on ``port`` have all it wrote."""

        def replicated() -> bool:
            info = _command(port, "INFO", "replication")
            written = int(info.split("master_repl_offset:", 1)[1].split()[0])
            offsets = [int(o.split(",")[0]) for o in info.split("offset=")[1:]]
            return bool(offsets) and min(offsets) >= written

        _wait(f"the replica of port {port} did not catch up", replicated, 10)


class PrivateCluster(_Processes):
    """A Redis Cluster of three masters with a replica each, on free ports, that fails
    over fast (``cluster-node-timeout`` 1000 ms)."""

    def __init__(self) -> None:
        super().__init__("broadcast-cluster-")
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        #: Every node (one that answers is enough: the backend discovers the others).
        self.url = "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports) + "/0"

    def _create(self) -> None:
        self.ports = [free_port() for _ in range(6)]
        for port in self.ports:
            self.spawn(
                port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no",
            )  # fmt: skip
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_healthy()

    def _nodes(self) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by a running node."""
        port = next(iter(self.processes))
        nodes = []
        for line in _command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            address = fields[1].split("@")[0]
            nodes.append({
                "port": int(address.rsplit(":", 1)[1]), "flags": set(fields[2].split(",")),
                "slots": fields[8:],
            })  # fmt: skip
        return nodes

    def _healthy(self) -> bool:
        for port in self.processes:
            if "cluster_state:ok" not in _command(port, "CLUSTER", "INFO"):
                return False
        nodes = self._nodes()
        masters = [n for n in nodes if "master" in n["flags"] and n["slots"]]
        if len(masters) != 3 or any("fail" in n["flags"] or "fail?" in n["flags"] for n in nodes):
            return False
        for master in masters:  # every master has a replica in sync
            info = _command(master["port"], "INFO", "replication")
            if "connected_slaves:1" not in info or "state=online" not in info:
                return False
        return True

    def wait_healthy(self) -> None:
        """Wait until every node says ``cluster_state:ok``, three masters serve the slots
        and each has a replica in sync."""
        _wait("the cluster did not become healthy", self._healthy, 60)

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for node in self._nodes():
            if "master" not in node["flags"] or "fail" in node["flags"]:
                continue
            for spec in node["slots"]:
                first, _, last = spec.partition("-")
                if not first.startswith("[") and int(first) <= slot <= int(last or first):
                    return int(node["port"])
        raise LookupError(f"no master serves slot {slot}")

    def fail_over(self, port: int) -> None:
        """Kill the master on ``port`` and return once its replica has taken over."""
        self.kill(port)

        def promoted() -> bool:
            for node in self._nodes():
                if node["port"] == port:
                    return "fail" in node["flags"] and not node["slots"]
            return False

        _wait(f"no replica took over from the master on port {port}", promoted, 30)
        _wait("the cluster did not recover", lambda: all(
            "cluster_state:ok" in _command(p, "CLUSTER", "INFO") for p in self.processes
        ), 30)  # fmt: skip

    def rejoin(self, port: int) -> None:
        """Start the node on ``port`` again (it comes back as a replica) and wait until
        the cluster is whole."""
        self.start(port)
        self.wait_healthy()


class PrivateSentinel(_Processes):
    """A master, its replica and three sentinels (quorum 2) that fail over fast."""

    service = "broadcast"

    def __init__(self) -> None:
        super().__init__("broadcast-sentinel-")
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{self.service}/0"

    def _create(self) -> None:
        self.servers = [free_port(), free_port()]
        self.spawn(self.servers[0], "--save", "", "--appendonly", "no")
        self.spawn(self.servers[1], "--save", "", "--appendonly", "no",
                   "--replicaof", "127.0.0.1", str(self.servers[0]))  # fmt: skip
        _wait("the replica did not sync", lambda: "state=online" in _command(
            self.servers[0], "INFO", "replication"))  # fmt: skip
        self.sentinels = [free_port() for _ in range(3)]
        for port in self.sentinels:
            config = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(config, "w") as file:
                file.write(
                    f"sentinel monitor {self.service} 127.0.0.1 {self.servers[0]} 2\n"
                    f"sentinel down-after-milliseconds {self.service} 1000\n"
                    f"sentinel failover-timeout {self.service} 3000\n"
                )
            self.spawn(port, config, "--sentinel")
        _wait("the sentinels did not find each other and the replica", self._watching, 30)

    def _watching(self) -> bool:
        for port in self.sentinels:
            state = _sentinel_master(port, self.service)
            if state.get("num-other-sentinels") != "2" or state.get("num-slaves") != "1":
                return False
        return True

    def master(self) -> int:
        """The port of the master, as the sentinels say."""
        _, port = _command(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def fail_over(self) -> int:
        """Kill the master and return, with the new master's port, once every sentinel
        names the replica and it accepts writes."""
        old = self.master()
        self.kill(old)
        new = next(p for p in self.servers if p != old)

        def switched() -> bool:
            return all(
                int(_command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]) == new
                for s in self.sentinels
            ) and "role:master" in _command(new, "INFO", "replication")

        _wait("the sentinels did not promote the replica", switched, 30)
        return new

    def rejoin(self, port: int) -> None:
        """Start the old master on ``port`` again: the sentinels make it a replica of the
        new master; return once it is in sync."""
        self.start(port)
        master = next(p for p in self.servers if p != port)
        _wait("the old master did not rejoin as a replica", lambda: "state=online" in _command(
            master, "INFO", "replication"), 60)  # fmt: skip
        _wait("the sentinels did not see the replica", self._watching, 30)


def _sentinel_master(port: int, service: str) -> dict[str, str]:
    reply = _command(port, "SENTINEL", "MASTER", service)
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply), 2)}


_shared: dict[str, Any] = {}


def shared_cluster() -> PrivateCluster:
    """The cluster of this test session, started at first use, stopped at exit."""
    if "cluster" not in _shared:
        import atexit

        cluster = _shared["cluster"] = PrivateCluster()
        atexit.register(cluster.stop)
    found: PrivateCluster = _shared["cluster"]
    return found


def shared_sentinel() -> PrivateSentinel:
    """The Sentinel set of this test session, started at first use, stopped at exit."""
    if "sentinel" not in _shared:
        import atexit

        sentinel = _shared["sentinel"] = PrivateSentinel()
        atexit.register(sentinel.stop)
    found: PrivateSentinel = _shared["sentinel"]
    return found


class _TopologyBroker(Broker):
    """A Redis Cluster or Sentinel set the session starts (once, at first use)."""

    #: The test modules it runs in: the contract's suites (a cluster is slow to start
    #: and the rest of the suite tests one server's behaviour).
    suites: ClassVar[frozenset[str] | None] = frozenset(
        {"tests.test_conformance", "tests.test_layers", "tests.test_redis_topologies"}
    )

    def default_options(self) -> dict[str, Any]:
        return {"prefix": PREFIX}

    def reachable(self) -> bool:
        return reachable_binaries()


class RedisClusterBroker(_TopologyBroker):
    name = "redis+cluster"

    def url(self) -> str:
        return shared_cluster().url.replace("redis://", f"{self.name}://", 1)

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        key = bc.backend.key(channel)  # type: ignore[attr-defined]
        port = shared_cluster().master_of(key)
        [_, count] = _command(port, "PUBSUB", "SHARDNUMSUB", key)
        return int(count)


class RedisClusterStreamsBroker(RedisClusterBroker):
    name = "redis+cluster+streams"

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        # One named XREAD connection per slot with channels: count them on the
        # channel's master.
        key = bc.backend.key(channel)  # type: ignore[attr-defined]
        port = shared_cluster().master_of(key)
        name = bc.backend.connection_name("streams")  # type: ignore[attr-defined]
        clients = _command(port, "CLIENT", "LIST").splitlines()
        return sum(1 for line in clients if f" name={name} " in f" {line} ")


class RedisSentinelBroker(_TopologyBroker):
    name = "redis+sentinel"

    def url(self) -> str:
        return shared_sentinel().url.replace("redis+sentinel://", f"{self.name}://", 1)

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        key = bc.backend.key(channel)  # type: ignore[attr-defined]
        [_, count] = _command(shared_sentinel().master(), "PUBSUB", "NUMSUB", key)
        return int(count)


class RedisSentinelStreamsBroker(RedisSentinelBroker):
    name = "redis+sentinel+streams"

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        name = bc.backend.connection_name("streams")  # type: ignore[attr-defined]
        clients = _command(shared_sentinel().master(), "CLIENT", "LIST").splitlines()
        return sum(1 for line in clients if f" name={name} " in f" {line} ")


# NATS ----------------------------------------------------------------------------------

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
#: The subject prefix (and stream) of this run on NATS; the session deletes the stream.
NATS_PREFIX = f"test-broadcast-{PREFIX.split(':')[1]}"


def http_json(url: str, timeout: float = 2) -> Any:
    """GET ``url`` (a NATS monitoring endpoint) and decode its JSON."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


class PrivateNats(PrivateServer):
    """A private nats-server with JetStream, its store in a temp dir (so that
    :meth:`restart` keeps the streams and ``restart(persist=False)`` loses them), and a
    monitoring port (``monitor``) for ``/healthz``, ``/connz``, ``/routez``.

    ``extra`` arguments go on the command line (a cluster's ``--cluster``, ``--routes``).
    """

    binary = "nats-server"

    def __init__(self, *extra: str, name: str = "") -> None:
        self.port = free_port()
        self.monitor = free_port()
        self.dir = tempfile.mkdtemp(prefix="broadcast-nats-")
        self.url = f"nats://127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.name = name or f"n{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_healthy()

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster's nodes are healthy only
        once they see each other)."""
        self.process = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
             "-js", "-sd", self.dir, "--server_name", self.name, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_healthy(self, timeout: float = 20) -> None:
        """Return once ``/healthz`` says ok (JetStream ready), or raise."""
        assert self.process is not None, "the server is not running"
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private nats-server on port {self.port} did not start")
            time.sleep(0.02)

    def healthy(self) -> bool:
        """Whether the server answers, JetStream included (``/healthz``)."""
        try:
            return bool(http_json(f"http://127.0.0.1:{self.monitor}/healthz")["status"] == "ok")
        except (OSError, ValueError, KeyError):
            return False

    def monitoring(self, endpoint: str) -> Any:
        """The JSON of monitoring ``endpoint`` (``"connz?subs=1"``, ``"routez"`` ...)."""
        return http_json(f"http://127.0.0.1:{self.monitor}/{endpoint}")

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
        """SIGSTOP, and return once every thread of the server has stopped (a thread
        busy in the kernel, say in an fsync of the store, stops when it returns)."""
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)
        tasks = f"/proc/{self.process.pid}/task"
        deadline = time.monotonic() + 5
        while not all(_stopped(f"{tasks}/{task}/stat") for task in os.listdir(tasks)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"private nats-server on port {self.port} did not stop")
            time.sleep(0.001)

    def thaw(self) -> None:
        assert self.process is not None, "the server is not running"
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _stopped(stat: str) -> bool:
    """Whether the thread of ``/proc/PID/task/TID/stat`` is stopped (state ``T``)."""
    try:
        with open(stat) as file:
            return file.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except FileNotFoundError:  # the thread ended
        return True


class NatsBroker(_ServerBroker):
    name = "nats"
    shared_url = NATS_URL
    default_port = 4222
    prefix = NATS_PREFIX
    private_server = PrivateNats

    async def subscriptions(self, bc: Broadcast, channel: str) -> int:
        # What the server holds: the stream's live consumers of the channel's subject
        # (JetStream's consumer list, on the shared server and private ones alike).
        backend = bc.backend
        infos = await _nats_consumers(backend)
        subject = backend.subject(channel)  # type: ignore[attr-defined]
        return sum(
            1
            for info in infos
            if info.config.filter_subject == subject and info.name.startswith("live-")
        )

    async def delete_streams(self) -> None:
        """Delete this run's streams on the shared server (named after its prefixes)."""
        import nats

        client = await nats.connect(NATS_URL)
        try:
            jsm = client.jetstream()
            for info in await jsm.streams_info():
                name = info.config.name or ""
                if name.startswith((NATS_PREFIX, PREFIX)):
                    await jsm.delete_stream(name)
        finally:
            await client.close()


async def _nats_consumers(backend: Any) -> list[Any]:
    import nats
    import nats.js.errors

    client = await nats.connect(backend.servers)
    try:
        return list(await client.jetstream().consumers_info(backend.stream))
    except nats.js.errors.NotFoundError:
        return []
    finally:
        await client.close()


#: Every broker the suite runs against, by name.
BROKERS: dict[str, Broker] = {
    broker.name: broker
    for broker in (
        MemoryBroker(),
        RedisPubSubBroker(),
        RedisStreamsBroker(),
        RedisClusterBroker(),
        RedisClusterStreamsBroker(),
        RedisSentinelBroker(),
        RedisSentinelStreamsBroker(),
        NatsBroker(),
    )
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


class PostgresBroker(_ServerBroker):
    name = "postgresql"
    shared_url = POSTGRES_URL
    default_port = 5432
    prefix = PREFIX
    private_server = PrivatePostgres

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
            conn.execute(
                f"DELETE FROM {schema.QUEUED} WHERE starts_with(queue, %s)".encode(), [PREFIX]
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
