"""The counters of one alias in this process."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counters"]


@dataclass
class Counters:
    """What happened to one alias's events in this process."""

    #: Events dropped, over all the alias's subscribers, because one fell behind.
    dropped: int = 0
    #: Events published in a transaction that could not be sent at its commit.
    failed_publishes: int = 0
