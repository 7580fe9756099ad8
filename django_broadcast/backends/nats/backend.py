"""The NATS backend: publishing (sync through one loop thread per process, async
through one connection per event loop) and history."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from ..._loops import at_close, is_throwaway
from ..._timeouts import honour_cancellation, within
from ...exceptions import BroadcastUnavailable
from ..base import Backend, Features, HistoryPage, Receiver
from . import _client, _names
from ._client import MAX_PAYLOAD, NATS_ERRORS, StreamState
from ._names import ORIGIN
from .queues import Queues
from .receiver import NatsReceiver

__all__ = ["NatsBackend"]

T = TypeVar("T")

_STORAGE = {"file": api.StorageType.FILE, "memory": api.StorageType.MEMORY}


class NatsBackend(Backend):
    """NATS with JetStream: history, resume by sequence and loss-free reconnects
    (``nats://``)."""

    features = Features(
        history=True,
        origin=ORIGIN,
        patterns=True,
        id_order="channel",
        max_payload=MAX_PAYLOAD,
        queues=True,
    )
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "prefix": str,
        "stream": str,
        "history": int,
        "max_age": (int, float),
        "replicas": int,
        "storage": str,
    }

    #: Seconds after which the server deletes a consumer nobody listens to (one left
    #: by a process that died, or created by a request that timed out).
    inactive_threshold: ClassVar[float] = 5.0
    #: Seconds between the idle heartbeats of a receiver's consumers; a consumer silent
    #: for three of them is presumed lost (its server went away while the receiver's
    #: stayed), and the receiver connects again and resumes every consumer.
    heartbeat: ClassVar[float] = 10.0

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self.servers = _names.servers(location)
        self.prefix: str = self.options.get("prefix", "broadcast")
        self.stream: str = self.options.get("stream", self.prefix.replace(".", "_"))
        #: The work-queue stream of the alias's queues (the layer's plain channels).
        self.queue_stream = f"{self.stream}_queues"
        self.history_size: int = self.options.get("history", 1000)
        self.max_age: float = self.options.get("max_age", 0)
        self.replicas: int = self.options.get("replicas", 1)
        self.storage: str = self.options.get("storage", "file")
        #: Names this process's consumers.
        self.token = _client.new_token()
        self._safe_servers = ", ".join(_names.safe_url(s) for s in self.servers)
        self._links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Link]
        self._links = weakref.WeakKeyDictionary()
        self._thread: _LoopThread | None = None
        self._thread_lock = threading.Lock()

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        """The base checks, and the prefix, stream name and storage."""
        problems = super().validate_options(options)
        if "prefix" in options and (problem := _names.prefix_problem(options["prefix"])):
            problems.append(problem)
        if "stream" in options and (problem := _names.stream_problem(options["stream"])):
            problems.append(problem)
        storage = options.get("storage", "file")
        if storage not in _STORAGE:
            problems.append(f"option 'storage' must be 'file' or 'memory', not {storage!r}")
        age = options.get("max_age", 1)
        if isinstance(age, float) and age <= 0:
            problems.append(f"option 'max_age' must be positive, not {age!r}")
        return problems

    # Names, settings, errors ---------------------------------------------------------

    def subject(self, channel: str) -> str:
        """The NATS subject of ``channel``."""
        return _names.channel_subject(self.prefix, channel)

    def stream_config(self) -> api.StreamConfig:
        """The JetStream stream of the alias, as OPTIONS describe it."""
        return api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_msgs_per_subject=self.history_size,
            max_age=self.max_age or None,
            max_msg_size=self.max_message_size,
            storage=_STORAGE[self.storage],
            num_replicas=self.replicas,
        )

    def unavailable(
        self, exc: BaseException, *, maybe_sent: bool | None = None
    ) -> BroadcastUnavailable:
        """The error raised when no server can be reached or none answers; for a
        publish, ``maybe_sent`` says whether the server may have got the event."""
        what = {
            None: "",
            False: " The event was not sent.",
            True: " The event may still be delivered: the server got it and may store it.",
        }[maybe_sent]
        reason = str(exc).rstrip(".") or type(exc).__name__
        return BroadcastUnavailable(
            f"NATS at {self._safe_servers} did not answer within {self.timeout} s "
            f"(TIMEOUT): {reason}.{what} Check that the server runs with JetStream "
            f"(-js) and the URL is right.",
            maybe_sent=bool(maybe_sent),
        )

    def misconfigured(self, reason: object) -> BroadcastUnavailable:
        """The error raised when JetStream refuses the alias's stream."""
        return BroadcastUnavailable(
            f"NATS JetStream refused stream {self.stream!r} of prefix {self.prefix!r}: "
            f"{reason}. Check the OPTIONS (history, max_age, replicas, storage, stream).",
            maybe_sent=False,
        )

    async def within(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` at most TIMEOUT; a cancellation that nats-py swallowed
        meanwhile (its requests wait with ``asyncio.wait_for``) is raised again."""
        result = await within(awaitable, self.timeout)
        honour_cancellation()
        return result

    # Publishing ------------------------------------------------------------------------

    coalesces = True

    def publish(self, channel: str, payload: bytes) -> str:
        """Publish on the process's loop thread; return the JetStream sequence as id."""
        return self._sync(lambda link: link.publish(channel, payload), publishing=True)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        """Publish each on the loop thread, in one hop to it: written in order, their
        acknowledgements awaited together."""

        async def publish_all(link: _Link) -> list[str | Exception]:
            outcomes = await asyncio.gather(
                *(link.publish(channel, payload) for channel, payload in items),
                return_exceptions=True,
            )
            return [
                outcome
                if isinstance(outcome, str | Exception)
                else self.unavailable(outcome, maybe_sent=True)
                for outcome in outcomes
            ]

        return self._sync(publish_all, publishing=True)

    async def apublish(self, channel: str, payload: bytes) -> str:
        """Publish on the running loop's connection; return the JetStream sequence."""
        return await self._link().publish(channel, payload)

    def id_key(self, event_id: str) -> tuple[int, int]:
        """Ids sort as ``(stream epoch, sequence)``, each of ASCII digits."""
        return _names.parse_id(event_id)

    # History ----------------------------------------------------------------------------

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read the channel's stored messages on the loop thread."""
        if since is not None:
            _names.parse_id(since)
        return self._sync(lambda link: link.history(channel, limit, since))

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """:meth:`history` from async code."""
        if since is not None:
            _names.parse_id(since)
        return await self._link().history(channel, limit, since)

    # Queues -------------------------------------------------------------------------------

    async def aqueue_put(
        self, queue: str, payload: bytes, *, capacity: int, expires: float
    ) -> bool:
        """Publish to the queue's subject unless it holds ``capacity`` unexpired
        messages (a compare-and-set on the server: see :mod:`.queues`)."""
        return await self._queue(lambda q, c: q.put(c, queue, payload, capacity, expires))

    async def aqueue_take(self, queue: str, *, timeout: float) -> bytes | None:
        """Take one message from the queue's durable consumer."""
        return await self._queue(lambda q, c: q.take(c, queue, timeout))

    async def aqueue_clear(self, queue: str) -> None:
        """Purge the queue's subject."""
        await self._queue(lambda q, c: q.clear(c, queue))

    async def _queue(self, call: Callable[[Queues, Client], Awaitable[T]]) -> T:
        """Run a queue operation on the running loop's connection; from a loop that
        ``async_to_sync`` made for one call, on the loop thread, as sync publishing
        does (a cancellation reaches the operation there)."""
        if not is_throwaway(asyncio.get_running_loop()):
            return await self._link().queue(call)
        thread = self._loop_thread()
        done = asyncio.run_coroutine_threadsafe(thread.link.queue(call), thread.loop)
        return await asyncio.wrap_future(done)

    # Receiving and lifetime -----------------------------------------------------------

    def receiver(self) -> Receiver:
        """A receiver with its own connection for the running loop."""
        return NatsReceiver(self)

    def _link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            link = self._links[loop] = _Link(self, "publish")
            # Closed with its loop: else its pull requests outlive it at the server,
            # and take messages to a connection nobody reads.
            at_close(loop, link.close)
        return link

    def _sync(
        self, call: Callable[[_Link], Coroutine[Any, Any, T]], *, publishing: bool = False
    ) -> T:
        """Run ``call``'s coroutine on the loop thread (started on first use)."""
        thread = self._loop_thread()
        try:
            return thread.run(call(thread.link), 3 * self.timeout + 1)
        except concurrent.futures.TimeoutError as exc:  # bounded below: a safety net
            raise self.unavailable(exc, maybe_sent=True if publishing else None) from exc

    def _loop_thread(self) -> _LoopThread:
        """The loop thread of sync calls, started on first use."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = _LoopThread(_Link(self, "sync"))
            return self._thread

    def close(self) -> None:
        """Stop the loop thread and its connection."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    async def aclose(self) -> None:
        """Close the running loop's connection, then the loop thread."""
        link = self._links.pop(asyncio.get_running_loop(), None)
        if link is not None:
            await link.close()
        self.close()


class _Link:
    """The publishing connection of one event loop: made on first use, and again where
    it dropped; the stream is ensured each time, which gives its epoch."""

    def __init__(self, backend: NatsBackend, role: str) -> None:
        self.backend = backend
        self.role = role
        self.client: Client | None = None
        self.epoch = 0
        self.lock = asyncio.Lock()
        self.queues = Queues(backend)

    async def get(self, *, maybe_sent: bool | None = None) -> tuple[Client, int]:
        async with self.lock:
            client = self.client
            if client is None or not client.is_connected or _client.peer_closed(client):
                await self.close()
                client = await _client.connect(self.backend, self.role)
                try:
                    info = await self.backend.within(_client.ensure_stream(self.backend, client))
                except BaseException as exc:
                    await _client.close(client)
                    if isinstance(exc, NATS_ERRORS):
                        raise self.backend.unavailable(exc, maybe_sent=maybe_sent) from exc
                    raise
                self.client, self.epoch = client, _names.epoch_of(info)
            return client, self.epoch

    async def publish(self, channel: str, payload: bytes) -> str:
        backend = self.backend
        subject = backend.subject(channel)
        client, epoch = await self.get(maybe_sent=False)
        for attempt in (1, 2):
            try:
                ack = await backend.within(
                    client.jetstream().publish(subject, payload, timeout=backend.timeout)
                )
            except nats.js.errors.NoStreamResponseError as exc:  # the stream is gone
                if attempt == 2:
                    raise backend.unavailable(exc, maybe_sent=False) from exc
                epoch = await self._restream(client)
                continue
            except nats.js.errors.APIError as exc:  # answered: refused
                raise backend.unavailable(exc, maybe_sent=False) from exc
            except NATS_ERRORS as exc:
                await self.close()
                raise backend.unavailable(exc, maybe_sent=True) from exc
            return _names.make_id(epoch, ack.seq)
        raise AssertionError("unreachable")

    async def queue(self, call: Callable[[Queues, Client], Awaitable[T]]) -> T:
        """Run a queue operation on the connection, making the queue stream where it
        is missing (and again where it is found gone)."""
        backend = self.backend
        client, _ = await self.get()
        for attempt in (1, 2):
            try:
                await self.queues.ensure(client)
                return await call(self.queues, client)
            except (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError) as exc:
                if attempt == 2:  # (a stream gone, or a consumer deleted with it)
                    raise backend.unavailable(exc) from exc
                self.queues.forget()
            except nats.js.errors.APIError as exc:  # answered: refused
                raise backend.unavailable(exc) from exc
            except NATS_ERRORS as exc:
                await self.close()
                raise backend.unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _restream(self, client: Client) -> int:
        """Make the stream again (a server restarted without its data)."""
        try:
            info = await self.backend.within(_client.ensure_stream(self.backend, client))
        except NATS_ERRORS as exc:
            raise self.backend.unavailable(exc, maybe_sent=False) from exc
        self.epoch = _names.epoch_of(info)
        return self.epoch

    async def history(self, channel: str, limit: int | None, since: str | None) -> HistoryPage:
        backend = self.backend
        client, _ = await self.get()
        subject = backend.subject(channel)
        try:
            info = await backend.within(_client.stream_info(backend, client, subject))
            if info is None:
                return HistoryPage([], gap=since is not None and since != ORIGIN)
            state = StreamState.of(info, subject)
            reason = None
            start = state.first
            if since is not None:
                reason = await backend.within(_client.gap(backend, client, subject, since, state))
                epoch, seq = _names.parse_id(since)
                start = seq + 1 if since == ORIGIN or epoch == state.epoch else 1
            if not state.count or start > state.last:
                return HistoryPage([], gap=reason is not None)
            messages = await _client.read_stored(
                backend, client, channel, epoch=state.epoch, start=start, limit=limit,
                latest=since is None,
            )  # fmt: skip
        except NATS_ERRORS as exc:
            await self.close()
            raise backend.unavailable(exc) from exc
        return HistoryPage(messages, gap=reason is not None)

    async def close(self) -> None:
        client, self.client = self.client, None
        await _client.close(client)


class _LoopThread:
    """The event loop of sync calls: one thread per backend, whose connection every
    thread of the process shares (nats-py is asyncio only)."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="django_broadcast.nats", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # the connection goes with the loop anyway
            self.run(self.link.close(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()
