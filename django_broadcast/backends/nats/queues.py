"""Work queues of the NATS backend: one JetStream work-queue stream per alias, a subject
per queue, a durable pull consumer per queue shared by every process.

The stream is ``<stream>_queues`` (retention ``workqueue``: a message is removed once
acknowledged), for the subjects ``<prefix>+queues.>``; a queue's subject is made of its
name as a channel's is. Each message carries its expiry (a ``time.time()`` value) in
the header ``Broadcast-Expires``.

**Put** is a compare-and-set on the server: read the queue's last sequence, then its
message count; refuse when the count reaches the capacity, else publish with
``Nats-Expected-Last-Subject-Sequence`` set to that last sequence, which JetStream
refuses where another message joined the queue meanwhile (the put then reads again).
So a queue never holds more than its capacity, whatever the number of processes
putting, and each queue may have a capacity of its own (JetStream's own per-subject
limit is one number for the whole stream). Expired messages take no room: a put that
finds the queue full first deletes the expired messages at its head (messages of a
queue expire in the order they were put where, as in the layer, every put gives the
same time to live), then counts again. After a put, the connection remembers the
queue's last sequence and a count that can only be too high (takes lower the real
one): the next put publishes at once against that sequence, one round trip, and reads
again only where the count reaches the capacity or JetStream refuses the sequence
(another process put, or the queue was emptied).

**Take** asks the queue's durable consumer for one message (a pull request whose
``expires`` is the time left), on an inbox of its own; an expired message is
acknowledged (so removed) and skipped. The message is acknowledged (and the server's
answer awaited) before it is returned. A taker cancelled while its request is out
leaves the inbox in place until the request ends: a message delivered to it then is
negatively acknowledged, so the server hands it out again before the later ones. A
taker cancelled while acknowledging puts the message back at the tail once the
acknowledgement is through (it is not lost, but no longer first). A process that
dies holding a message it has not acknowledged loses nothing either: the server
hands it out again after ``ack_wait``.

**Clear** purges the queue's subject. A consumer nobody has asked for a message for
``inactive_threshold`` seconds is deleted by the server, and made again by the next
take.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from . import _names
from ._client import logger

if TYPE_CHECKING:
    from .backend import NatsBackend

__all__ = ["EXPIRES", "Queues", "queue_stream_config"]

#: The header that holds a message's expiry (a ``time.time()`` value).
EXPIRES = "Broadcast-Expires"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071  # JetStream: the expected last subject sequence differs
_NO_MESSAGE = 10037  # JetStream: no message found
_STREAM_IN_USE = 10058  # JetStream: stream name already in use
#: Seconds before the server hands out again a message a dead process held.
ACK_WAIT = 30.0
#: Pull requests a queue's consumer keeps waiting at once (JetStream's default); one
#: more is refused.
MAX_WAITING = 512
#: Seconds without takers after which the server deletes a queue's consumer (a take
#: after half of it makes the consumer again, in case).
CONSUMER_IDLE = 3600.0
#: Seconds after a pull request's end by which the server has said it ended (else the
#: consumer is gone, and is made again).
_SILENCE = 1.0
#: Seconds before a pull request the consumer refused is made again.
_PAUSE = 0.1


def queue_root(prefix: str) -> str:
    """The first token(s) of the alias's queue subjects (``+`` is in no prefix, so
    these subjects never overlap another alias's channels)."""
    return f"{prefix}+queues"


