"""Fixtures shared by the suite: brokers, aliases bound to them, private servers,
unique channels, and test servers.

Tests run against every broker of ``tests/brokers.py`` whose backend declares the
features that a ``@pytest.mark.features(...)`` marker asks for: ``broker``,
``backend_name`` and ``bc`` are parametrized over those brokers, and ``server`` over
those that can start a private server. Backend tests talk to real brokers (Redis at
``REDIS_URL``, default ``redis://127.0.0.1:6379/0``). Under ``CI=true`` an
unreachable broker fails those tests; elsewhere they are skipped and the run ends with
a line saying which.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import override_settings

from django_broadcast import Broadcast, broadcasts

from .brokers import BROKERS, PREFIX, REDIS_URL, Broker, PrivateRedis, PrivateServer, free_port

__all__ = [
    "IN_CI",
    "PREFIX",
    "REDIS_URL",
    "PrivateRedis",
    "alias_settings",
    "free_port",
    "require_broker",
    "using",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_unreachable: dict[str, str] = {}


def _missing(name: str, where: str) -> None:
    _unreachable[name] = where
    message = f"{name} unreachable at {where}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: brokers are required)")
    pytest.skip(message)


def require_program(name: str, path: str | None = None) -> str:
    """The path of program ``name`` (searched on ``path``, default PATH): a skip where
    it is missing, a failure with CI=true."""
    found = shutil.which(name, path=path)
    if found is None:
        _missing(name, path or "PATH")
    assert found is not None
    return found


def require_broker(name: str, url: str | None = None) -> None:
    """Fail (in CI) or skip (elsewhere) when broker ``name`` is unreachable."""
    broker = BROKERS.get(name, BROKERS["redis"])
    if not broker.reachable():
        _missing(f"{name} broker", url or broker.url())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _unreachable:
        listed = ", ".join(f"{name} ({url})" for name, url in sorted(_unreachable.items()))
        terminalreporter.write_line(
            f"django_broadcast: tests of these brokers were skipped, unreachable: {listed}. "
            f"Start them or set REDIS_URL.",
            yellow=True,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "features(*names, **values): run only on the brokers whose backends declare "
        "these features (names true; values equal), e.g. features('history')",
    )


def _wanted(metafunc: pytest.Metafunc) -> list[Broker]:
    names: set[str] = set()
    values: dict[str, Any] = {}
    for marker in metafunc.definition.iter_markers("features"):
        names.update(marker.args)
        values.update(marker.kwargs)
    module = metafunc.module.__name__
    return [
        broker
        for broker in BROKERS.values()
        if (broker.suites is None or module in broker.suites)
        and all(getattr(broker.features, name) for name in names)
        and all(getattr(broker.features, name) == value for name, value in values.items())
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" not in metafunc.fixturenames:
        return
    brokers = _wanted(metafunc)
    if "server" in metafunc.fixturenames:
        brokers = [broker for broker in brokers if broker.can_start]
    metafunc.parametrize("broker", brokers, ids=[b.name for b in brokers], indirect=True)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Broker:
    """A broker of ``tests/brokers.py`` (every one that the test's markers allow)."""
    chosen: Broker = request.param
    if not chosen.reachable():
        _missing(f"{chosen.name} broker", chosen.url())
    return chosen


@pytest.fixture
def backend_name(broker: Broker) -> str:
    """The name (URL scheme) of the broker the test runs against."""
    return broker.name


def alias_settings(name: str, **extra: Any) -> dict[str, Any]:
    """The BROADCAST entry for broker ``name``, with a per-run key prefix."""
    return BROKERS[name].entry(**extra)


@contextmanager
def using(entry: dict[str, Any]) -> Iterator[Broadcast]:
    """Make ``entry`` the default alias for the block and yield it."""
    with override_settings(BROADCAST={"default": entry}):
        yield broadcasts["default"]


@pytest.fixture
async def bc(broker: Broker) -> AsyncIterator[Broadcast]:
    """The default alias on each broker in turn."""
    with using(broker.entry()) as instance:
        try:
            yield instance
        finally:
            await instance.aclose()


@pytest.fixture
def server(broker: Broker) -> Iterator[PrivateServer]:
    """A private server of the broker the test runs against, stopped and removed after
    it (only brokers that can start one are run)."""
    yield from _private(broker)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A private redis-server, for tests of Redis itself."""
    for started in _private(BROKERS["redis"]):
        assert isinstance(started, PrivateRedis)
        yield started


def _private(broker: Broker) -> Iterator[PrivateServer]:
    started: PrivateServer | None = None
    try:
        try:
            started = broker.start_private()
        except FileNotFoundError:
            _missing(f"the {broker.name} server binary", "PATH")
        assert started is not None
        yield started
    finally:
        if started is not None:
            started.stop()


@pytest.fixture
def channel() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def _delete_test_keys() -> Iterator[None]:
    yield
    if not BROKERS["redis"].reachable():
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session", autouse=True)
def _delete_test_streams() -> Iterator[None]:
    yield
    broker = BROKERS["nats"]
    if broker.reachable():
        import asyncio

        asyncio.run(broker.delete_streams())  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def _delete_test_rows() -> Iterator[None]:
    yield
    broker = BROKERS["postgresql"]
    if broker.reachable():
        broker.cleanup()  # type: ignore[attr-defined]


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start servers of the test project (``tests/servers.py``): ``serve("daphne",
    url=..., entry=...)``; every one is stopped at the end of the test."""
    from .servers import Server

    started: list[Server] = []

    def start(kind: str, **settings: Any) -> Server:
        server = Server(kind, **settings)
        started.append(server)
        return server.start()

    yield start
    for running in started:
        running.close()
