"""What the NATS backend's parts share: connections, the stream, consumers, reading
a channel's stored messages and proving its continuity."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import select
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from ..._timeouts import within
from ..base import Message
from ._names import ORIGIN, epoch_of, make_id, parse_id

if TYPE_CHECKING:
    from .backend import NatsBackend

logger = logging.getLogger("django_broadcast.backends.nats")

#: Failures that mean "the server cannot be reached or did not answer".
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
#: The NATS server's default ``max_payload`` (1 MiB), the hard payload limit.
MAX_PAYLOAD = 1024 * 1024
_STREAM_IN_USE = 10058  # JetStream: stream name already in use with a different config


# Connections ------------------------------------------------------------------------


async def connect(
    backend: NatsBackend,
    role: str,
    *,
    on_lost: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
) -> Client:
    """A new connection to the first server of the list that answers, within TIMEOUT.

    nats-py's own reconnection is off: a connection that drops is replaced by the
    caller (the hub's reconnect policy for receivers, the next publish for publishers).
    """
    client = Client()
    try:
        await within(
            client.connect(
                servers=backend.servers,
                name=f"django_broadcast:{role}:{backend.prefix}",
                allow_reconnect=False,
                max_reconnect_attempts=1,  # each server of the list at most twice
                reconnect_time_wait=0,
                connect_timeout=max(1, round(backend.timeout)),
                error_cb=on_error or log_error,
                disconnected_cb=on_lost,
                closed_cb=on_lost,
            ),
            backend.timeout,
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await client.close()
        if isinstance(exc, NATS_ERRORS):
            raise backend.unavailable(exc, maybe_sent=False) from exc
        raise
    return client


async def log_error(exc: Exception) -> None:
    """nats-py's asynchronous errors, logged."""
    logger.debug("nats: %s", exc)


def peer_closed(client: Client) -> bool:
    """Whether the server closed the connection though nats-py has not read it yet: a
    request written to it would fail as if the server had got it."""
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    sock = None if writer is None else writer.get_extra_info("socket")
    if sock is None:
        return not client.is_connected
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        # asyncio's TransportSocket cannot recv: peek through a duplicate descriptor.
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def close(client: Client | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()


# The stream ---------------------------------------------------------------------------


async def stream_info(
    backend: NatsBackend, client: Client, subject: str | None = None
) -> api.StreamInfo | None:
    """The stream's info (with ``subject``'s message count), or None where it is gone."""
    try:
        return await client.jetstream().stream_info(backend.stream, subjects_filter=subject)
    except nats.js.errors.NotFoundError:
        return None


async def ensure_stream(backend: NatsBackend, client: Client) -> api.StreamInfo:
    """The stream's info: read, and where the stream is missing created, or where its
    limits differ from the alias's OPTIONS updated (reading first spares a cluster a
    proposal to its meta group on every connection)."""
    jsm = client.jetstream()
    config = backend.stream_config()
    info = await stream_info(backend, client)
    if info is None:
        try:
            return await jsm.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_IN_USE:  # (else made meanwhile by another process)
                raise backend.misconfigured(exc) from exc
        info = await jsm.stream_info(backend.stream)
    if info.config.subjects != config.subjects:
        raise backend.misconfigured(
            f"stream {backend.stream!r} exists for subjects {info.config.subjects}, not "
            f"{config.subjects}; set OPTIONS['stream'] to a name of its own"
        )
    if _same_limits(info.config, config):
        return info
    try:
        return await jsm.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise backend.misconfigured(exc) from exc


def _same_limits(have: api.StreamConfig, want: api.StreamConfig) -> bool:
    return (
        have.max_msgs_per_subject == want.max_msgs_per_subject
        and abs((have.max_age or 0) - (want.max_age or 0)) < 1e-6
        and have.max_msg_size == want.max_msg_size
        and have.storage == want.storage
        and (have.num_replicas or 1) == (want.num_replicas or 1)
    )


@dataclass(frozen=True)
class StreamState:
    """What proving a channel's continuity needs of the stream."""

    epoch: int
    first: int  # the first sequence held
    last: int  # the last sequence given
    count: int  # the channel's messages held
    per_subject: int  # the most messages kept per channel (-1: no limit)

    @classmethod
    def of(cls, info: api.StreamInfo, subject: str) -> StreamState:
        state = info.state
        return cls(
            epoch=epoch_of(info),
            first=state.first_seq,
            last=state.last_seq,
            count=(state.subjects or {}).get(subject, 0),
            per_subject=info.config.max_msgs_per_subject or -1,
        )


async def gap(
    backend: NatsBackend, client: Client, subject: str, position: str, state: StreamState | None
) -> str | None:
    """Why the continuity of ``subject``'s messages after ``position`` cannot be
    proven (``"reset"``, ``"trimmed"``), or None.

    The stream's limits remove a channel's messages oldest first (``history``, per
    channel) or the stream's oldest first (``max_age``). So nothing of the channel
    after sequence S is gone while the message at S is the channel's and still held,
    or while nothing up to S+1 left the stream and the channel holds fewer messages
    than its limit (had one after S been removed for the limit, the channel would
    still hold as many as the limit, all after S). A position of another epoch is
    from a stream made anew since: ``"reset"``.
    """
    epoch, seq = parse_id(position)
    if state is None:  # no stream: nothing was ever published, or it is gone
        return None if position == ORIGIN else "reset"
    if position != ORIGIN and epoch != state.epoch:
        return "reset"
    if seq and state.first <= seq:
        try:
            held = await client.jetstream().get_msg(backend.stream, seq=seq)
        except nats.js.errors.NotFoundError:
            held = None
        if held is not None and held.subject == subject:
            return None
    if state.first <= seq + 1 and (state.per_subject < 0 or state.count < state.per_subject):
        return None
    return "trimmed"


# Consumers -----------------------------------------------------------------------------

_names = itertools.count(1)


def consumer_name(kind: str, token: str) -> str:
    """A consumer name: ``kind`` (``live`` or ``read``), the process's token, a number."""
    return f"{kind}-{token}-{next(_names)}"


def new_token() -> str:
    return secrets.token_hex(4)


async def consume(
    backend: NatsBackend,
    client: Client,
    *,
    name: str,
    subject: str,
    start: int,
    handle: Callable[[Msg], Awaitable[None]],
    heartbeat: float | None = None,
    push: bool = True,
) -> tuple[Any, api.ConsumerInfo]:
    """Subscribe an inbox with ``handle``, then create an ephemeral consumer of
    ``subject`` from sequence ``start``: a push consumer that delivers to the inbox, or
    (``push=False``) a pull consumer whose batches are asked for with the inbox as
    the reply subject; return the inbox's subscription and the consumer's info.
    Within TIMEOUT, or raise ``BroadcastUnavailable`` having undone both (the
    consumer's deletion is sent after its creation, so that a server that runs the
    creation late runs it too).
    """
    inbox = client.new_inbox()
    sub = await client.subscribe(inbox, cb=handle)
    config = api.ConsumerConfig(
        name=name,
        filter_subject=subject,
        deliver_subject=inbox if push else None,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(start, 1),
        ack_policy=api.AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=backend.inactive_threshold,
        idle_heartbeat=heartbeat,
    )
    try:
        info = await within(
            client.jetstream().add_consumer(backend.stream, config, timeout=backend.timeout),
            backend.timeout,
        )
    except BaseException as exc:
        await release(backend, client, sub, name)
        if isinstance(exc, NATS_ERRORS):
            raise backend.unavailable(exc) from exc
        raise
    return sub, info


async def release(backend: NatsBackend, client: Client, sub: Any, name: str) -> None:
    """Unsubscribe ``sub`` and delete consumer ``name``, without waiting for answers."""
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
    with contextlib.suppress(Exception):
        await client.publish(f"$JS.API.CONSUMER.DELETE.{backend.stream}.{name}", b"")


async def read_stored(
    backend: NatsBackend,
    client: Client,
    channel: str,
    *,
    epoch: int,
    start: int,
    limit: int | None,
    latest: bool,
) -> list[Message]:
    """``channel``'s stored messages from sequence ``start``: the first ``limit``, or
    with ``latest`` the last ``limit`` (all where ``limit`` is None)."""
    subject = backend.subject(channel)
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def handle(msg: Msg) -> None:
        received.put_nowait(msg)

    name = consumer_name("read", backend.token)
    sub, info = await consume(
        backend, client, name=name, subject=subject, start=start, handle=handle, push=False
    )
    msgs: list[Msg] = []
    try:
        pending = info.num_pending or 0
        wanted = pending if limit is None or latest else min(pending, limit)
        if wanted:
            request = json.dumps({"batch": wanted, "no_wait": True}).encode()
            next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{backend.stream}.{name}"
            await client.publish(next_subject, request, reply=sub.subject)
        while len(msgs) < wanted:
            msg = await backend.within(received.get())
            if msg.headers and msg.headers.get("Status"):
                break  # no more (trimmed meanwhile): 404, or the request expired
            msgs.append(msg)
    finally:
        await release(backend, client, sub, name)
    if latest and limit is not None:
        msgs = msgs[-limit:] if limit else []
    return [message_of(channel, msg, epoch=epoch) for msg in msgs]


def is_heartbeat(msg: Msg) -> bool:
    """Whether ``msg`` is a consumer's idle heartbeat (status 100), not an event."""
    return bool(msg.headers) and msg.headers.get("Status") == "100"  # type: ignore[union-attr]


def message_of(channel: str, msg: Msg, *, epoch: int, pattern: str | None = None) -> Message:
    """A :class:`Message` of a message a consumer delivered."""
    seq = msg.metadata.sequence.stream
    return Message(channel, make_id(epoch, seq), msg.data, pattern=pattern)
