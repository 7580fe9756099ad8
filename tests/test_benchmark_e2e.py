"""The end-to-end benchmark runs at a tiny size (no timing is asserted), and its
ladder reads its runs the way the table says."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from .conftest import REDIS_URL, require_broker

if TYPE_CHECKING:
    from benchmarks.e2e_websocket import Round


def test_e2e_websocket_benchmark_runs() -> None:
    require_broker("redis", REDIS_URL)
    from benchmarks import e2e_websocket

    table = e2e_websocket.run(clients=3, rates=[5.0], seconds=0.3, repeats=1).render()
    for row in e2e_websocket.ROWS:
        assert f"highest sustained: {row.label}" in table
    assert "failed" not in table
    assert "target: >= 3x the anchor" in table and "layers alone" in table
    assert "target: BroadcastWebsocketConsumer on uvicorn >= 0.5x the ceiling" in table


def rounds(rate: float, p99s: list[float], lost: int = 0) -> list[Round]:
    from benchmarks.e2e_websocket import Round

    runs = []
    for p99 in p99s:
        run = Round(rate, sent=10, achieved=rate, clients=1, lost=lost)
        run.latencies_ms = [p99] * 10
        runs.append(run)
    return runs


def test_a_rate_is_judged_on_the_median_of_its_runs() -> None:
    from benchmarks.e2e_websocket import Rate

    assert Rate(10.0, rounds(10.0, [20.0, 500.0, 60.0])).sustained
    assert not Rate(10.0, rounds(10.0, [20.0, 500.0, 160.0])).sustained
    assert not Rate(10.0, rounds(10.0, [1.0, 1.0, 1.0], lost=1)).sustained


def test_the_ladder_stops_after_two_misses_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import e2e_websocket

    missed = {2.0, 4.0, 5.0}
    ran: list[float] = []

    async def fake_run(*args: object) -> object:
        rate = args[-2]
        assert isinstance(rate, float)
        ran.append(rate)
        [run] = rounds(rate, [500.0 if rate in missed else 5.0])
        return run

    monkeypatch.setattr(e2e_websocket, "_run_rate", fake_run)
    row = e2e_websocket.ROWS[0]
    rates = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    ladder = asyncio.run(e2e_websocket._run_row(row, 0, 0, "", 0, rates, 1.0, 3))
    assert [rate.rate for rate in ladder] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ran == [r for r in rates[:5] for _ in range(3)]


def test_an_anchor_that_failed_is_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import e2e_websocket
    from benchmarks.e2e_websocket import Rate

    def fake_measure(rows: list[object], counts: list[int], *args: object) -> object:
        good = [Rate(5.0, rounds(5.0, [5.0]))]
        return {
            (row.key, count): "failed (no server)" if row.key in ("anchor", "ceiling") else good  # type: ignore[attr-defined]
            for row in rows
            for count in counts
        }

    monkeypatch.setattr(e2e_websocket, "_measure", fake_measure)
    table = e2e_websocket.run(clients=3, rates=[5.0], seconds=1.0).render()
    verdicts = [line for line in table.splitlines() if line.startswith("target:")]
    assert len(verdicts) == 3
    assert all(line.endswith("not measured") for line in verdicts)
    assert "met" not in table.replace("not measured", "")
