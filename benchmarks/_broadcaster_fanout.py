"""The encode/broadcaster fan-out case, run by ``fanout.py`` in broadcaster's own venv.

    python _broadcaster_fanout.py PUBLISHER_SCRIPT REDIS_URL CHANNEL N EVENTS

Prints ``{"elapsed": seconds}``: from the publisher's go until every one of the N
subscribers has received every event. Imports only broadcaster and the stdlib.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

from broadcaster import Broadcast  # type: ignore[import-not-found, unused-ignore]

TIMEOUT = 300.0


async def main(publisher: str, url: str, channel: str, n: int, events: int) -> float:
    broadcast = Broadcast(url)
    await broadcast.connect()
    subscribed = finished = 0
    all_subscribed, all_received = asyncio.Event(), asyncio.Event()

    async def subscriber() -> None:
        nonlocal subscribed, finished
        async with broadcast.subscribe(channel=channel) as sub:
            subscribed += 1
            if subscribed == n:
                all_subscribed.set()
            received = 0
            async for _event in sub:
                received += 1
                if received == events:
                    break
            finished += 1
            if finished == n:
                all_received.set()

    proc = await asyncio.create_subprocess_exec(
        sys.executable, publisher, "broadcaster", url, "", channel, str(events),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    tasks = [asyncio.create_task(subscriber()) for _ in range(n)]
    try:
        await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        await asyncio.wait_for(all_subscribed.wait(), TIMEOUT)
        await asyncio.sleep(0.5)  # broadcaster's subscribe does not wait for the broker
        gc.collect()  # as fanout.Publisher.go does for every other case
        proc.stdin.write(b"go\n")
        start = time.perf_counter()
        await asyncio.wait_for(all_received.wait(), TIMEOUT)
        return time.perf_counter() - start
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await broadcast.disconnect()


if __name__ == "__main__":
    publisher, url, channel = sys.argv[1:4]
    n, events = int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps({"elapsed": asyncio.run(main(publisher, url, channel, n, events))}))
