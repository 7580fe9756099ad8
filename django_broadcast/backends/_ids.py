"""Event ids made of two numbers, as Redis Streams and the NATS backend write them."""

from __future__ import annotations

__all__ = ["MAX_PART", "parse_pair"]

#: Either number of an id is an unsigned 64-bit number.
MAX_PART = 2**64 - 1
_MAX_DIGITS = len(str(MAX_PART))


def parse_pair(event_id: object, *, backend: str, parts: str, example: str) -> tuple[int, int]:
    """The two numbers of ``<number>-<number>``; a ``ValueError`` that names
    ``backend``, says what the ``parts`` are and gives an ``example`` for anything else."""
    if isinstance(event_id, str):
        first, sep, second = event_id.partition("-")
        if sep and _part(first) and _part(second):
            return int(first), int(second)
    raise ValueError(
        f"{event_id!r} is not an event id of the {backend} backend: expected a stream id, "
        f"{parts}, two decimal numbers of ASCII digits from 0 to {MAX_PART} joined by '-', "
        f"such as {example!r}"
    )


def _part(text: str) -> bool:
    return (
        0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit() and int(text) <= MAX_PART
    )
