"""``manage.py broadcast_publish CHANNEL DATA``: publish one event and print its id."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import DEFAULT_ALIAS
from ...exceptions import BroadcastUnavailable
from .._common import check_channel, get_broadcast, unreachable

_JSON_STARTS = frozenset('{["-0123456789tfnNI')  # what a JSON value (or NaN...) starts with


def _read(source: str, stdin: IO[str]) -> tuple[str, str]:
    """The text of DATA, and where it came from (for messages)."""
    try:
        if source == "-":
            return stdin.read(), " from stdin"
        if source.startswith("@"):
            with open(source[1:], encoding="utf-8") as file:
                return file.read(), f" in {source[1:]}"
    except (OSError, UnicodeDecodeError) as exc:
        name = "stdin" if source == "-" else source[1:]
        raise CommandError(f"cannot read DATA from {name}: {exc}") from None
    return source, ""


def _parse(text: str, where: str) -> Any:
    """DATA's JSON value; a ``CommandError`` naming the line and column of an error."""
    if not text.strip():
        raise CommandError(f'DATA{where} is empty: pass a JSON value, such as \'{{"text": "hi"}}\'')
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        stripped = text.strip()
        if stripped[0] not in _JSON_STARTS:
            hint = (
                f"A string is quoted in JSON: '{json.dumps(stripped)}' (with the shell's "
                f"quotes around it)"
            )
        else:
            hint = "Fix it, or read it from a file with @file.json"
        raise CommandError(
            f"DATA{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}. {hint}"
        ) from None
    except RecursionError:
        raise CommandError(f"DATA{where} is nested too deeply to read") from None


class Command(BaseCommand):
    help = (
        "Publish one event on CHANNEL, at once (not on a transaction's commit), and "
        "print its id. DATA is JSON, '-' to read it from stdin, or @file.json."
    )
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channel", metavar="CHANNEL", help="the channel to publish on")
        parser.add_argument(
            "data",
            metavar="DATA",
            help="the event's data: JSON, '-' to read it from stdin, or @file.json",
        )
        parser.add_argument("--type", default="message", help="the event type (default 'message')")
        parser.add_argument(
            "--using",
            default=DEFAULT_ALIAS,
            metavar="ALIAS",
            help=f"the BROADCAST alias to publish through (default {DEFAULT_ALIAS!r})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Read DATA, publish it and print the event id."""
        channel = check_channel(options["channel"])
        broadcast = get_broadcast(options["using"])
        data = _parse(*_read(options["data"], options.get("stdin") or sys.stdin))
        try:
            event = broadcast.publish(channel, data, type=options["type"], on_commit=False)
        except BroadcastUnavailable as exc:
            raise unreachable(broadcast, exc) from None
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        assert event is not None, "a publish with on_commit=False is sent at once"
        self.stdout.write(event.id)
