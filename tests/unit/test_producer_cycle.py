"""Producer cycles against the in-process simulator (no database): the weight a cycle line reports, and
a 451 paused and logged once rather than an ERROR per symbol, endpoint and cycle."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from fake_clock import FakeClock

from pipeline.config import PipelineConfig
from producer.app import ENDPOINTS, RESTRICTED_PAUSE_SECONDS, Producer
from producer.binance import BinanceClient
from producer.load import LoadResult
from producer.simulator import Fault, SimulatorServer, start_simulator

NOW = datetime(2026, 1, 1, 3, 25, 45, tzinfo=UTC)
SYMBOLS = ("BTCUSDT", "ETHUSDT")


class Loads:
    """Counts rows instead of writing them: these tests are about what goes to Binance."""

    def __init__(self) -> None:
        self.tables: list[str] = []

    def load(self, table: str, rows: Sequence[tuple[Any, ...]], *,
             delete_before: datetime | None = None) -> LoadResult:
        self.tables.append(table)
        return LoadResult(table, rows=len(rows), inserted=len(rows))


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    server, _ = start_simulator(port=0, seed=2, symbols=SYMBOLS, clock=NOW.timestamp)
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def producer(sim: SimulatorServer, clock: FakeClock) -> Iterator[Producer]:
    base = PipelineConfig()
    config = dataclasses.replace(base, binance=dataclasses.replace(
        base.binance, base_url=sim.base_url, symbols=SYMBOLS, max_attempts=1))
    with BinanceClient(config.binance) as client:
        yield Producer(config, client, Loads(), now=lambda: NOW, monotonic=clock)


def requests_to(sim: SimulatorServer) -> int:
    return int(sim.sim.stats()["total"])


def test_the_cycle_line_reports_this_cycle_s_weight_and_the_minute_s(producer: Producer) -> None:
    prices = producer.run_endpoint("ticker_price")  # 2 symbols x 2
    trades = producer.run_endpoint("trades")  # 2 symbols x 25
    klines = producer.run_endpoint("klines")  # 2 symbols x 2 intervals x 2
    assert [(r.weight, r.weight_used) for r in (prices, trades, klines)] == [(4, 4), (50, 54), (8, 62)]
    assert " weight=50 weight_1m=54 " in trades.line()


def test_a_retried_request_counts_in_the_cycle_s_weight(sim: SimulatorServer, producer: Producer) -> None:
    producer.config = dataclasses.replace(producer.config, binance=dataclasses.replace(
        producer.config.binance, backoff_initial_seconds=0, backoff_max_seconds=0))
    sim.sim.add_faults([Fault.parse({"mode": "503", "endpoint": "/api/v3/depth"})])
    with BinanceClient(dataclasses.replace(producer.config.binance, max_attempts=2)) as client:
        producer.client = client
        report = producer.run_endpoint("depth")  # 2 symbols, the first one's request retried
    assert report.ok and requests_to(sim) == 3 and report.weight == 3 * 5


def test_a_451_is_logged_once_per_pause_and_pauses_every_endpoint(
    sim: SimulatorServer, producer: Producer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sim.sim.add_faults([Fault.parse({"mode": "451", "count": -1})])
    caplog.set_level(logging.INFO, logger="producer")

    first = producer.run_once()
    assert first[0].failed == ["BTCUSDT: HTTP 451 restricted location"]  # ETHUSDT not even asked
    assert all(r.skipped and "HTTP 451" in r.skipped for r in first[1:])
    assert requests_to(sim) == 1

    clock.now += RESTRICTED_PAUSE_SECONDS - 1  # cycles within the pause: nothing sent, nothing logged
    for _ in range(3):
        assert all(r.skipped for r in producer.run_once())
    assert requests_to(sim) == 1

    clock.now += 1  # the pause is over: the host is asked again, and still refuses
    again = producer.run_once()
    assert again[0].failed and all(r.skipped for r in again[1:])
    assert requests_to(sim) == 2

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert all("HTTP 451" in e and "data-api.binance.vision" in e and "300s" in e for e in errors)
    assert len(caplog.records) == 2 + 5 * 5  # and one line per endpoint and cycle


def test_a_451_on_one_endpoint_does_not_stop_the_others_for_good(
    sim: SimulatorServer, producer: Producer, clock: FakeClock
) -> None:
    sim.sim.add_faults([Fault.parse({"mode": "451", "endpoint": "/api/v3/depth"})])
    assert [r.endpoint for r in producer.run_once() if r.ok] == ["ticker_price"]
    clock.now += RESTRICTED_PAUSE_SECONDS
    assert [r.endpoint for r in producer.run_once() if r.ok] == list(ENDPOINTS)
