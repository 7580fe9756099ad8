"""The soak benchmark, run small: clients churning subscriptions and a client that
never reads, against daphne and uvicorn. It checks what the full run checks (no event
twice to one subscription, no Redis subscription left once every client has gone) and
that the server's memory after the warm-up stays within the soak's bound."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import REDIS_URL, require_broker


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_a_short_soak_holds(kind: str) -> None:
    require_broker("redis", REDIS_URL)
    from benchmarks import soak

    result = asyncio.run(soak.soak(clients=25, seconds=6, kind=kind, rate=150,
                                   channel_count=10, pad=2000))  # fmt: skip
    tally = result["tally"]
    assert tally.deliveries > 0 and tally.subscribes > 25
    assert tally.duplicates == 0
    assert result["left"] == []
    assert result["rss_max"] - result["rss_warm"] < soak.FLAT_MIB * 2**20
    assert "verdict" in soak.table([result]).render()
