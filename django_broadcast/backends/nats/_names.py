"""Names and ids of the NATS backend: the server list, channel names as subjects,
patterns as subject filters, and event ids."""

from __future__ import annotations

import datetime
import fnmatch
import re
from urllib.parse import urlsplit, urlunsplit

from nats.js import api

from .._ids import parse_pair

#: The position before anything: resuming from it reads a channel from its start.
ORIGIN = "0-0"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


# Servers and names ------------------------------------------------------------------


def servers(location: str) -> list[str]:
    """The server URLs of ``location``: ``nats://a:4222`` or a comma-separated list
    (``nats://a:4222,b:4222`` or ``nats://a:4222,nats://b:4222``)."""
    found = []
    for part in location.split(","):
        part = part.strip()
        if part:
            found.append(part if "://" in part else f"nats://{part}")
    return found


def safe_url(url: str) -> str:
    """``url`` without its password (or token), for error messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-:]+")


def prefix_problem(prefix: object) -> str | None:
    """Why ``prefix`` cannot start subjects, or None."""
    if isinstance(prefix, str) and all(_TOKEN_RE.fullmatch(t) for t in prefix.split(".")):
        return None
    return (
        f"option 'prefix' must be one or more dot-separated words of ASCII letters, "
        f"digits, '-', '_' or ':' (such as 'broadcast' or 'site.events'), not {prefix!r}"
    )


def stream_problem(name: object) -> str | None:
    """Why ``name`` cannot name a JetStream stream, or None."""
    if isinstance(name, str) and _TOKEN_RE.fullmatch(name):
        return None
    return f"option 'stream' must be ASCII letters, digits, '-', '_' or ':', not {name!r}"


def _token(text: str) -> str:
    # '_' is the escape: '_' doubles, and an empty token (from '..', a leading or a
    # trailing '.') becomes a lone '_', which no escaped token can be.
    return text.replace("_", "__") if text else "_"


def _untoken(token: str) -> str:
    return "" if token == "_" else token.replace("__", "_")


def channel_subject(prefix: str, channel: str) -> str:
    """The subject of ``channel``: each dot-separated part a token of its own, escaped
    so that every channel name is a valid subject and no two share one."""
    return prefix + "." + ".".join(_token(t) for t in channel.split("."))


def subject_channel(prefix: str, subject: str) -> str:
    """The channel of a subject made by :func:`channel_subject`."""
    return ".".join(_untoken(t) for t in subject[len(prefix) + 1 :].split("."))


def pattern_filter(prefix: str, pattern: str) -> str:
    """The subject filter that covers ``pattern``: its literal parts up to the first
    with ``*`` or ``?``, then ``>``. NATS wildcards match whole tokens and ours any
    run of characters, dots included, so the filter may be wider than the pattern:
    :func:`matches` decides."""
    literal: list[str] = []
    for part in pattern.split("."):
        if "*" in part or "?" in part:
            return ".".join([prefix, *literal, ">"])
        literal.append(_token(part))
    return ".".join([prefix, *literal])


def matches(channel: str, pattern: str) -> bool:
    """Whether ``channel`` matches the shell-style ``pattern`` (``*`` any run of
    characters, dots included; ``?`` one character)."""
    return fnmatch.fnmatchcase(channel, pattern)


# Ids ----------------------------------------------------------------------------------


def epoch_of(info: api.StreamInfo) -> int:
    """The stream's creation time in microseconds: it tells a stream made anew (a
    restart without its data) from the one an id was read from."""
    created = info.created
    assert created is not None, "JetStream returns every stream's creation time"
    return (created - _EPOCH) // datetime.timedelta(microseconds=1)


def make_id(epoch: int, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_id(event_id: object) -> tuple[int, int]:
    """``(stream epoch, sequence)`` of an id; ``ValueError`` for anything else."""
    return parse_pair(
        event_id, backend="NATS", parts="the stream's epoch and a sequence number",
        example="1700000000000000-42",
    )  # fmt: skip
