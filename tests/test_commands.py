"""``manage.py broadcast_tail`` and ``broadcast_publish`` through ``call_command``.

A tail that follows live events runs in a thread of its own (:class:`Tail`); the
test publishes once the tail says, on stderr, that it is following.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.core.management.color import color_style
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_broadcast import Broadcast, Event, broadcast, broadcasts
from django_broadcast.backends import schemes
from django_broadcast.codec import JSONCodec

from .conftest import PrivateRedis, alias_settings, free_port, using

TIMEOUT = 5
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def memory() -> Iterator[Broadcast]:
    """A fresh memory:// default alias."""
    with using(alias_settings("memory")) as instance:
        yield instance


class _Stream(io.StringIO):
    """A StringIO that says when the tail has begun following."""

    def __init__(self) -> None:
        super().__init__()
        self.following = threading.Event()

    def write(self, text: str) -> int:
        if text.startswith("Following"):
            self.following.set()
        return super().write(text)


class Tail:
    """``broadcast_tail`` run by ``call_command`` in a thread."""

    def __init__(self, *args: str, **options: Any) -> None:
        self.stdout = io.StringIO()
        self.stderr = _Stream()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(args, options), daemon=True)
        self._thread.start()

    def _run(self, args: tuple[str, ...], options: dict[str, Any]) -> None:
        try:
            call_command("broadcast_tail", *args, stdout=self.stdout, stderr=self.stderr, **options)
        except BaseException as exc:
            self.error = exc

    def following(self) -> None:
        """Wait until the subscription is open: what is published now is printed."""
        if not self.stderr.following.wait(TIMEOUT):
            raise AssertionError(f"the tail did not start: {self.error!r} {self.stderr.getvalue()}")

    def wait(self) -> list[str]:
        """Wait for the tail to end; return its lines."""
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the tail did not end"
        return self.stdout.getvalue().splitlines()


