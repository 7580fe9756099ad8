"""``manage.py runworker`` through the layer: plain channels are queues, so several
worker processes share the jobs (each done once), and jobs sent while no worker runs
wait for one. The workers are Channels' own ``SyncConsumer`` behind
``ChannelNameRouter``, unchanged."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from django_broadcast import Broadcast
from django_broadcast.layers import BroadcastChannelLayer

from .brokers import Broker
from .conftest import PREFIX, using
from .servers import ROOT, project_env

TIMEOUT = 30
JOBS = 30

pytestmark = pytest.mark.features("queues", crosses_processes=True)


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The worker processes a test starts (with :func:`start_worker`), stopped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_worker(broker: Broker, started: list[subprocess.Popen[bytes]]) -> None:
    """``manage.py runworker thumbnails`` of the test project, on ``broker``."""
    started.append(
        subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", "thumbnails"],
            cwd=ROOT,
            env=project_env(url=broker.url()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )


async def test_runworker_processes_share_the_jobs_each_done_once(
    broker: Broker, workers: list[subprocess.Popen[bytes]]
) -> None:
    # The project's processes use the key prefix PREFIX + "mp:": so does this alias.
    with using(broker.entry(OPTIONS={"prefix": PREFIX + "mp:"})) as bc:
        layer = BroadcastChannelLayer()
        try:
            done = await _done_events(bc, layer, broker, workers)
        finally:
            await layer.flush()
            await bc.aclose()
    jobs = sorted(event["job"] for event in done)
    assert jobs == list(range(JOBS)), jobs  # every job, each once


async def _done_events(
    bc: Broadcast,
    layer: BroadcastChannelLayer,
    broker: Broker,
    workers: list[subprocess.Popen[bytes]],
) -> list[dict[str, int]]:
    async with bc.subscribe("thumbnails.done") as done:
        # Sent while no worker runs: they wait in the queue.
        for job in range(JOBS // 2):
            await layer.send("thumbnails", {"type": "thumbnail.make", "job": job})
        start_worker(broker, workers)
        start_worker(broker, workers)
        for job in range(JOBS // 2, JOBS):
            await layer.send("thumbnails", {"type": "thumbnail.make", "job": job})
        received = [(await done.get(timeout=TIMEOUT)).data for _ in range(JOBS)]
        # A marker job: once it is done, no duplicate of an earlier job is in flight.
        await layer.send("thumbnails", {"type": "thumbnail.make", "job": -1})
        while (event := (await done.get(timeout=TIMEOUT)).data)["job"] != -1:
            received.append(event)
    return received


def test_the_tutorials_shell_check_across_processes(broker: Broker) -> None:
    """Channels' tutorial: ``send`` in one shell, ``receive`` in another."""
    script = (
        "import django; django.setup()\n"
        "from asgiref.sync import async_to_sync\n"
        "from channels.layers import get_channel_layer\n"
        "layer = get_channel_layer()\n"
        "print(async_to_sync(layer.receive)('test_channel_{}')['type'])\n"
    )
    channel = f"test_channel_{id(script)}"
    with using(broker.entry(OPTIONS={"prefix": PREFIX + "mp:"})):
        layer = BroadcastChannelLayer()
        async_to_sync(layer.send)(channel, {"type": "hello"})
        result = subprocess.run(
            [sys.executable, "-c", script.format(id(script))],
            cwd=ROOT,
            env=project_env(url=broker.url()),
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert result.stdout.decode().strip() == "hello"
        async_to_sync(layer.flush)()
