"""``manage.py broadcast_tail CHANNEL [CHANNEL ...]``: print the events of channels as
they are published, one line each, until Ctrl-C, ``--count`` or ``--timeout``.

The command is three parts: what to follow (:meth:`Command._events`, the history and
the live events of the channels), how to print it (:class:`TextPrinter`,
:class:`JSONPrinter`) and when to stop (:meth:`Command._follow`). A new source of
events, such as channel patterns or the server heartbeat, is another option read in
:meth:`Command.handle` and another branch of :meth:`Command._events`; channels are
``nargs="*"`` so that such an option can stand without them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.core.management.color import Style
from django.utils import timezone

from ...backends import schemes
from ...broadcast import Broadcast
from ...conf import DEFAULT_ALIAS
from ...events import Event, validate_pattern
from ...exceptions import BroadcastUnavailable, SubscriptionClosed
from .._common import check_channel, get_broadcast, unreachable


def _printable(text: str) -> str:
    """``text`` as is, or JSON-quoted where it holds what a terminal would act on
    (escape sequences, control characters, line breaks)."""
    return text if text.isprintable() else json.dumps(text)


def _compact(data: Any) -> str:
    """``data`` as compact JSON: control characters escaped, other text kept as is
    (a lone surrogate, which no terminal can print, escaped too)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=repr)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class TextPrinter:
    """One readable line per event: time (local, ``TIME_ZONE``), channel, type, id and
    data, coloured by ``style``; a gap notice is one line that stands out."""

    def __init__(self, out: OutputWrapper, style: Style) -> None:
        self.out = out
        self.style = style

    def print(self, event: Event) -> None:
        """Write ``event``'s line."""
        when = timezone.localtime(event.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        style = self.style
        if event.is_gap:
            data = event.data if isinstance(event.data, Mapping) else {"data": event.data}
            details = ", ".join(
                f"{_printable(str(k))}: {_printable(v) if isinstance(v, str) else _compact(v)}"
                for k, v in data.items()
            )
            line = f"{when}  {event.channel}  GAP  events may have been lost ({details})"
            self.out.write(style.WARNING(line))
        else:
            self.out.write(
                f"{when}  {style.MIGRATE_LABEL(event.channel)}  "
                f"{style.SQL_COLTYPE(_printable(event.type))}  "
                f"{style.HTTP_NOT_MODIFIED(_printable(event.id))}  {_compact(event.data)}"
            )
        self.out.flush()


class JSONPrinter:
    """One JSON object per line, for ``jq``: channel, id, type, time (ISO 8601) and
    data."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def print(self, event: Event) -> None:
        """Write ``event``'s object."""
        line = {
            "channel": event.channel,
            "id": event.id,
            "type": event.type,
            "time": event.time.isoformat(timespec="milliseconds"),
            "data": event.data,
        }
        self.out.write(json.dumps(line, default=repr))
        self.out.flush()


def _positive(option: str, value: Any, *, seconds: bool = False) -> Any:
    """``value`` of ``--option`` if it is None, a positive int or, for ``seconds``, a
    positive number."""
    if value is None:
        return None
    number = isinstance(value, (int, float)) if seconds else isinstance(value, int)
    if isinstance(value, bool) or not number or value <= 0:
        what = "number of seconds" if seconds else "whole number"
        raise CommandError(f"--{option}: {value!r} is not a positive {what}")
    return value


def _check_pattern(pattern: str) -> str:
    try:
        return validate_pattern(pattern)
    except ValueError as exc:
        raise CommandError(f"--pattern: {exc}") from None


def _history_schemes() -> str:
    """The URL schemes whose backends keep history, as their classes declare."""
    return schemes.describe("history")


class Command(BaseCommand):
    help = (
        "Print the events of broadcast channels as they are published, one line each "
        "(or one JSON object with --json), until Ctrl-C, --count or --timeout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channels", nargs="*", metavar="CHANNEL", help="channels to follow")
        parser.add_argument(
            "--pattern",
            action="append",
            default=[],
            metavar="GLOB",
            help="also follow every channel matching GLOB ('*' any run of characters, "
            "'?' one; backends that can subscribe by pattern); may be repeated",
        )
        parser.add_argument(
            "--servers",
            action="store_true",
            help="list the live server processes of the deployment (their heartbeats) and exit",
        )
        start = parser.add_mutually_exclusive_group()
        start.add_argument(
            "--history",
            type=int,
            metavar="N",
            help="first print the last N events of each channel, then follow with no gap "
            "(backends with history)",
        )
        start.add_argument(
            "--since",
            metavar="ID",
            help="first print each channel's events after the event ID, then follow "
            "(backends with history)",
        )
        parser.add_argument(
            "--using",
            default=DEFAULT_ALIAS,
            metavar="ALIAS",
            help=f"the BROADCAST alias to follow (default {DEFAULT_ALIAS!r})",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object per line: channel, id, type, time, data",
        )
        parser.add_argument("--count", type=int, metavar="N", help="exit after N events")
        parser.add_argument(
            "--timeout",
            type=float,
            metavar="SECONDS",
            help="exit after SECONDS (with status 1 if fewer than --count events came)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Check the arguments, then print events until told to stop."""
        if options["servers"]:
            self._servers(get_broadcast(options["using"]), json_lines=options["json"])
            return
        channels = options["channels"]
        if not channels and not options["pattern"]:
            raise CommandError(
                "name at least one channel (or --pattern) to tail, e.g. broadcast_tail orders.7"
            )
        self.channels = tuple(dict.fromkeys(check_channel(c) for c in channels))
        self.patterns = tuple(dict.fromkeys(_check_pattern(p) for p in options["pattern"]))
        self.history: int | None = _positive("history", options["history"])
        self.count: int | None = _positive("count", options["count"])
        self.timeout: float | None = _positive("timeout", options["timeout"], seconds=True)
        self.since: str | None = options["since"]
        if self.history is not None and self.since is not None:
            raise CommandError("use --history or --since, not both")
        self.broadcast = get_broadcast(options["using"])
        self._check_history_options()
        if self.patterns and not self.broadcast.features.patterns:
            raise CommandError(
                f"--pattern: alias {self.broadcast.alias!r} uses "
                f"{type(self.broadcast.backend).__name__}, which cannot subscribe by pattern: "
                f"name the channels, or tail an alias whose backend can "
                f"({schemes.describe('patterns')})"
            )
        self.verbosity: int = options["verbosity"]
        self.printer = (
            JSONPrinter(self.stdout) if options["json"] else TextPrinter(self.stdout, self.style)
        )
        self.printed = 0
        try:
            asyncio.run(self._run())
        except KeyboardInterrupt:
            return  # Ctrl-C: the normal way to stop
        except BrokenPipeError:
            # The reader went away (`broadcast_tail ... | head -3`): stop quietly, and
            # let what is left in the buffer go nowhere when Python flushes it at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stdout.fileno())

    def _check_history_options(self) -> None:
        """``--history`` and ``--since`` need a backend with history, and an id of it."""
        if self.history is None and self.since is None:
            return
        backend = self.broadcast.backend
        option = "history" if self.history is not None else "since"
        if not self.channels:
            raise CommandError(f"--{option} replays channels: name them (patterns have none)")
        if not self.broadcast.features.history:
            raise CommandError(
                f"--{option}: alias {self.broadcast.alias!r} uses {type(backend).__name__}, "
                f"which keeps no history: drop the option to follow live events only, or "
                f"tail an alias whose backend keeps history ({_history_schemes()})"
            )
        if self.since is not None:
            try:
                backend.id_key(self.since)
            except ValueError as exc:
                raise CommandError(f"--since: {exc}") from None

    async def _run(self) -> None:
        try:
            await asyncio.wait_for(self._follow(), self.timeout)
        except asyncio.TimeoutError:
            if self.count is not None:
                raise CommandError(
                    f"--timeout: {self.printed} of the {self.count} events (--count) came in "
                    f"{self.timeout:g} s"
                ) from None

    async def _follow(self) -> None:
        """Print events until ``--count`` of them (gap notices are not counted)."""
        broadcast = self.broadcast
        try:
            async with aclosing(self._events(broadcast)) as events:
                async for event in events:
                    self.printer.print(event)
                    if not event.is_gap:
                        self.printed += 1
                        if self.printed == self.count:
                            return
        except BroadcastUnavailable as exc:
            raise unreachable(broadcast, exc) from None
        except SubscriptionClosed as exc:
            raise CommandError(
                f"the subscription ended: {exc}; start broadcast_tail again once the broker is back"
            ) from None

    async def _events(self, broadcast: Broadcast) -> AsyncGenerator[Event, None]:
        """The events to print.

        With ``--history``, the last events of each channel first (merged in time
        order, then id order; each channel's in its own), then the live ones, the
        subscription resumed from the last event printed (or the start of a channel
        that had none), so that none is missed or printed twice. With ``--since``,
        every event after it, then the live ones.
        """
        resume: str | dict[str, str] | None = self.since
        if self.history is not None:
            pages = [await broadcast.ahistory(c, limit=self.history) for c in self.channels]
            id_key = broadcast.backend.id_key
            for event in heapq.merge(*pages, key=lambda e: (e.time, id_key(e.id))):
                yield event
            resume = {}
            for channel, page in zip(self.channels, pages, strict=True):
                position = page[-1].id if page else broadcast.features.origin
                if position is not None:
                    resume[channel] = position
        subscription = broadcast.subscribe(*self.channels, patterns=self.patterns, since=resume)
        async with subscription:
            if self.verbosity >= 1:
                self.stderr.write(
                    f"Following {', '.join((*self.channels, *self.patterns))} on alias "
                    f"{broadcast.alias!r} "
                    f"({type(broadcast.backend).__name__}). Quit with CONTROL-C.",
                    style_func=lambda text: text,
                )
            async for event in subscription:
                yield event

    def _servers(self, broadcast: Broadcast, *, json_lines: bool) -> None:
        """Print the live server processes, one line each (or one JSON object)."""
        try:
            found = broadcast.servers()
        except BroadcastUnavailable as exc:
            raise unreachable(broadcast, exc) from None
        if json_lines:
            for server in found:
                self.stdout.write(json.dumps(server))
            return
        if not found:
            self.stdout.write(
                "No server process has announced itself: none serves the consumers of "
                "django_broadcast.routing, or none has had a request yet."
            )
            return
        for server in found:
            connections = server.get("connections", {})
            rates = server.get("events_per_second", {})
            self.stdout.write(
                f"{self.style.MIGRATE_LABEL(server['host'])}  pid {server['pid']}  "
                f"{server.get('server', '?')}  up {_duration(server.get('uptime', 0))}  "
                f"ws {connections.get('websocket', 0)}  sse {connections.get('sse', 0)}  "
                f"subscribers {server.get('subscribers', 0)}  "
                f"events/s in {rates.get('published', 0):g} out {rates.get('delivered', 0):g}  "
                f"dropped {server.get('dropped', 0)}  seen {server['seen']}"
            )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
