"""The PostgreSQL receiver: one LISTEN connection per event loop for every channel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import Notify, sql

from ..base import ConnectionLost, Message, Receiver
from ._severing import overran, sever
from .backend import (
    AFTER,
    BY_ID,
    GAP,
    NEWEST,
    WAIT_PUBLISHERS,
    PostgresBackend,
    lock_key,
)

__all__ = ["PostgresReceiver"]

T = TypeVar("T")


class PostgresReceiver(Receiver):
    """One connection LISTENing to every subscribed channel.

    The listener waits in psycopg's ``notifies()``, in a task of its own; a command
    (LISTEN, UNLISTEN, a read of the table) cancels that wait, which has consumed
    nothing, runs, and lets the listener wait again: notifications that arrive
    meanwhile are kept by psycopg and read first. Events whose payload did not fit in
    the notification are read from the table, in order with the others.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()  # one command (or the wait) at a time
        self.wanted = 0  # commands waiting for the connection
        self.waiting: asyncio.Future[None] | None = None
        self.names: dict[str, str] = {}  # NOTIFY channel -> channel
        self.positions: dict[str, int] = {}  # channel -> last id received
        self.notes: list[Notify] = []  # received, not yet read
        self.ready: list[Message] = []  # read from the table at a reconnect

    async def open(self) -> None:
        self.conn = await self.backend.connect(self.backend.listen_url)

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``work`` on the connection within TIMEOUT (the connection is severed if
        the server does not answer: the listener then reconnects)."""
        self.wanted += 1
        if self.waiting is not None:
            self.waiting.cancel()
        try:
            async with self.lock:
                conn = self.conn
                if conn is None or conn.closed:
                    raise self.backend.unavailable(ConnectionError("not connected"))
                timer = asyncio.get_running_loop().call_later(self.backend.timeout, overran, conn)
                try:
                    return await work(conn)
                except psycopg.OperationalError as exc:
                    raise self.backend.unavailable(exc, url=self.backend.listen_url) from exc
                finally:
                    timer.cancel()
        finally:
            self.wanted -= 1

    async def subscribe(self, channel: str) -> str:
        name = self.backend.notify_name(channel)
        key = self.backend.key(channel)

        async def listen(conn: psycopg.AsyncConnection[Any]) -> int:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            async with conn.transaction():
                # A publisher in flight may have queued its NOTIFY before the LISTEN:
                # wait for it to commit, so that the position covers its event.
                await conn.execute(WAIT_PUBLISHERS.encode(), [lock_key(key)])
                row = await (await conn.execute(NEWEST.encode(), [key])).fetchone()
            assert row is not None
            return int(row[0])

        self.names[name] = channel
        try:
            position = await self._run(listen)
        except BaseException:
            self.names.pop(name, None)  # the connection is severed: nothing LISTENs
            raise
        self.positions[channel] = position
        return str(position)

    async def unsubscribe(self, channel: str) -> None:
        name = self.backend.notify_name(channel)
        self.positions.pop(channel, None)
        if self.names.pop(name, None) is not None:
            await self._run(
                lambda conn: conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(name)))
            )

    async def read(self) -> Sequence[Message]:
        while not self.notes and not self.ready:
            await self._wait()
        messages, self.ready = self.ready, []
        notes, self.notes = self.notes, []
        return messages + await self._messages(notes)

    async def _wait(self) -> None:
        """Wait for notifications, yielding the connection to commands."""
        async with self.lock:
            conn = self.conn
            if conn is None or conn.closed:
                raise ConnectionLost("not connected")
            if self.wanted:
                return  # a command waits for the lock: let it run first
            waiting = self.waiting = asyncio.ensure_future(self._collect(conn))
        try:
            await asyncio.wait([waiting])
        finally:
            waiting.cancel()
            self.waiting = None
        if not waiting.cancelled() and (exc := waiting.exception()) is not None:
            raise ConnectionLost(str(exc)) from exc

    async def _collect(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for note in conn.notifies(stop_after=1):
            self.notes.append(note)

    async def _messages(self, notes: list[Notify]) -> list[Message]:
        """The messages of ``notes``, in order, without those already read; payloads
        too large for a notification are read from the table."""
        entries: list[tuple[str, int, bytes | None]] = []
        for note in notes:
            channel = self.names.get(note.channel)
            if channel is None:
                continue  # unsubscribed meanwhile
            digits, sep, text = note.payload.partition(":")
            entries.append((channel, int(digits), text.encode() if sep else None))
        missing = [number for _, number, payload in entries if payload is None]
        stored: dict[int, bytes] = {}
        if missing:

            async def fetch(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
                return await (await conn.execute(BY_ID.encode(), [missing])).fetchall()

            try:
                stored = {row[0]: bytes(row[1]) for row in await self._run(fetch)}
            except Exception as exc:
                raise ConnectionLost(str(exc)) from exc
        messages = []
        for channel, number, payload in entries:
            if number <= self.positions.get(channel, -1):
                continue  # read from the table at a reconnect already
            self.positions[channel] = number
            if payload is None:
                payload = stored.get(number)
            if payload is None:  # deleted by retention before it could be read
                messages.append(Message(channel, "", b"", gap="trimmed"))
                continue
            messages.append(Message(channel, str(number), payload))
        return messages

    async def reconnect(self) -> set[str]:
        await self.close()
        self.conn = await self.backend.connect(self.backend.listen_url)
        names = dict(self.names)
        positions = dict(self.positions)
        key = self.backend.key

        async def resume(conn: psycopg.AsyncConnection[Any]) -> tuple[set[str], list[Message]]:
            lost: set[str] = set()
            missed: list[Message] = []
            for name in names:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            for channel, position in positions.items():
                params = [key(channel), position, position, position, position]
                async with conn.transaction():
                    # Wait for the publishers of the channel that are in flight: one
                    # that queued its NOTIFY before the LISTEN but commits later is
                    # neither notified nor yet visible to a read.
                    await conn.execute(WAIT_PUBLISHERS.encode(), [lock_key(key(channel))])
                    [reason] = await (await conn.execute(GAP.encode(), params)).fetchone() or [None]
                    if reason == "reset":
                        position = 0  # a new table: read all of it
                    rows = await (
                        await conn.execute(AFTER.encode(), [key(channel), position, None])
                    ).fetchall()
                if reason is not None:
                    lost.add(channel)
                missed.extend(Message(channel, str(row[0]), bytes(row[1])) for row in rows)
                self.positions[channel] = rows[-1][0] if rows else position
            return lost, missed

        lost, missed = await self._run(resume)
        self.ready.extend(missed)
        return lost

    async def close(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            sever(conn)  # a frozen server would not answer the goodbye
            await conn.close()
