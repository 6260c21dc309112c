"""BinanceClient against the simulator run in this process: the behaviours the producer relies on.

No external service is needed (so no `integration` marker): the simulator listens on 127.0.0.1:<free port>.
Where minutes of rate limiting are involved, client and simulator share one fake clock, so the test takes
seconds of wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import requests
from fake_clock import FakeClock

from pipeline.config import BinanceConfig
from producer.binance import BinanceClient
from producer.errors import BinanceAPIError, InvalidSymbolError, RateLimitedError
from producer.ratelimit import RateLimiter
from producer.simulator import SimulatorServer, start_simulator

SYMBOLS = ("BTCUSDT", "ETHUSDT")
EPOCH = 1_767_225_610.0   # 2026-01-01 00:00:10 UTC: the fake clock's start, an epoch second


def config(base_url: str, **overrides: Any) -> BinanceConfig:
    settings: dict[str, Any] = {
        "base_url": base_url, "symbols": SYMBOLS, "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 2.0, "max_attempts": 4, "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05, "weight_budget_per_minute": 1200,
    }
    settings.update(overrides)
    return BinanceConfig(**settings)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server, _ = start_simulator(port=0, seed=21)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatorServer) -> None:
    sim.sim.reset()


@pytest.fixture
def client(sim: SimulatorServer) -> Iterator[BinanceClient]:
    with BinanceClient(config(sim.base_url)) as c:
        yield c


def fault(base_url: str, **spec: Any) -> None:
    assert requests.post(base_url + "/_sim/faults", json=spec, timeout=5).status_code == 200


def stats(base_url: str) -> dict[str, Any]:
    result: dict[str, Any] = requests.get(base_url + "/_sim/stats", timeout=5).json()
    return result


def cycle(client: BinanceClient) -> list[Callable[[], Any]]:
    """One producer cycle: every endpoint for every symbol."""
    calls: list[Callable[[], Any]] = []
    for s in SYMBOLS:
        calls += [partial(client.ticker_price, s), partial(client.depth, s, 20),
                  partial(client.trades, s, 50), partial(client.klines, s, "1m", 10),
                  partial(client.ticker_24hr, s)]
    return calls


def test_5xx_are_retried_then_the_cycle_succeeds(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim.base_url, mode="503", count=2, endpoint="/api/v3/depth")
    fault(sim.base_url, mode="500", count=1, endpoint="/api/v3/klines")
    results = [call() for call in cycle(client)]
    assert all(results)
    s = stats(sim.base_url)
    assert s["requests"]["/api/v3/depth"] == 2 + 2 and s["requests"]["/api/v3/klines"] == 2 + 1
    assert s["statuses"] == {"200": 10, "503": 2, "500": 1}


def test_malformed_json_is_retried(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim.base_url, mode="malformed", count=1, endpoint="/api/v3/trades")
    trades = client.trades("BTCUSDT", 20)
    assert len(trades) == 20 and trades[-1]["id"] > trades[0]["id"]
    assert stats(sim.base_url)["requests"] == {"/api/v3/trades": 2}


def test_invalid_symbol_names_the_symbol_and_the_others_go_on(
    sim: SimulatorServer, client: BinanceClient
) -> None:
    with pytest.raises(InvalidSymbolError) as caught:
        client.ticker_price("DELISTEDUSDT")
    assert "DELISTEDUSDT" in str(caught.value) and caught.value.code == -1121
    assert isinstance(caught.value, BinanceAPIError)
    assert client.ticker_price("BTCUSDT")["symbol"] == "BTCUSDT"
    assert stats(sim.base_url)["total"] == 2  # not retried


def test_retry_after_is_honoured_with_a_measured_wait(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim.base_url, mode="429", retry_after=1)
    refused = 0
    started = time.monotonic()
    while True:  # what a scheduler does: try, skip while paused, try again a little later
        try:
            client.ticker_price("BTCUSDT")
            break
        except RateLimitedError:
            refused += 1
            time.sleep(0.05)
        assert time.monotonic() - started < 5, "never recovered from a 1 s Retry-After"
    recent = stats(sim.base_url)["recent"]
    assert [r["status"] for r in recent] == [429, 200], "nothing was sent during the pause"
    gap = recent[1]["t"] - recent[0]["t"]
    assert 1.0 <= gap < 2.5, f"next request {gap:.2f}s after the 429"
    assert refused > 5
    assert stats(sim.base_url)["violations"] == 0


def test_no_request_reaches_the_host_during_a_ban(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim.base_url, mode="418", retry_after=2)
    with pytest.raises(RateLimitedError) as caught:
        client.depth("ETHUSDT", 20)
    assert caught.value.status == 418
    deadline = caught.value.until
    attempts = 0
    while time.monotonic() < deadline - 0.1:
        for call in cycle(client):  # every endpoint, every symbol
            with pytest.raises(RateLimitedError, match="not sent"):
                call()
            attempts += 1
        time.sleep(0.1)
    assert attempts >= 50
    assert stats(sim.base_url)["total"] == 1
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
    assert client.depth("ETHUSDT", 20)["bids"]
    s = stats(sim.base_url)
    assert s["total"] == 2 and s["violations"] == 0
    assert s["recent"][1]["t"] - s["recent"][0]["t"] >= 2.0


def test_weight_budget_is_never_exceeded_over_a_burst_of_cycles() -> None:
    clock = FakeClock(EPOCH)
    server, url = start_simulator(port=0, seed=22, clock=clock)
    budget = 60
    try:
        limiter = RateLimiter(budget, clock=clock, sleep=clock.sleep)
        with BinanceClient(config(url, weight_budget_per_minute=budget), limiter=limiter,
                           wall_clock=clock) as client:
            started = clock.now
            for _ in range(8):
                for call in cycle(client):
                    call()
                    assert client.weight_used <= budget
        s = stats(url)
        total = sum(s["weight_by_minute"].values())
        assert total == 8 * 72 and total > 5 * budget, "the burst must need the limiter"
        assert s["max_weight_per_minute"] <= budget, s["weight_by_minute"]
        assert s["statuses"] == {"200": 80}
        # The sliding minute allows at most `budget` per 60 s: the burst can't take less than this.
        assert clock.now - started >= (total / budget - 1) * 60
    finally:
        server.stop()


def test_the_server_s_higher_weight_figure_makes_the_client_wait() -> None:
    clock = FakeClock(EPOCH)
    server, url = start_simulator(port=0, seed=23, clock=clock)
    try:
        assert requests.post(url + "/_sim/weight", json={"add": 50}, timeout=5).status_code == 200
        limiter = RateLimiter(60, clock=clock, sleep=clock.sleep)
        with BinanceClient(config(url, weight_budget_per_minute=60), limiter=limiter,
                           wall_clock=clock) as client:
            client.trades("BTCUSDT", 10)  # 25 by our count, 75 by the server's
            assert client.weight_used == 75
            client.ticker_price("BTCUSDT")
        recent = stats(url)["recent"]
        assert recent[1]["sim_ms"] - recent[0]["sim_ms"] >= 60_000
    finally:
        server.stop()


def test_a_client_over_the_server_limit_gets_one_429_and_no_418() -> None:
    clock = FakeClock(EPOCH)
    server, url = start_simulator(port=0, seed=24, clock=clock, weight_limit=50)
    try:
        limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)  # more generous than the server
        with BinanceClient(config(url), limiter=limiter, wall_clock=clock) as client:
            client.trades("BTCUSDT", 10)
            client.trades("ETHUSDT", 10)
            with pytest.raises(RateLimitedError) as caught:
                client.trades("BTCUSDT", 10)
            assert caught.value.status == 429 and caught.value.retry_after == 50  # to the next minute
            for _ in range(3):
                with pytest.raises(RateLimitedError, match="not sent"):
                    client.ticker_price("ETHUSDT")
            clock.sleep(caught.value.until - clock.now)
            assert client.ticker_price("ETHUSDT")["symbol"] == "ETHUSDT"
        s = stats(url)
        assert s["statuses"] == {"200": 3, "429": 1} and s["violations"] == 0
    finally:
        server.stop()
