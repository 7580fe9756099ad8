"""The heartbeat of a server process, for the live server list.

A process that serves the shipped consumers through :mod:`django_broadcast.routing`
starts, with its ASGI lifespan startup or its first request, a heartbeat: every
``BROADCAST_CLIENTS["HEARTBEAT"]`` seconds it publishes on the reserved channel
``broadcast.servers`` who it is (host, pid, server software, Python, when it started,
its uptime) and how it is doing (open connections, subscribers, broker subscriptions,
events published and delivered per second, drops, gap notices, reconnects, its busiest
channels), and it says goodbye when it exits cleanly. Apps add their own figures with
:func:`add_section` (the real-time admin adds the requests it served).
:meth:`django_broadcast.Broadcast.servers` lists the processes heard from within three
of their heartbeats, so one that dies drops off within three heartbeats. Browsers can
never read the channel (``broadcast.`` is reserved), except where the real-time admin
lets active staff read it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .broadcast import Broadcast
from .events import GOODBYE, HEARTBEAT, SERVERS_CHANNEL, is_reserved
from .exceptions import BroadcastError

__all__ = ["IDENTITY", "add_section", "remove_section", "snapshot", "start", "stop"]

logger = logging.getLogger("django_broadcast.presence")

#: This process, as the server list names it: ``host:pid:token``.
IDENTITY = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
_STARTED = time.time()
_beats: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
_sections: dict[str, Callable[[], Any]] = {}

#: How many of its busiest channels a heartbeat names.
BUSIEST = 10


def add_section(name: str, provider: Callable[[], Any]) -> None:
    """Send ``provider()`` (JSON data) under ``name`` in every heartbeat of this
    process. A provider that raises is logged and its section left out of that beat."""
    _sections[name] = provider


def remove_section(name: str) -> None:
    """Stop sending the section ``name`` (no error if there is none)."""
    _sections.pop(name, None)


def _server_software() -> str:
    """The ASGI server running this process, as far as can be told."""
    for name in ("uvicorn", "daphne", "hypercorn", "granian", "gunicorn"):
        if name in sys.modules:
            try:
                return f"{name} {version(name)}"
            except PackageNotFoundError:
                return name
    return os.path.basename(sys.argv[0]) if sys.argv else "unknown"


def snapshot(broadcast: Broadcast, interval: float, before: dict[str, float]) -> dict[str, Any]:
    """This process's heartbeat; ``before`` keeps the figures for the next rates."""
    figures = broadcast.stats()
    now = time.time()
    elapsed = max(now - before.get("at", _STARTED), 1e-9)
    rates = {
        key: round((figures[key] - before.get(key, 0)) / elapsed, 2)
        for key in ("published", "delivered")
    }
    before.update(at=now, published=figures["published"], delivered=figures["delivered"])
    host, pid, _ = IDENTITY.split(":")
    channels = {name: count for name, count in figures["channels"].items() if not is_reserved(name)}
    busiest = sorted(channels.items(), key=lambda item: (-item[1], item[0]))[:BUSIEST]
    beat = {
        "id": IDENTITY,
        "host": host,
        "pid": int(pid),
        "server": _server_software(),
        "python": ".".join(map(str, sys.version_info[:3])),
        "started": datetime.fromtimestamp(_STARTED, timezone.utc).isoformat(),
        "uptime": round(now - _STARTED, 1),
        "interval": interval,
        "connections": figures["connections"],
        "subscribers": figures["subscribers"],
        "broker_subscriptions": figures["broker_subscriptions"],
        "events_per_second": rates,
        "dropped": figures["dropped"],
        "gaps": figures["gaps"],
        "reconnects": figures["reconnects"],
        "channels": [[name, count] for name, count in busiest],
        "channel_count": len(channels),
    }
    for name, provider in _sections.items():
        try:
            beat[name] = provider()
        except Exception:
            logger.exception("the heartbeat section %r failed: left out", name)
    return beat


def start(broadcast: Broadcast, interval: float) -> None:
    """Start this process's heartbeat on the running event loop, unless it runs."""
    loop = asyncio.get_running_loop()
    task = _beats.get(loop)
    if task is not None and not task.done():
        return
    _beats[loop] = loop.create_task(_beat(broadcast, interval))
    atexit.register(_goodbye, broadcast)


def stop(broadcast: Broadcast) -> None:
    """Stop the heartbeats and say goodbye (a clean shutdown)."""
    for task in list(_beats.values()):
        task.cancel()
    _beats.clear()
    atexit.unregister(_goodbye)
    _goodbye(broadcast)


async def _beat(broadcast: Broadcast, interval: float) -> None:
    before: dict[str, float] = {}
    while True:
        try:
            beat = snapshot(broadcast, interval, before)
            await broadcast.apublish(SERVERS_CHANNEL, beat, type=HEARTBEAT)
            broadcast.counters.published -= 1  # a heartbeat is not the site's traffic
        except BroadcastError as exc:
            logger.debug("heartbeat not sent: %s", exc)
        except Exception:
            logger.exception("the heartbeat failed")
        await asyncio.sleep(interval)


def _goodbye(broadcast: Broadcast) -> None:
    with contextlib.suppress(Exception):
        broadcast.publish(SERVERS_CHANNEL, {"id": IDENTITY}, type=GOODBYE, on_commit=False)
