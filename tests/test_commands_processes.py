"""``broadcast_tail`` and ``broadcast_publish`` as a developer runs them: real
``manage.py`` processes against Redis, the tail in one process and the publisher in
another.

The processes use the test project (``tests/multiprocess/settings.py``), whose
``default`` alias and key prefix come from the environment.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

from .brokers import BROKERS
from .conftest import PREFIX, REDIS_URL, free_port, require_broker, using
from .servers import ROOT, project_env

TIMEOUT = 20  # a process starts Django: generous on a busy machine


def env(url: str) -> dict[str, str]:
    return project_env(url=url, layer=False)


def manage(*args: str, url: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a management command of the test project to its end."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=env(url), input=input,
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


class TailProcess:
    """``manage.py broadcast_tail`` running in a process of its own; its output is
    read line by line as it comes."""

    def __init__(self, *args: str, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "broadcast_tail", *args], cwd=ROOT, env=env(url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._err)),
        ]
        self._following = threading.Event()
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def _err(self, line: str | None) -> None:
        if line is not None:
            self.stderr.append(line)
            if line.startswith("Following"):
                self._following.set()

    def following(self) -> None:
        """Wait until the tail says it follows: what is published now is printed."""
        if not self._following.wait(TIMEOUT):
            self.process.kill()
            raise AssertionError(f"the tail did not start: {self.stderr}")

    def line(self) -> str:
        """The next line the tail prints, while it runs."""
        line = self.lines.get(timeout=TIMEOUT)
        assert line is not None, f"the tail ended: {self.stderr}"
        return line

    def wait(self) -> int:
        """Wait for the process to end; return its status."""
        status = self.process.wait(TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


@pytest.fixture
def tails() -> Iterator[Any]:
    """Start tails with ``tails(*args, url=...)``; every one is stopped at the end."""
    started: list[TailProcess] = []

    def start(*args: str, url: str) -> TailProcess:
        started.append(TailProcess(*args, url=url))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.fixture(params=["redis", "redis+streams"])
def url(request: pytest.FixtureRequest) -> str:
    require_broker("redis", REDIS_URL)
    return BROKERS[request.param].url()


def test_a_tail_sees_what_another_process_publishes(url: str, tails: Any, channel: str) -> None:
    tail = tails(channel, "--json", "--count", "2", url=url)
    tail.following()
    first = manage("broadcast_publish", channel, '{"text": "hi"}', "--type", "chat", url=url)
    assert first.returncode == 0, first.stderr
    # Printed at once, while the tail still runs (its output is not held in a buffer).
    line = json.loads(tail.line())
    assert tail.process.poll() is None
    assert (line["channel"], line["id"], line["type"], line["data"]) == (
        channel, first.stdout.strip(), "chat", {"text": "hi"}
    )  # fmt: skip
    second = manage("broadcast_publish", channel, "-", url=url, input="[1, 2]")
    assert json.loads(tail.line())["data"] == [1, 2]
    assert tail.wait() == 0, tail.stderr  # --count 2
    assert second.stdout.strip() != first.stdout.strip()


def test_text_output_in_a_pipe_has_no_colour(url: str, tails: Any, channel: str) -> None:
    tail = tails(channel, "--count", "1", url=url)
    tail.following()
    sent = manage("broadcast_publish", channel, '{"n": 1}', url=url)
    line = tail.line()
    assert line.endswith(f'  {channel}  message  {sent.stdout.strip()}  {{"n":1}}')
    assert "\x1b" not in line


def test_ctrl_c_exits_at_once_with_status_0(url: str, tails: Any, channel: str) -> None:
    tail = tails(channel, url=url)
    tail.following()
    started = time.monotonic()
    tail.process.send_signal(signal.SIGINT)
    assert tail.wait() == 0
    assert time.monotonic() - started < 5
    assert not any("Traceback" in line for line in tail.stderr), tail.stderr


def test_a_reader_that_goes_away_ends_the_tail(url: str, channel: str) -> None:
    """``broadcast_tail ... | head -n 1``: once head has its line, the tail ends quietly."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "django", "broadcast_tail", channel], cwd=ROOT, env=env(url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert tail.stdout is not None and tail.stderr is not None
    head = subprocess.Popen(["head", "-n", "1"], stdin=tail.stdout, stdout=subprocess.PIPE)
    tail.stdout.close()  # head holds the only reading end
    try:
        assert tail.stderr.readline().startswith("Following"), "the tail did not start"
        entry = {"URL": url, "OPTIONS": {"prefix": PREFIX + "mp:"}}
        with using(entry) as bc:
            deadline = time.monotonic() + TIMEOUT
            while tail.poll() is None and time.monotonic() < deadline:
                bc.publish(channel, "one more", on_commit=False)
                time.sleep(0.05)  # until head has gone and the tail noticed
            bc.close()
        assert tail.wait(TIMEOUT) == 0
        assert "Traceback" not in tail.stderr.read()
        assert head.communicate(timeout=TIMEOUT)[0].decode().endswith('"one more"\n')
    finally:
        for process in (tail, head):
            if process.poll() is None:
                process.kill()
                process.wait()
        tail.stderr.close()


def test_timeout_ends_the_tail(url: str, tails: Any, channel: str) -> None:
    tail = tails(channel, "--timeout", "0.5", url=url)
    assert tail.wait() == 0, tail.stderr
    assert tail.lines.get(timeout=TIMEOUT) is None  # printed nothing


def test_history_then_live(tails: Any, channel: str) -> None:
    require_broker("redis", REDIS_URL)
    url = BROKERS["redis+streams"].url()
    ids = [manage("broadcast_publish", channel, str(n), url=url).stdout.strip() for n in range(3)]
    tail = tails(channel, "--history", "2", "--count", "3", "--json", url=url)
    tail.following()
    live = manage("broadcast_publish", channel, '"live"', url=url).stdout.strip()
    assert [json.loads(tail.line())["id"] for _ in range(3)] == [*ids[1:], live]
    assert tail.wait() == 0


UNREACHABLE = "redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize(
    ("args", "where", "message"),
    [
        (["broadcast_tail", "ok", "--using", "nope"], "redis", "there is no broadcast alias"),
        (["broadcast_tail", "no spaces"], "redis", "channel 'no spaces' has a space"),
        (["broadcast_tail", "ok", "--history", "3"], "redis", "keeps no history"),
        (["broadcast_tail", "ok"], UNREACHABLE, "cannot reach the broker of alias 'default'"),
        (["broadcast_publish", "ok", "{oops}"], "redis", "DATA is not valid JSON"),
        (["broadcast_publish", "ok", "1"], UNREACHABLE, "The event was not sent."),
    ],
)
def test_errors_exit_1_with_a_message_and_no_traceback(
    args: list[str], where: str, message: str
) -> None:
    url = BROKERS["redis"].url() if where == "redis" else where.format(port=free_port())
    if where == "redis":
        require_broker("redis", REDIS_URL)
    done = manage(*args, url=url)
    assert done.returncode == 1
    assert done.stderr.startswith("CommandError: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