def tail(*args: str, **options: Any) -> list[str]:
    """Run a tail that ends by itself; return its lines."""
    out = io.StringIO()
    call_command("broadcast_tail", *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue().splitlines()


def text_line(event: Event) -> str:
    when = timezone.localtime(event.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"{when}  {event.channel}  {event.type}  {event.id}  {data}"


def published(bc: Broadcast, channel: str, data: Any, **kwargs: Any) -> Event:
    event = bc.publish(channel, data, on_commit=False, **kwargs)
    assert event is not None
    return event


# broadcast_tail: what it prints ---------------------------------------------------------


def test_history_prints_the_last_events(memory: Broadcast, channel: str) -> None:
    events = [published(memory, channel, {"n": n}, type="tick") for n in range(5)]
    assert tail(channel, history=2, count=2) == [text_line(e) for e in events[3:]]


def test_history_of_several_channels_is_merged_in_time_order(
    memory: Broadcast, channel: str
) -> None:
    a, b = f"{channel}.a", f"{channel}.b"
    events = [published(memory, name, n) for n, name in enumerate([a, b, a, b])]
    assert tail(a, b, history=5, count=4) == [text_line(e) for e in events]


def test_history_then_live_without_a_gap_or_a_duplicate(memory: Broadcast, channel: str) -> None:
    quiet = f"{channel}.quiet"
    old = [published(memory, channel, n) for n in range(3)]
    running = Tail(channel, quiet, history=2, count=4, json=True)
    running.following()
    new = [published(memory, quiet, "first"), published(memory, channel, 3)]
    printed = [json.loads(line) for line in running.wait()]
    assert [(e["channel"], e["id"]) for e in printed] == [
        (e.channel, e.id) for e in [*old[1:], *new]
    ]
    assert running.error is None


def test_since_replays_then_follows(memory: Broadcast, channel: str) -> None:
    first, *rest = [published(memory, channel, n) for n in range(3)]
    running = Tail(channel, since=first.id, count=3)
    running.following()
    live = published(memory, channel, "live")
    assert running.wait() == [text_line(e) for e in [*rest, live]]


def test_using_follows_another_alias(channel: str) -> None:
    setting = {"default": {"URL": "memory://"}, "audit": {"URL": "memory://"}}
    with override_settings(BROADCAST=setting):
        running = Tail(channel, using="audit", count=1)
        running.following()
        published(broadcasts["default"], channel, "not this one")
        audited = published(broadcasts["audit"], channel, "audited")
        assert running.wait() == [text_line(audited)]
    assert "on alias 'audit'" in running.stderr.getvalue()


def test_json_is_one_object_per_line(memory: Broadcast, channel: str) -> None:
    event = published(memory, channel, {"text": "héllo", "n": [1, 2]}, type="chat")
    [line] = tail(channel, history=1, count=1, json=True)
    assert json.loads(line) == {
        "channel": channel,
        "id": event.id,
        "type": "chat",
        "time": event.time.isoformat(timespec="milliseconds"),
        "data": {"text": "héllo", "n": [1, 2]},
    }
    assert datetime.fromisoformat(json.loads(line)["time"]) == event.time


def test_a_gap_notice_stands_out(channel: str) -> None:
    with using(alias_settings("memory", OPTIONS={"history": 2})) as bc:
        first = published(bc, channel, 0)
        kept = [published(bc, channel, n) for n in range(1, 5)][-2:]
        lines = tail(channel, since=first.id, count=2, force_color=True)
    gap, *rest = lines
    assert ANSI.sub("", gap).endswith(
        f"  {channel}  GAP  events may have been lost (reason: history, since: {first.id})"
    )
    assert gap == color_style(force_color=True).WARNING(ANSI.sub("", gap))
    assert [ANSI.sub("", line) for line in rest] == [text_line(e) for e in kept]


def test_colour_only_when_asked_or_on_a_terminal(memory: Broadcast, channel: str) -> None:
    event = published(memory, channel, {"n": 1})
    [coloured] = tail(channel, history=1, count=1, force_color=True)
    assert coloured != text_line(event) and ANSI.sub("", coloured) == text_line(event)
    # Not a terminal (a StringIO here), or --no-color: plain text.
    assert tail(channel, history=1, count=1) == [text_line(event)]
    assert tail(channel, history=1, count=1, no_color=True) == [text_line(event)]


def test_what_others_published_cannot_drive_the_terminal(memory: Broadcast, channel: str) -> None:
    # Another client's event type and data reach the terminal escaped, never raw.
    payload = b'{"type":"\\u001b]0;owned\\u0007","time":0,"data":"\\ud800\\u001b[2J"}'
    memory.backend.publish(channel, payload)
    [line] = tail(channel, history=1, count=1)
    assert "\x1b" not in line and "\ud800" not in line
    assert line.endswith('  "\\u001b]0;owned\\u0007"  1  "\\ud800\\u001b[2J"')


class SetCodec(JSONCodec):
    """Decodes lists as sets: data that JSON cannot print."""

    def decode(self, data: bytes) -> Any:
        envelope = super().decode(data)
        envelope["data"] = set(envelope["data"])
        return envelope


def test_data_json_cannot_print_is_shown_by_its_repr(channel: str) -> None:
    with using(alias_settings("memory", CODEC="tests.test_commands.SetCodec")) as bc:
        published(bc, channel, [1])
        [text] = tail(channel, history=1, count=1)
        [line] = tail(channel, history=1, count=1, json=True)
    assert text.endswith('  "{1}"') and json.loads(line)["data"] == "{1}"


def test_count_ends_the_tail(memory: Broadcast, channel: str) -> None:
    running = Tail(channel, count=2)
    running.following()
    for n in range(3):
        published(memory, channel, n)
    assert len(running.wait()) == 2


def test_timeout_ends_the_tail(memory: Broadcast, channel: str) -> None:
    assert tail(channel, timeout=0.2) == []


def test_a_count_not_reached_in_time_is_an_error(memory: Broadcast, channel: str) -> None:
    published(memory, channel, 1)
    with pytest.raises(
        CommandError, match=r"^--timeout: 1 of the 3 events \(--count\) came in 0.2 s$"
    ):
        tail(channel, history=1, count=3, timeout=0.2)


def test_verbosity_0_prints_no_banner(memory: Broadcast, channel: str) -> None:
    err = io.StringIO()
    call_command("broadcast_tail", channel, timeout=0.1, verbosity=0, stderr=err)
    assert err.getvalue() == ""
    call_command("broadcast_tail", channel, timeout=0.1, stderr=err)
    assert err.getvalue().startswith(f"Following {channel} on alias 'default' (MemoryBackend)")


# broadcast_tail: errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        ((), {}, r"name at least one channel \(or --pattern\) to tail, e\.g\. broadcast_tail"),
        (("no spaces",), {}, r"channel 'no spaces' has a space at position 2"),
        (("ok",), {"using": "nope"}, r"there is no broadcast alias 'nope'.*'default'.*--using"),
        (("ok",), {"since": "abc"}, r"--since: 'abc' is not an event id of the memory backend"),
        (("ok",), {"history": 0}, r"--history: 0 is not a positive whole number"),
        (("ok",), {"count": -1}, r"--count: -1 is not a positive whole number"),
        (("ok",), {"timeout": 0}, r"--timeout: 0 is not a positive number of seconds"),
        (("ok",), {"history": 1, "since": "1"}, r"use --history or --since, not both"),
    ],
)
def test_bad_arguments_are_command_errors(
    memory: Broadcast, args: tuple[str, ...], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        tail(*args, **options)


@pytest.mark.parametrize("command", ["broadcast_tail", "broadcast_publish"])
def test_a_bad_setting_is_a_command_error(command: str) -> None:
    with (
        override_settings(BROADCAST={"default": {"URL": "kafka://x"}}),
        pytest.raises(CommandError, match=r"^django_broadcast\.E001: .*'kafka'"),
    ):
        call_command(command, "ok", *(["1"] if command == "broadcast_publish" else []))


@pytest.mark.parametrize("option", [{"history": 5}, {"since": "1-0"}])
@pytest.mark.features(history=False)
def test_history_needs_a_backend_that_keeps_it(
    option: dict[str, Any], backend_name: str, channel: str
) -> None:
    with using(alias_settings(backend_name)) as bc, pytest.raises(CommandError) as error:
        tail(channel, **option)
    assert str(error.value) == (
        f"--{next(iter(option))}: alias 'default' uses {type(bc.backend).__name__}, which keeps "
        f"no history: drop the option to follow live events only, or tail an alias whose "
        f"backend keeps history ({schemes.describe('history')})"
    )


def test_an_unreachable_broker_is_a_command_error(channel: str) -> None:
    entry = {"URL": f"redis://127.0.0.1:{free_port()}/0", "TIMEOUT": 0.5}
    with override_settings(BROADCAST={"default": entry}), pytest.raises(CommandError) as error:
        tail(channel)
    assert str(error.value).startswith("cannot reach the broker of alias 'default': Redis at")
    assert "Check that the server runs" in str(error.value)


def test_a_broker_that_stays_away_ends_the_tail(private_redis: PrivateRedis, channel: str) -> None:
    entry = {"URL": private_redis.url, "TIMEOUT": 0.5, "RECONNECT_TIMEOUT": 0.5}
    with override_settings(BROADCAST={"default": entry}):
        running = Tail(channel)
        running.following()
        private_redis.kill()
        running.wait()
    assert isinstance(running.error, CommandError)
    assert str(running.error).startswith(
        "the subscription ended: the broker of alias 'default' stayed unreachable for 0.5 s"
    )
    assert str(running.error).endswith("start broadcast_tail again once the broker is back")


# broadcast_publish ----------------------------------------------------------------------


def publish(*args: str, **options: Any) -> str:
    out = io.StringIO()
    call_command("broadcast_publish", *args, stdout=out, **options)
    return out.getvalue()


def test_publish_prints_the_event_id(memory: Broadcast, channel: str) -> None:
    printed = publish(channel, '{"text": "hi"}', type="chat")
    [event] = memory.history(channel)
    assert printed == f"{event.id}\n"
    assert (event.type, event.data) == ("chat", {"text": "hi"})


def test_publish_reads_stdin(memory: Broadcast, channel: str) -> None:
    publish(channel, "-", stdin=io.StringIO('[1, 2, "three"]\n'))
    assert memory.history(channel)[0].data == [1, 2, "three"]


def test_publish_reads_a_file(memory: Broadcast, channel: str, tmp_path: Path) -> None:
    (tmp_path / "event.json").write_text('{"ticket": 7, "status": "closed"}', encoding="utf-8")
    publish(channel, f"@{tmp_path / 'event.json'}")
    assert memory.history(channel)[0].data == {"ticket": 7, "status": "closed"}


def test_publish_uses_the_alias(channel: str) -> None:
    setting = {"default": {"URL": "memory://"}, "audit": {"URL": "memory://"}}
    with override_settings(BROADCAST=setting):
        publish(channel, '"to audit"', using="audit")
        assert [e.data for e in broadcasts["audit"].history(channel)] == ["to audit"]
        assert broadcast.history(channel) == []


@pytest.mark.django_db(transaction=True)
def test_publish_sends_at_once_even_in_a_transaction(memory: Broadcast, channel: str) -> None:
    with transaction.atomic():
        printed = publish(channel, "1")
        assert [e.id for e in memory.history(channel)] == [printed.strip()]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            '{"text": "hi",\n "n": }',
            r"^DATA is not valid JSON: Expecting value at line 2, column 7\. "
            r"Fix it, or read it from a file with @file\.json$",
        ),
        (
            "hello",
            r"^DATA is not valid JSON: Expecting value at line 1, column 1\. A string is "
            r"quoted in JSON: '\"hello\"' \(with the shell's quotes around it\)$",
        ),
        (" \n", r"^DATA is empty: pass a JSON value, such as '\{\"text\": \"hi\"\}'$"),
        ("NaN", r"^cannot publish to channel '.*': Out of range float values"),
        ('"\\ud800"', r"^cannot publish to channel '.*': 'utf-8' codec can't encode"),
        ("[" * 100_000 + "]" * 100_000, r"^DATA is nested too deeply to read"),
    ],
)
def test_publish_refuses_bad_data(memory: Broadcast, channel: str, data: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        publish(channel, data)
    assert memory.history(channel) == []


def test_publish_names_where_bad_json_came_from(memory: Broadcast, tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text('{\n  "a": 1\n  "b": 2\n}', encoding="utf-8")
    with pytest.raises(CommandError, match=r"^DATA in .*event\.json is not valid JSON: Expecting "
                       r"',' delimiter at line 3, column 3\."):  # fmt: skip
        publish("ok", f"@{path}")
    with pytest.raises(CommandError, match=r"^DATA from stdin is not valid JSON: .* line 1, col"):
        publish("ok", "-", stdin=io.StringIO("{"))
    with pytest.raises(CommandError, match=r"^cannot read DATA from .*missing\.json: \[Errno 2\]"):
        publish("ok", f"@{tmp_path / 'missing.json'}")
    latin1 = io.TextIOWrapper(io.BytesIO(b'"caf\xe9"'), encoding="utf-8")
    with pytest.raises(CommandError, match=r"^cannot read DATA from stdin: 'utf-8' codec"):
        publish("ok", "-", stdin=latin1)


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("no spaces", "1"), {}, r"^channel 'no spaces' has a space at position 2"),
        (("ok", "1"), {"type": ""}, r"^event type must be a non-empty str"),
        (("ok", "1"), {"using": "nope"}, r"^there is no broadcast alias 'nope'.*--using"),
        (("ok", '"' + "x" * 200 + '"'), {}, r"^event for channel 'ok' is .* bytes once encoded"),
    ],
)
def test_publish_errors_are_command_errors(
    args: tuple[str, ...], options: dict[str, Any], message: str
) -> None:
    entry = alias_settings("memory", OPTIONS={"max_message_size": 100})
    with using(entry), pytest.raises(CommandError, match=message):
        publish(*args, **options)


