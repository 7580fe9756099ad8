"""The publisher process: ``python -m benchmarks.e2e.publisher RATE SECONDS``.

Publishes at a steady ``RATE`` events per second for ``SECONDS`` from plain sync code,
each event stamped with ``time.time_ns()`` at its send, the way the case's users would:
``async_to_sync(group_send)`` for the channels_redis cases, ``broadcast.publish()``
for the project's, a plain Redis ``PUBLISH`` for the ``websockets`` ceiling. Prints
how many it sent and the rate it achieved, as JSON.
"""

import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.settings")

import django

django.setup()


def main(rate: float, seconds: float) -> None:
    case = os.environ.get("E2E_CASE", "")
    if case == "ceiling":
        import redis

        from benchmarks.e2e.ceiling import CHANNEL

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        channel = os.environ["E2E_PREFIX"] + CHANNEL

        def publish(n: int) -> None:
            client.publish(channel, json.dumps({"t": time.time_ns(), "n": n}))
    elif case.startswith("anchor"):
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        send = async_to_sync(get_channel_layer().group_send)

        def publish(n: int) -> None:
            send("bench", {"type": "bench.event", "t": time.time_ns(), "n": n})
    else:
        from django_broadcast import broadcast

        def publish(n: int) -> None:
            broadcast.publish("bench", {"t": time.time_ns(), "n": n}, type="bench.event")

    publish(-1)  # warm up: connections
    total = int(rate * seconds)
    start = time.perf_counter()
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        publish(n)
    elapsed = time.perf_counter() - start
    achieved = total / max(elapsed, seconds)  # keeping up means exactly the rate
    print(json.dumps({"sent": total, "rate": achieved}), flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
