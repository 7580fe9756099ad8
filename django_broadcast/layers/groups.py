"""The members of one group in this process, sorted once, as they join, into the
channels of this layer (whose mailboxes the group holds) and the others."""

from __future__ import annotations

import math

from .mailboxes import Mailbox

__all__ = ["Group"]


class Group:
    """A group's members here: when each last joined, the mailboxes of the members
    that are channels of this layer, and the other members (another process's
    channels, plain channels), which are sent to."""

    __slots__ = ("boxes", "earliest", "elsewhere", "joined", "only")

    def __init__(self) -> None:
        #: member -> the time of its last ``group_add``.
        self.joined: dict[str, float] = {}
        #: The members that are channels of this layer -> their mailboxes.
        self.boxes: dict[str, Mailbox] = {}
        #: The other members, in the order they joined.
        self.elsewhere: dict[str, None] = {}
        #: No membership joined before this: none can have expired before it has.
        self.earliest = math.inf
        #: The mailbox of the one member, where the group is one channel of this
        #: layer (the usual group of one: a user's, a connection's); else None.
        self.only: Mailbox | None = None

    def __len__(self) -> int:
        return len(self.joined)

    def add(self, member: str, box: Mailbox | None, now: float) -> None:
        """Add ``member`` (again: renew it) at ``now``; ``box`` is its mailbox where it
        is a channel of this layer. Call with the layer's lock held."""
        self.joined[member] = now
        self.earliest = min(self.earliest, now)
        if box is None:
            self.elsewhere[member] = None
        elif member not in self.boxes:
            self.boxes[member] = box
            box.memberships += 1
        self._settle()

    def remove(self, member: str) -> Mailbox | None:
        """Remove ``member``; return its mailbox, if the group held one. Call with the
        layer's lock held."""
        self.joined.pop(member, None)
        self.elsewhere.pop(member, None)
        box = self.boxes.pop(member, None)
        if box is not None:
            box.memberships -= 1
        self._settle()
        return box

    def _settle(self) -> None:
        boxes = self.boxes
        self.only = next(iter(boxes.values())) if len(boxes) == 1 and not self.elsewhere else None

    def expire(self, before: float) -> list[tuple[str, Mailbox | None]]:
        """Remove the members that last joined before ``before`` (``group_expiry``);
        return them with their mailboxes. Call with the layer's lock held."""
        if self.earliest >= before:
            return []
        expired = [member for member, joined in self.joined.items() if joined < before]
        removed = [(member, self.remove(member)) for member in expired]
        self.earliest = min(self.joined.values(), default=math.inf)
        return removed
