"""The commands of ``docs/deployment.rst`` work: each server command of the page, run
as written (the project's module, the address and the number of workers aside) against
the test project, serves an event stream and shuts down cleanly with it open; the
development ``asgi.py`` of the page serves ``broadcast.js``, which the plain
application does not; and the page's nginx configuration, in front of uvicorn, serves
the client, upgrades WebSockets and streams events unbuffered (where nginx is
installed)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from .conftest import REDIS_URL, free_port, require_broker, require_program
from .servers import APP, ROOT, STARTUP, Server

PAGE = ROOT / "docs" / "deployment.rst"
BLOCK = re.compile(r"^\.\. code-block:: (\w+)\n((?:   :\w+:.*\n)*)\n((?:   .*\n|\n)+)", re.M)
SERVERS = ("daphne", "uvicorn", "gunicorn")
SCRIPT = ROOT / "django_broadcast" / "static" / "django_broadcast" / "broadcast.js"


def blocks(language: str) -> list[tuple[str, str]]:
    """The page's code blocks of ``language``: their options and their code."""
    return [
        (options, "\n".join(line[3:] for line in body.splitlines()).strip() + "\n")
        for found, options, body in BLOCK.findall(PAGE.read_text())
        if found == language
    ]


def server_commands() -> list[str]:
    return [
        line
        for _, code in blocks("sh")
        for line in code.splitlines()
        if line.split(" ", 1)[0] in SERVERS
    ]


class PageServer(Server):
    """A server started with a command of the page."""

    def __init__(self, line: str, app: str = APP) -> None:
        super().__init__(line.split()[0], url=REDIS_URL)
        self.line = line
        self.app = app
        # gunicorn keeps a control socket under ~/.gunicorn: one home per server.
        self.home = tempfile.mkdtemp(prefix="broadcast-home-")
        self.env["HOME"] = self.home

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.home, ignore_errors=True)

    def command(self) -> list[str]:
        line = (
            self.line.replace("myproject.asgi:application", self.app)
            .replace("0.0.0.0", "127.0.0.1")
            .replace("8000", str(self.port))
        )
        line = re.sub(r"(--workers|-w) \d+", r"\1 2", line)  # two cores for everyone
        program, *args = shlex.split(line)
        return [sys.executable, "-m", program, *args]


@pytest.fixture
def started() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.close()


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    deadline = time.monotonic() + STARTUP
    while marker not in received:
        assert time.monotonic() < deadline, received
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection: {received!r}"
        received += chunk
    return received


def test_the_page_has_a_command_per_server() -> None:
    assert sorted(line.split()[0] for line in server_commands()) == sorted(SERVERS)


@pytest.mark.parametrize("line", server_commands(), ids=lambda line: line.split()[0])
def test_each_server_command_serves_a_stream_and_stops_with_it_open(
    line: str, started: list[Server]
) -> None:
    require_broker("redis", REDIS_URL)
    server = PageServer(line)
    started.append(server)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=STARTUP) as sock:
        sock.sendall(
            f"GET /broadcast/events/?channel=mp-{uuid.uuid4().hex[:8]} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\n\r\n".encode()
        )
        head = read_until(sock, b"retry:")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"text/event-stream" in head.lower()
        took = server.stop(signal.SIGTERM, timeout=10)
    assert took is not None and took < 8, f"{line} took {took} s to stop:\n{server.output()}"
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output()


def test_the_development_asgi_serves_the_client(tmp_path: Path, started: list[Server]) -> None:
    require_broker("redis", REDIS_URL)
    ((_, code),) = [(o, c) for o, c in blocks("python") if ":caption: asgi.py" in o]
    (tmp_path / "devasgi.py").write_text(
        code.replace("myproject.settings", "tests.multiprocess.settings")
    )
    daphne = next(line for line in server_commands() if line.startswith("daphne"))
    plain = PageServer(daphne)
    development = PageServer(daphne, app="devasgi:application")
    development.env["PYTHONPATH"] = f"{ROOT}:{tmp_path}"
    started.extend([plain, development])
    plain.start()
    development.start()
    path = "/static/django_broadcast/broadcast.js"
    assert httpx.get(plain.url(path), timeout=STARTUP).status_code == 404
    served = httpx.get(development.url(path), timeout=STARTUP)
    assert served.status_code == 200
    assert served.content == SCRIPT.read_bytes()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    """uvicorn as the page runs it, behind nginx with the page's configuration (the
    ports and the static directory aside): the server and nginx's port."""
    require_broker("redis", REDIS_URL)
    program = require_program("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    uvicorn = next(line for line in server_commands() if line.startswith("uvicorn"))
    server = PageServer(uvicorn).start()
    port = free_port()
    ((_, block),) = blocks("nginx")
    block = (
        block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        .replace("listen 80;", f"listen 127.0.0.1:{port};")
        .replace("/srv/myproject/static/", f"{SCRIPT.parent.parent}/")
    )
    temp = "\n".join(
        f"{kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{temp}\n{block}\n}}\n"
    )
    process = subprocess.Popen(
        [program, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                log = tmp_path / "error.log"
                assert process.poll() is None, log.read_text() if log.exists() else "no log"
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield server, port
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.close()


async def test_behind_the_pages_nginx_the_client_websockets_and_streams_work(
    nginx: tuple[Server, int],
) -> None:
    _, port = nginx
    base = f"http://127.0.0.1:{port}"
    channel = f"mp-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=STARTUP) as client:
        script = await client.get(f"{base}/static/django_broadcast/broadcast.js")
        assert script.status_code == 200 and script.content == SCRIPT.read_bytes()
        request = client.build_request("GET", f"{base}/broadcast/events/?channel={channel}")
        stream = await client.send(request, stream=True)
        try:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/broadcast/ws/", origin=websockets.Origin(base)
            )
            try:
                await ws.send(json.dumps({"op": "publish", "channel": channel, "data": "hi"}))

                async def event() -> dict[str, object]:
                    async for line in lines:
                        if line.startswith("data: "):
                            received: dict[str, object] = json.loads(line[6:])
                            return received
                    raise AssertionError("the stream ended")

                # Unbuffered: the one small event arrives at once, not when a buffer fills.
                assert (await asyncio.wait_for(event(), STARTUP))["data"] == "hi"
            finally:
                await ws.close()
        finally:
            await stream.aclose()