def test_publish_to_an_unreachable_broker(channel: str) -> None:
    entry = {"URL": f"redis://127.0.0.1:{free_port()}/0", "TIMEOUT": 0.5}
    with override_settings(BROADCAST={"default": entry}), pytest.raises(CommandError) as error:
        publish(channel, "1")
    assert str(error.value).startswith("cannot reach the broker of alias 'default': Redis at")
    assert "The event was not sent." in str(error.value)


# broadcast_tail --pattern and --servers --------------------------------------------------


@pytest.mark.features("patterns")
def test_pattern_follows_every_matching_channel(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name)) as bc:
        running = Tail(pattern=[f"{channel}.*"], count=2, json=True)
        running.following()
        sent = [published(bc, f"{channel}.a", 1), published(bc, f"{channel}.b.c", 2)]
        printed = [json.loads(line) for line in running.wait()]
        bc.close()
    assert [(e["channel"], e["id"]) for e in printed] == [(e.channel, e.id) for e in sent]


@pytest.mark.features(patterns=False)
def test_pattern_needs_a_backend_that_can(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name)) as bc, pytest.raises(CommandError) as error:
        tail(pattern=[f"{channel}.*"])
    assert str(error.value).startswith(
        f"--pattern: alias 'default' uses {type(bc.backend).__name__}, which cannot subscribe "
        f"by pattern"
    )
    assert "memory://" in str(error.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"pattern": ["chat room.*"]}, "--pattern: pattern 'chat room.*' is not valid"),
        ({"pattern": ["t-*"], "history": 3}, "--history replays channels: name them"),
    ],
)
def test_bad_patterns_are_command_errors(
    memory: Broadcast, options: dict[str, Any], words: str
) -> None:
    with pytest.raises(CommandError, match=re.escape(words)):
        tail(**options)


def test_servers_lists_the_live_processes(memory: Broadcast) -> None:
    import asyncio

    from django_broadcast import presence

    assert "No server process has announced itself" in tail(servers=True)[0]
    loop = asyncio.new_event_loop()
    beating = threading.Thread(target=loop.run_forever, daemon=True)
    beating.start()

    async def start() -> None:
        presence.start(memory, 0.2)

    asyncio.run_coroutine_threadsafe(start(), loop).result(TIMEOUT)
    try:
        listed: list[dict[str, Any]] = []
        while not listed:
            listed = [json.loads(line) for line in tail(servers=True, json=True)]
        [me] = listed
        assert me["id"] == presence.IDENTITY and me["interval"] == 0.2
        assert {"host", "pid", "server", "uptime", "connections", "events_per_second"} <= set(me)
        [line] = tail(servers=True, no_color=True)
        assert f"pid {me['pid']}" in line and "subscribers" in line
    finally:
        loop.call_soon_threadsafe(presence.stop, memory)
        loop.call_soon_threadsafe(loop.stop)
        beating.join(TIMEOUT)
    # The goodbye takes it off the list at once.
    assert "No server process has announced itself" in tail(servers=True)[0]
