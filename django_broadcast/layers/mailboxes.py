"""The local queue of one channel: its messages with their expiry, and the receivers
waiting for them, on whatever event loop they wait."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..events import Event
from .messages import member_message

__all__ = ["Entry", "Handed", "Mailbox", "running_loop"]

#: A queued message: (expires, what was queued, how to make the receiver's message of
#: it): None where the queued message is the receiver's own already, else a function
#: of what was queued (a group's message is copied, or built from its event, as it is
#: taken, so that the copies live only while a consumer holds them).
Entry = tuple[float, Any, Callable[[Any], dict[str, Any]] | None]
#: What a waiting receiver is handed: an entry, the event of a group of one (its
#: message built from it with :func:`member_message`), or None where it is to look
#: at the queue again.
Handed = Entry | Event | None


class Mailbox:
    """The local queue of one channel: messages with their expiry, and waiters.

    ``memberships`` counts the groups the channel is a member of: a mailbox is kept
    while it has any, so that a group's router holds its members' mailboxes and a
    member's mailbox is not made anew each time it is emptied.
    """

    __slots__ = ("capacity", "memberships", "messages", "reader", "waiters")

    def __init__(self, capacity: int, reader: str) -> None:
        self.capacity = capacity
        #: The broadcast channel of the inbox that serves this channel.
        self.reader = reader
        self.memberships = 0
        #: The queue, made as the first message is queued (a deque is 760 bytes; most
        #: messages go straight to a waiting receiver): until then an empty tuple.
        self.messages: deque[Entry] | tuple[()] = ()
        #: Receivers waiting, first first (a list: there is seldom more than one).
        #: Each future's result is what it is handed (:data:`Handed`).
        self.waiters: list[asyncio.Future[Handed]] = []

    @property
    def idle(self) -> bool:
        """In no group, no message queued and no receiver waiting: nothing to keep it
        for."""
        return (
            not self.memberships
            and not self.messages
            and (not self.waiters or all(waiter.done() for waiter in self.waiters))
        )

    def put_event(
        self, expires: float, event: Event, running: asyncio.AbstractEventLoop | None
    ) -> int:
        """Queue a group's ``event`` for its one member, whose message is built from it
        as it is taken; or, while the queue is empty, hand the event itself to the first
        receiver waiting on ``running`` (the usual delivery to a group of one: no entry
        is made for it). Return how many were dropped, as :meth:`put`."""
        if not self.messages:
            waiters = self.waiters
            while waiters:
                waiter = waiters[0]
                if waiter.done():
                    del waiters[0]
                    continue
                if waiter.get_loop() is running:
                    del waiters[0]
                    waiter.set_result(event)
                    return 0
                break
        return self.put(((expires, event, member_message),), running)

    def put(self, entries: Sequence[Entry], running: asyncio.AbstractEventLoop | None) -> int:
        """Queue ``entries``, in order, or hand them straight to the receivers
        waiting on the running loop ``running`` while the queue is empty; return how
        many were dropped because the queue was full. Call with the layer's lock
        held."""
        messages = self.messages
        count = len(entries)
        handed = 0
        if not messages:
            waiters = self.waiters
            while waiters and handed < count:
                waiter = waiters[0]
                if waiter.done():
                    del waiters[0]
                elif waiter.get_loop() is running:
                    del waiters[0]
                    waiter.set_result(entries[handed])
                    handed += 1
                else:  # a receiver on another loop is woken to look at the queue
                    break
            if handed == count:
                return 0
            if handed:
                entries = entries[handed:]
                count -= handed
        room = self.capacity - len(messages)
        if room <= 0:
            return count
        self.queue().extend(entries if room >= count else entries[:room])
        if self.waiters:
            self.wake(running, min(count, room))
        return max(count - room, 0)

    def queue(self) -> deque[Entry]:
        """The queue, made if it is not yet."""
        messages = self.messages
        if isinstance(messages, deque):
            return messages
        queue: deque[Entry] = deque()
        self.messages = queue
        return queue

    def wake_all(self) -> None:
        running = running_loop()
        while self.waiters:
            self.wake_one(running)

    def wake(self, running: asyncio.AbstractEventLoop | None, count: int) -> None:
        """Wake up to ``count`` receivers (one per message just queued)."""
        self.wake_one(running)
        while count > 1 and self.waiters:
            count -= 1
            self.wake_one(running)

    def wake_one(self, running: asyncio.AbstractEventLoop | None) -> None:
        """Wake the first receiver still waiting; ``running`` is the running loop
        (None outside one), passed in so that a router waking thousands looks it up
        once."""
        while self.waiters:
            waiter = self.waiters.pop(0)
            if waiter.done():
                continue
            loop = waiter.get_loop()
            if running is loop:
                waiter.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, waiter)
            return


def _resolve(waiter: asyncio.Future[Handed]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