def queue_stream_config(backend: NatsBackend) -> api.StreamConfig:
    """The alias's work-queue stream, as OPTIONS describe it."""
    return api.StreamConfig(
        name=backend.queue_stream,
        subjects=[f"{queue_root(backend.prefix)}.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.OLD,
        max_msg_size=backend.max_message_size,
        storage=backend.stream_config().storage,
        num_replicas=backend.replicas,
    )


def _consumer_name(subject: str) -> str:
    # Consumer names are one token: a digest of the subject, unique per queue.
    return "q-" + hashlib.sha256(subject.encode()).hexdigest()[:40]


def _expiry(msg: Msg | api.RawStreamMsg) -> float:
    headers = msg.headers or {}
    return float(headers.get(EXPIRES, "inf"))


class Queues:
    """The queue operations of one connection (one event loop's)."""

    def __init__(self, backend: NatsBackend) -> None:
        self.backend = backend
        self.client: Client | None = None  # the connection the stream was ensured on
        #: The consumers made (or found) on it, and when each was last asked.
        self.consumers: dict[str, float] = {}
        #: Inboxes kept for the requests of cancelled takers; messages given back.
        self._leftovers: set[asyncio.Task[Any]] = set()
        #: Subject -> (its last sequence, at least its message count), after a put.
        self._known: dict[str, tuple[int, int]] = {}

    def subject(self, queue: str) -> str:
        """The subject of ``queue``."""
        return _names.channel_subject(queue_root(self.backend.prefix), queue)

    async def ensure(self, client: Client) -> None:
        """Make the stream where it is missing (once per connection, and again where
        a request finds it gone)."""
        if self.client is client:
            return
        backend = self.backend
        jsm = client.jetstream()
        config = queue_stream_config(backend)
        try:
            info = await backend.within(jsm.stream_info(backend.queue_stream))
        except nats.js.errors.NotFoundError:
            try:
                info = await backend.within(jsm.add_stream(config))
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _STREAM_IN_USE:  # (else made meanwhile by another)
                    raise backend.misconfigured(exc) from exc
                info = await backend.within(jsm.stream_info(backend.queue_stream))
        if info.config.subjects != config.subjects:
            raise backend.misconfigured(
                f"stream {backend.queue_stream!r} exists for subjects "
                f"{info.config.subjects}, not {config.subjects}; set OPTIONS['stream'] to "
                f"a name of its own"
            )
        self.client = client
        self.consumers.clear()
        self._known.clear()

    def forget(self) -> None:
        """Ensure the stream again on the next call (it was found gone)."""
        self.client = None

    # Put ----------------------------------------------------------------------------

    async def put(
        self, client: Client, queue: str, payload: bytes, capacity: int, expires: float
    ) -> bool:
        """Append unless ``queue`` holds ``capacity`` unexpired messages (see the
        module's docstring for how)."""
        backend = self.backend
        subject = self.subject(queue)
        js = client.jetstream()
        swept = False
        known = self._known.pop(subject, None)
        while True:
            if known is not None and known[1] < capacity:
                last, count = known  # (the count may be too high, never too low)
            else:
                last, count = await self._read(client, subject)
                if count >= capacity:
                    if swept or not await self._sweep(client, subject):
                        return False
                    swept = True
                    continue
            known = None
            headers = {EXPIRES: repr(expires), _EXPECTED_LAST: str(last)}
            try:
                ack = await backend.within(
                    js.publish(subject, payload, timeout=backend.timeout, headers=headers)
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    continue  # another put (or a take) came first: read again
                raise
            self._known[subject] = (ack.seq, count + 1)
            return True

    async def _read(self, client: Client, subject: str) -> tuple[int, int]:
        """The last sequence and the message count of ``subject``, as the server has
        them."""
        backend = self.backend
        js = client.jetstream()
        try:
            last = (await backend.within(js.get_last_msg(backend.queue_stream, subject))).seq
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != _NO_MESSAGE:
                raise
            last = 0
        info = await backend.within(js.stream_info(backend.queue_stream, subjects_filter=subject))
        return last or 0, (info.state.subjects or {}).get(subject, 0)

    async def _sweep(self, client: Client, subject: str) -> bool:
        """Delete the expired messages at the head of ``subject``; return whether any
        were."""
        backend = self.backend
        js = client.jetstream()
        now = time.time()
        seq, deleted = 1, False
        while True:
            try:
                msg = await backend.within(
                    js.get_msg(backend.queue_stream, seq=seq, subject=subject, next=True)
                )
            except nats.js.errors.NotFoundError:
                return deleted
            if _expiry(msg) >= now:
                return deleted
            assert msg.seq is not None, "JetStream gives every stored message's sequence"
            with contextlib.suppress(nats.js.errors.NotFoundError):  # (taken meanwhile)
                await backend.within(js.delete_msg(backend.queue_stream, msg.seq))
            deleted = True
            seq = msg.seq + 1

    # Take ---------------------------------------------------------------------------

    async def take(self, client: Client, queue: str, timeout: float) -> bytes | None:
        """The oldest unexpired message of ``queue``, acknowledged; None after
        ``timeout`` seconds."""
        subject = self.subject(queue)
        name = _consumer_name(subject)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if self.consumers.get(name, -CONSUMER_IDLE) < loop.time() - CONSUMER_IDLE / 2:
                await self._consumer(client, subject, name)  # (may be gone: idle)
            self.consumers[name] = loop.time()
            msg = await self._next(client, name, remaining)
            if msg is None:
                continue  # the request ended (or found no consumer): ask again
            if _expiry(msg) < time.time():
                await msg.ack()  # removed, never taken
                continue
            await self._ack(client, subject, msg)
            return msg.data

    async def _consumer(self, client: Client, subject: str, name: str) -> None:
        backend = self.backend
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            inactive_threshold=CONSUMER_IDLE,
            max_waiting=MAX_WAITING,
        )
        js = client.jetstream()
        await backend.within(js.add_consumer(backend.queue_stream, config, timeout=backend.timeout))

    async def _next(self, client: Client, name: str, remaining: float) -> Msg | None:
        """One message of consumer ``name``, or None where the request ended without."""
        backend = self.backend
        loop = asyncio.get_running_loop()
        got: asyncio.Future[Msg | None] = loop.create_future()
        sub: Any = None
        ended: list[str] = []  # the status the request ended with

        async def handle(msg: Msg) -> None:
            status = msg.headers.get("Status") if msg.headers else None
            if status == "100":
                return  # a heartbeat
            if status is None and got.done():
                await msg.nak()  # its taker is gone: the server hands it out again
            elif status is None:
                got.set_result(msg)
            else:
                ended.append(status)
                if not got.done():
                    got.set_result(None)
            await _unsubscribe(sub)

        sub = await client.subscribe(client.new_inbox(), cb=handle)
        request = json.dumps({"batch": 1, "expires": int(remaining * 1e9)}).encode()
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{backend.queue_stream}.{name}"
        try:
            await client.publish(next_subject, request, reply=sub.subject)
            msg = await asyncio.wait_for(asyncio.shield(got), remaining + _SILENCE)
        except asyncio.CancelledError:
            if got.done() and not got.cancelled() and (msg := got.result()) is not None:
                self._keep(msg.nak())  # handed over as the taker was cancelled
            else:
                got.cancel()  # what comes now is nak'ed, until the request ends
                self._keep(_unsubscribe(sub, after=remaining + backend.timeout))
            raise
        except asyncio.TimeoutError:
            # Not even the end of the request was heard: the consumer is gone (the
            # server's API takes requests to a missing one and never answers them).
            self.consumers.pop(name, None)
            got.cancel()
            self._keep(_unsubscribe(sub, after=backend.timeout))
            return None
        except BaseException:
            got.cancel()
            await _unsubscribe(sub)
            raise
        if msg is None and ended[:1] != ["408"]:
            # Refused rather than expired (409: too many requests waiting, or the
            # consumer deleted meanwhile): ask again after a pause, not at once.
            await asyncio.sleep(min(_PAUSE, remaining))
        return msg

    async def _ack(self, client: Client, subject: str, msg: Msg) -> None:
        """Acknowledge ``msg`` (and await the server's answer); a taker cancelled
        meanwhile puts the message back at the tail once acknowledged."""
        backend = self.backend
        acking = asyncio.ensure_future(msg.ack_sync(timeout=backend.timeout))
        try:
            await asyncio.shield(acking)
        except asyncio.CancelledError:
            acking.add_done_callback(lambda done: self._put_back(client, subject, msg, done))
            raise

    def _put_back(self, client: Client, subject: str, msg: Msg, acked: asyncio.Future[Any]) -> None:
        if acked.cancelled() or acked.exception() is not None:
            return  # not acknowledged: the server hands it out again after ack_wait
        headers = {EXPIRES: (msg.headers or {}).get(EXPIRES, "inf")}

        async def put_back() -> None:
            try:
                await client.jetstream().publish(subject, msg.data, headers=headers)
            except Exception:
                logger.error("a message taken for a cancelled reader of %r was lost", subject)

        self._keep(put_back())

    def _keep(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._leftovers.add(task)
        task.add_done_callback(self._leftovers.discard)

    # Clear --------------------------------------------------------------------------

    async def clear(self, client: Client, queue: str) -> None:
        """Purge ``queue``'s subject."""
        backend = self.backend
        js = client.jetstream()
        subject = self.subject(queue)
        self._known.pop(subject, None)
        await backend.within(js.purge_stream(backend.queue_stream, subject=subject))


async def _unsubscribe(sub: Any, *, after: float = 0) -> None:
    if after:
        await asyncio.sleep(after)
    with contextlib.suppress(Exception):  # (already unsubscribed, or the connection gone)
        await sub.unsubscribe()
