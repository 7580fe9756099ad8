"""Real ASGI servers (daphne, uvicorn) serving the test project, for tests whose bugs
live in the server path: encoding a frame, buffering what a client does not read,
shutting down with streams open.

The project is ``tests.multiprocess`` (its settings read the environment); each server
is a subprocess on a free port, with its output kept in a file that a failing test
prints. Tests start them with the ``serve`` fixture of ``conftest.py``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from .conftest import PREFIX, REDIS_URL, free_port

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.multiprocess.asgi:application"
SERVERS = ("daphne", "uvicorn")
STARTUP = 20


def project_env(**settings: Any) -> dict[str, str]:
    """The environment of a test-project process; keyword arguments as in
    :class:`Server` (``url``, ``entry``, ``clients``, ``layer``)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.multiprocess.settings",
        "MULTIPROCESS_PREFIX": PREFIX + "mp:",
        "REDIS_URL": REDIS_URL,
        "BROADCAST_URL": settings.get("url") or REDIS_URL,
        "BROADCAST_ENTRY": json.dumps(settings.get("entry") or {}),
        "BROADCAST_CLIENTS": json.dumps(settings.get("clients") or {}),
        "WITH_LAYER": "1" if settings.get("layer", True) else "0",
        "PYTHONPATH": str(ROOT),
    }
    return env


class Server:
    """One server process serving the test project on a free port."""

    def __init__(
        self,
        kind: str,
        *,
        url: str | None = None,
        entry: dict[str, Any] | None = None,
        clients: dict[str, Any] | None = None,
        layer: bool = True,
    ) -> None:
        self.kind = kind
        self.port = free_port()
        self.env = project_env(url=url, entry=entry, clients=clients, layer=layer)
        self.log = Path(tempfile.mkstemp(prefix=f"broadcast-{kind}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        host, port = "127.0.0.1", str(self.port)
        if self.kind == "daphne":
            return [sys.executable, "-m", "daphne", "-b", host, "-p", port, APP]
        return [
            sys.executable, "-m", "uvicorn", APP, "--host", host, "--port", port,
            "--lifespan", "on", "--log-level", "info", "--no-access-log",
        ]  # fmt: skip

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not start:\n{self.output()}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def websocket(self, path: str = "/broadcast/ws/", **kwargs: Any) -> Any:
        """A WebSocket client connected to ``path``."""
        return await websockets.connect(
            f"ws://127.0.0.1:{self.port}{path}",
            origin=websockets.Origin(f"http://127.0.0.1:{self.port}"),
            **kwargs,
        )

    def stalled_websocket(self, *frames: dict[str, Any]) -> socket.socket:
        """A WebSocket client that sends ``frames`` and then never reads again (its
        receive buffer kept small), as a browser tab frozen by the debugger would."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.connect(("127.0.0.1", self.port))
        sock.settimeout(STARTUP)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /broadcast/ws/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Origin: http://127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)  # byte by byte: nothing after the head is read
        assert head.startswith(b"HTTP/1.1 101"), head
        for frame in frames:
            sock.sendall(_masked_text_frame(json.dumps(frame).encode()))
        return sock

    async def diagnostics(self) -> dict[str, Any]:
        """What the server process holds: tasks, hub channels, dropped events."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self.url("/diagnostics/"))
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def rss(self) -> int:
        """The server process's resident memory, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float | None:
        """Send ``sig`` and wait; the seconds it took to exit, or None (then killed)."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return None
        return time.monotonic() - started

    def close(self) -> None:
        self.stop(timeout=10)
        self.log.unlink(missing_ok=True)


def _masked_text_frame(payload: bytes) -> bytes:
    """One client-to-server WebSocket text frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x81, 0x80 | length])
    elif length < 65536:
        head = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
