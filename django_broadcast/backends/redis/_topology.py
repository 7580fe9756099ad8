"""Where a Redis backend's commands go: one server (``redis://``), the master a Sentinel
quorum names (``redis+sentinel://``), or the master of each key's slot in a Cluster
(``redis+cluster://``). The backends ask their topology for clients, pools and fresh
connections by key, and never tell the three apart otherwise."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import key_slot
from redis.retry import Retry

from ..._loops import at_close

__all__ = ["Address", "Cluster", "Sentinel", "Server", "topology"]

#: A node's ``(host, port)``.
Address = tuple[str, int]
#: The client keyword arguments of a backend, for sockets with this timeout.
Kwargs = Callable[[float | None], dict[str, Any]]


def _sync_retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def _async_retry() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


class Server:
    """One server at a redis-py URL (``redis://``, ``rediss://``, ``unix://``)."""

    def __init__(self, url: str, kwargs: Kwargs, timeout: float) -> None:
        self.url = url
        self.kwargs = kwargs
        self.timeout = timeout
        self._sync: redis.Redis | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
        self._async = weakref.WeakKeyDictionary()

    # Sync --------------------------------------------------------------------------

    def _new_sync(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, retry=_sync_retry(), **self.kwargs(self.timeout))

    @property
    def sync_client(self) -> Any:
        """The process's sync client; its pools are shared by every thread."""
        client = self._sync
        if client is None:
            client = self._sync = self._new_sync()
        return client

    def sync_for(self, key: str) -> redis.Redis:
        """The sync client of the server that holds ``key``."""
        client: redis.Redis = self.sync_client
        return client

    def refresh(self) -> None:
        """Learn again where keys live (after a MOVED or a lost node)."""

    # Async -------------------------------------------------------------------------

    def _new_async(self) -> Any:
        return redis.asyncio.Redis.from_url(self.url, retry=_async_retry(), **self.kwargs(None))

    def async_client(self) -> Any:
        """The running event loop's client (no socket timeouts: callers bound each
        exchange themselves)."""
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = self._new_async()
            at_close(loop, partial(self._close_loop, loop))  # a throwaway loop's too
        return client

    async def async_for(self, key: str) -> redis.asyncio.Redis:
        """The running loop's client of the server that holds ``key``."""
        client: redis.asyncio.Redis = self.async_client()
        return client

    async def arefresh(self) -> None:
        """:meth:`refresh` from async code."""

    async def locate(self, key: str) -> Address | None:
        """The node that holds ``key`` (None: there is one server)."""
        return None

    def make_connection(self, name: str, node: Address | None) -> AbstractConnection:
        """A new, unconnected asyncio connection named ``name`` (to ``node``), never
        auto-retried, without socket timeouts."""
        pool = redis.asyncio.ConnectionPool.from_url(
            self.url, client_name=name, retry=AsyncRetry(NoBackoff(), 0), **self.kwargs(None)
        )
        return pool.make_connection()

    # Lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect the sync clients."""
        client, self._sync = self._sync, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the running loop's clients."""
        await self._close_loop(asyncio.get_running_loop())

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the clients of ``loop`` (running it)."""
        client = self._async.pop(loop, None)
        if client is not None:
            await client.aclose()


class Sentinel(Server):
    """The master that a Sentinel quorum names (``redis+sentinel://``).

    URL: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``,
    the password being the data servers'. Every new connection asks the sentinels
    for the master's address, so a failover is followed at the next connection.
    """

    def __init__(self, url: str, kwargs: Kwargs, timeout: float) -> None:
        super().__init__(url, kwargs, timeout)
        parts = urlsplit(url)
        hosts, _, _ = parts.netloc.rpartition("@")[2].partition("?")
        path = [p for p in parts.path.split("/") if p]
        if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(
                f"a Sentinel URL with sentinels {hosts!r} and path {parts.path!r}: expected "
                f"'redis+sentinel://host:port[,host:port...]/service_name[/db]'"
            )
        self.sentinels: list[Address] = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(
                    f"sentinel {host!r} of a Sentinel URL must be 'host:port', such as "
                    f"'127.0.0.1:26379'"
                )
            self.sentinels.append((name, int(port)))
        self.service = unquote(path[0])
        self.server_kwargs: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
        if parts.password is not None:
            self.server_kwargs["password"] = unquote(parts.password)
        if parts.username:
            self.server_kwargs["username"] = unquote(parts.username)
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]]
        self._pools = weakref.WeakKeyDictionary()

    def _sentinel_kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {"socket_timeout": timeout, "socket_connect_timeout": self.timeout}

    def _new_sync(self) -> redis.Redis:
        manager = redis.sentinel.Sentinel(
            self.sentinels,
            sentinel_kwargs=self._sentinel_kwargs(self.timeout),
            **self.server_kwargs,
            **self.kwargs(self.timeout),
        )
        client: redis.Redis = manager.master_for(self.service, retry=_sync_retry())
        return client

    def _new_async(self) -> Any:
        manager = redis.asyncio.sentinel.Sentinel(
            self.sentinels,
            sentinel_kwargs=self._sentinel_kwargs(self.timeout),
            **self.server_kwargs,
            **self.kwargs(None),
        )
        client = manager.master_for(self.service, retry=_async_retry())
        client.sentinel_manager = manager  # closed with it (see aclose)
        return client

    def make_connection(self, name: str, node: Address | None) -> AbstractConnection:
        client = self.async_client()
        # A Sentinel connection reaches its master through its pool: keep one per name.
        pools = self._pools.setdefault(asyncio.get_running_loop(), {})
        pool = pools.get(name)
        if pool is None:
            pool = pools[name] = redis.asyncio.sentinel.SentinelConnectionPool(
                self.service,
                client.sentinel_manager,
                client_name=name,
                retry=AsyncRetry(NoBackoff(), 0),
                **self.server_kwargs,
                **self.kwargs(None),
            )
        connection: AbstractConnection = pool.make_connection()
        return connection

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pools.pop(loop, None)
        client = self._async.get(loop)
        await super()._close_loop(loop)
        if client is not None:
            await client.sentinel_manager.aclose()


class Cluster(Server):
    """The master of each key's slot in a Redis Cluster (``redis+cluster://``).

    URL: ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``, one node
    or more of the cluster (the others are discovered; list several, so that the
    backend can start while one is down). redis-py's cluster clients keep the slot
    map; the commands themselves go to a plain client of the node that holds the
    key, so that they are sent once (the backend says whether a failed one may have
    run).
    """

    def __init__(self, url: str, kwargs: Kwargs, timeout: float) -> None:
        scheme, _, rest = url.partition("://")
        userinfo, at, hostpath = rest.rpartition("@")
        hosts, slash, path = hostpath.partition("/")
        self.startup: list[Address] = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(
                    f"node {host!r} of a Redis Cluster URL must be 'host:port', such as "
                    f"'127.0.0.1:7000'"
                )
            self.startup.append((name, int(port)))
        first = f"{scheme}://{userinfo}{at}{hosts.split(',')[0]}{slash}{path}"
        super().__init__(first, kwargs, timeout)
        self.node_kwargs = parse_url(first)
        self._nodes: dict[Address, redis.Redis] = {}
        self._async_nodes: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Address, redis.asyncio.Redis]
        ]
        self._async_nodes = weakref.WeakKeyDictionary()

    def _cluster_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.node_kwargs.items() if k not in ("host", "port", "db")}

    def _new_sync(self) -> Any:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in self.startup],
            **self._cluster_kwargs(),
            **self.kwargs(self.timeout),
        )

    def _new_async(self) -> Any:
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in self.startup],
            **self._cluster_kwargs(),
            **self.kwargs(None),
        )

    def _node_kwargs(self, node: Address) -> dict[str, Any]:
        return {**self.node_kwargs, "host": node[0], "port": node[1]}

    def sync_for(self, key: str) -> redis.Redis:
        found = self.sync_client.get_node_from_key(key)
        node = (found.host, found.port)
        client = self._nodes.get(node)
        if client is None:  # (another thread may make one too: the first one stays)
            client = self._nodes.setdefault(
                node,
                redis.Redis(
                    retry=_sync_retry(), **self._node_kwargs(node), **self.kwargs(self.timeout)
                ),
            )
        return client

    def refresh(self) -> None:
        self.sync_client.nodes_manager.initialize()

    async def _cluster(self) -> Any:
        return await self.async_client().initialize()  # once: it loads the slot map

    async def locate(self, key: str) -> Address:
        found = (await self._cluster()).get_node_from_key(key)
        return found.host, found.port

    async def async_for(self, key: str) -> redis.asyncio.Redis:
        node = await self.locate(key)
        clients = self._async_nodes.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(node)
        if client is None:
            client = clients[node] = redis.asyncio.Redis(
                retry=_async_retry(), **self._node_kwargs(node), **self.kwargs(None)
            )
        return client

    async def arefresh(self) -> None:
        await (await self._cluster()).nodes_manager.initialize()

    @staticmethod
    def slot(key: str) -> int:
        """The hash slot of ``key``."""
        slot: int = key_slot(key.encode())
        return slot

    def make_connection(self, name: str, node: Address | None) -> AbstractConnection:
        assert node is not None, "a cluster connection goes to a node"
        pool = redis.asyncio.ConnectionPool(
            client_name=name,
            retry=AsyncRetry(NoBackoff(), 0),
            **self._node_kwargs(node),
            **self.kwargs(None),
        )
        return pool.make_connection()

    def close(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for client in nodes.values():
            client.close()
        super().close()

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        for client in self._async_nodes.pop(loop, {}).values():
            await client.aclose()
        await super()._close_loop(loop)


def topology(scheme: str, url: str, kwargs: Kwargs, timeout: float) -> Server:
    """The topology of a URL scheme's ``+sentinel`` / ``+cluster`` part."""
    words = scheme.lower().split("+")
    base = words[0] + "://" + url.partition("://")[2]
    if "sentinel" in words:
        return Sentinel(base, kwargs, timeout)
    if "cluster" in words:
        return Cluster(base, kwargs, timeout)
    return Server(base, kwargs, timeout)
