"""The end-to-end benchmark runs at a tiny size (no timing is asserted)."""

from __future__ import annotations

from .conftest import REDIS_URL, require_broker


def test_e2e_websocket_benchmark_runs() -> None:
    require_broker("redis", REDIS_URL)
    from benchmarks import e2e_websocket
    from benchmarks.e2e import CASES

    table = e2e_websocket.run(clients=3, rates=[5.0], seconds=0.5).render()
    for label in CASES.values():
        assert f"highest sustained: {label}" in table
    assert "target: >= 3x the anchor" in table and "layers alone" in table
