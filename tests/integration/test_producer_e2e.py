"""The producer end to end: the Binance simulator (in this process, port 0) -> producer -> PostgreSQL.

The simulator's market is a pure function of its clock, so a frozen clock answers every cycle the same,
and advancing it moves the market. Each test uses fresh symbols (the simulator invents any symbol)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import StopSignals
from pipeline.config import (
    DepthEndpoint,
    Endpoints,
    KlinesEndpoint,
    PipelineConfig,
    TickerPriceEndpoint,
    TradesEndpoint,
)
from producer.app import ENDPOINTS, CycleReport, Producer
from producer.binance import BinanceClient
from producer.errors import DatabaseError, RateLimitedError
from producer.load import LoadResult, PostgresLoader
from producer.simulator import Fault, SimulatorServer, start_simulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr")
# A fixed moment, 10 s into a minute, near real time (order book retention works on real-ish times).
T = datetime.now(UTC).replace(second=10, microsecond=0) - timedelta(minutes=5)


def fresh_symbols(n: int = 2) -> list[str]:
    return ["T" + secrets.token_hex(5).upper() + "USDT" for _ in range(n)]


class Clock:
    """The simulator's base clock and the producer's `now`, frozen until moved."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def seconds(self) -> float:
        return self.at.timestamp()

    def now(self) -> datetime:
        return self.at


@dataclasses.dataclass
class Rig:
    config: PipelineConfig
    server: SimulatorServer
    clock: Clock
    loader: PostgresLoader
    client: BinanceClient
    producer: Producer
    symbols: list[str]

    def advance(self, seconds: float) -> None:
        """Move the market and the producer's clock together (the simulator's base clock is ours)."""
        self.clock.at += timedelta(seconds=seconds)

    def fault(self, **fault: Any) -> None:
        self.server.sim.add_faults([Fault.parse(fault)])

    def requests(self, path: str, symbol: str | None = None) -> int:
        return sum(
            1
            for r in self.server.sim.stats()["recent"]
            if r["path"] == path and (symbol is None or r["symbol"] == symbol)
        )


def producer_config(
    pg_config: PipelineConfig, base_url: str, symbols: Sequence[str], **producer: Any
) -> PipelineConfig:
    binance = dataclasses.replace(
        pg_config.binance,
        base_url=base_url,
        symbols=tuple(symbols),
        max_attempts=2,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05,
        read_timeout_seconds=5,
        weight_budget_per_minute=6000,
        endpoints=Endpoints(
            ticker_price=TickerPriceEndpoint(interval_seconds=0.2),
            depth=DepthEndpoint(interval_seconds=0.2, limit=10),
            trades=TradesEndpoint(interval_seconds=0.2, limit=50),
            klines=KlinesEndpoint(interval_seconds=0.2, intervals=("1m", "1h"), limit=30),
        ),
    )
    return dataclasses.replace(
        pg_config, binance=binance, producer=dataclasses.replace(pg_config.producer, **producer)
    )


@pytest.fixture
def rig_factory(pg_config: PipelineConfig) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(
        symbols: Sequence[str] | None = None,
        known: Sequence[str] | None = None,
        at: datetime = T,
        loader: Any = None,
        **producer: Any,
    ) -> Rig:
        symbols = list(symbols or fresh_symbols())
        clock = Clock(at)
        server, base_url = start_simulator(port=0, seed=7, symbols=known or symbols, clock=clock.seconds)
        config = producer_config(pg_config, base_url, symbols, **producer)
        real_loader = PostgresLoader(config.postgres, application_name="test-producer")
        client = BinanceClient(config.binance)
        prod = Producer(config, client, loader or real_loader, now=clock.now)
        rig = Rig(config, server, clock, real_loader, client, prod, symbols)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.client.close()
        rig.loader.close()
        rig.server.stop()


def snapshot(conn: Any, symbols: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with conn.cursor() as cur:
        for table in TABLES:
            cur.execute(f"SELECT * FROM {table} WHERE symbol = ANY(%s) ORDER BY 1, 2, 3", (list(symbols),))
            out[table] = list(cur.fetchall())
    return out


def counts(reports: Sequence[CycleReport]) -> dict[str, tuple[int, int, int]]:
    return {
        r.endpoint: (r.result.inserted, r.result.updated, r.result.deleted) if r.result else (-1, -1, -1)
        for r in reports
    }


# --- cycles ------------------------------------------------------------------------------------------


def test_one_cycle_fills_all_five_tables_and_an_identical_one_changes_nothing(
    rig_factory: Callable[..., Rig], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory()
    caplog.set_level(logging.INFO, logger="producer")
    first = rig.producer.run_once()
    assert [r.endpoint for r in first] == list(ENDPOINTS)
    assert all(r.ok for r in first), [r.line() for r in first]
    data = snapshot(pg_conn, rig.symbols)
    assert {t: len(rows) for t, rows in data.items()} == {
        "latest_prices": 2,
        "order_book_levels": 2 * 2 * 10,
        "trades": 2 * 50,
        "klines": 2 * 2 * 30,
        "ticker_24hr": 2,
    }
    # (Retention may delete other tests' old snapshots: `deleted` of depth is not ours to predict.)
    assert {e: c[:2] for e, c in counts(first).items()} == {
        "ticker_price": (2, 0),
        "depth": (40, 0),
        "trades": (100, 0),
        "klines": (120, 0),
        "ticker_24hr": (2, 0),
    }
    # One line per endpoint and cycle, with what it did.
    lines = [r.getMessage() for r in caplog.records if r.name == "producer"]
    assert len(lines) == 5
    assert lines[1].startswith(
        f"depth: symbols={','.join(rig.symbols)} ok=2/2 inserted=40 updated=0 deleted="
    )
    assert lines[2].startswith(
        f"trades: symbols={','.join(rig.symbols)} ok=2/2 inserted=100 updated=0 deleted=0 rejected=0 weight="
    )
    assert "rejected=0 weight=" in lines[1] and "duration=" in lines[1]
    # weight: what the cycle's own requests weighed; weight_1m: the host's minute, every cycle's so far.
    assert [int(r.line().split(" weight=")[1].split()[0]) for r in first] == [4, 10, 50, 8, 4]
    assert [int(r.line().split(" weight_1m=")[1].split()[0]) for r in first] == [4, 14, 64, 72, 76]

    second = rig.producer.run_once()
    assert all(r.ok for r in second)
    assert counts(second) == dict.fromkeys(ENDPOINTS, (0, 0, 0))
    assert snapshot(pg_conn, rig.symbols) == data


def test_the_open_kline_is_updated_as_time_moves(rig_factory: Callable[..., Rig], pg_conn: Any) -> None:
    rig = rig_factory()
    rig.producer.run_once()
    before = {(s, i, t): (c, v) for s, i, t, c, v in snapshot_klines(pg_conn, rig.symbols)}
    rig.advance(25)  # still inside the same minute and hour
    report = rig.producer.run_endpoint("klines")
    assert report.ok and report.result is not None
    # One open kline per symbol and interval changed; closed ones did not; none is new.
    assert (report.result.inserted, report.result.updated) == (0, 4)
    after = {(s, i, t): (c, v) for s, i, t, c, v in snapshot_klines(pg_conn, rig.symbols)}
    changed = sorted(k for k in after if after[k] != before[k])
    newest = {(s, i): max(t for s2, i2, t in after if (s2, i2) == (s, i)) for s, i, _ in after}
    assert changed == sorted((s, i, t) for (s, i), t in newest.items())

    rig.advance(60)  # a new minute: the 1m kline that was open closes and a new one opens
    report = rig.producer.run_endpoint("klines")
    assert report.result is not None and report.result.inserted == 2


def snapshot_klines(conn: Any, symbols: Sequence[str]) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            'SELECT symbol, "interval", open_time, close_price, volume FROM klines WHERE symbol = ANY(%s)',
            (list(symbols),),
        )
        return list(cur.fetchall())


def test_old_order_book_snapshots_are_deleted(rig_factory: Callable[..., Rig], pg_conn: Any) -> None:
    rig = rig_factory(at=T - timedelta(hours=2), orderbook_retention_seconds=3600)
    first = rig.producer.run_endpoint("depth")
    assert first.result is not None and first.result.inserted == 40
    rig.advance(1800)  # 1.5 h old now: kept
    assert rig.producer.run_endpoint("depth").result.inserted == 40  # type: ignore[union-attr]
    rig.advance(5400)  # the first snapshot is 3 h old, the second 1.5 h: both go
    report = rig.producer.run_endpoint("depth")
    assert report.result is not None
    assert report.result.inserted == 40 and report.result.deleted >= 80
    with pg_conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT snapshot_time FROM order_book_levels WHERE symbol = ANY(%s)", (rig.symbols,)
        )
        assert cur.fetchall() == [(rig.clock.at,)]


# --- trouble ---------------------------------------------------------------------------------------


def test_an_unknown_symbol_is_logged_once_and_skipped(
    rig_factory: Callable[..., Rig], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = fresh_symbols(2)
    rig = rig_factory(symbols=[bad, good], known=[good])
    caplog.set_level(logging.INFO, logger="producer")
    reports = rig.producer.run_once() + rig.producer.run_once()
    assert all(r.ok for r in reports)
    assert rig.producer.invalid_symbols == {bad}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"symbol {bad} is not listed on Binance" in errors[0]
    assert rig.requests("/api/v3/ticker/price", bad) == 1  # asked once, never again
    assert sum(rig.requests(p, bad) for p in ("/api/v3/depth", "/api/v3/trades", "/api/v3/klines")) == 0
    data = snapshot(pg_conn, [good, bad])
    assert all(rows and {row[0] for row in rows} == {good} for rows in data.values())


def test_a_rate_limit_pauses_every_endpoint_until_it_ends(
    rig_factory: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory()
    rig.fault(mode="429", endpoint="/api/v3/depth", retry_after=1)
    caplog.set_level(logging.INFO, logger="producer")
    reports = rig.producer.run_once()
    assert [r.ok for r in reports] == [True, False, False, False, False]
    assert reports[1].failed == [f"{rig.symbols[0]}: rate limited"]
    assert all(r.skipped and "rate limit" in r.skipped for r in reports[2:])
    assert rig.requests("/api/v3/depth") == 1 and rig.requests("/api/v3/trades") == 0
    assert any("every endpoint pauses" in r.getMessage() for r in caplog.records)
    time.sleep(max(rig.producer.paused_until - time.monotonic(), 0) + 0.05)
    rig.server.sim.reset()  # the frozen simulator clock would never see its own pause end
    assert all(r.ok for r in rig.producer.run_once())


def test_binance_errors_and_malformed_records_spare_the_rest(
    rig_factory: Callable[..., Rig], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory()
    first, second = rig.symbols
    rig.fault(mode="503", endpoint="/api/v3/ticker/price", symbol=first, count=-1)
    rig.fault(mode="garbage_numbers", endpoint="/api/v3/trades", symbol=second)
    rig.fault(mode="malformed", endpoint="/api/v3/ticker/24hr", symbol=second, count=-1)
    rig.fault(mode="missing_field", endpoint="/api/v3/klines", symbol=first, field=4)
    caplog.set_level(logging.INFO, logger="producer")
    reports = {r.endpoint: r for r in rig.producer.run_once()}
    assert all(r.ok for r in reports.values()), [r.line() for r in reports.values()]
    assert (
        reports["ticker_price"].fetched == 1
        and "BinanceUnavailableError" in reports["ticker_price"].failed[0]
    )
    assert reports["trades"].rejected == 1 and reports["trades"].result.inserted == 99  # type: ignore[union-attr]
    assert reports["klines"].rejected == 1 and reports["klines"].result.inserted == 119  # type: ignore[union-attr]
    assert reports["ticker_24hr"].fetched == 1 and len(reports["ticker_24hr"].failed) == 1
    rejected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected record")]
    assert any("field close" in m for m in rejected) and any("trades" in m for m in rejected)
    data = snapshot(pg_conn, rig.symbols)
    assert [row[0] for row in data["latest_prices"]] == [second]
    assert [row[0] for row in data["ticker_24hr"]] == [first]


class DownLoader:
    def load(
        self, table: str, rows: Sequence[tuple[Any, ...]], *, delete_before: datetime | None = None
    ) -> LoadResult:
        raise DatabaseError("load failed: PostgreSQL is down (test)")


def test_postgres_down_fails_the_cycle_without_raising(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(loader=DownLoader())
    reports = rig.producer.run_once()
    assert len(reports) == 5 and not any(r.ok for r in reports)
    assert all("PostgreSQL is down" in (r.load_error or "") for r in reports)


def test_stop_during_a_load_lets_it_commit_then_returns(
    rig_factory: Callable[..., Rig], pg_conn: Any
) -> None:
    rig = rig_factory()

    class StopWhileLoading:
        loads: list[str] = []

        def load(
            self, table: str, rows: Sequence[tuple[Any, ...]], *, delete_before: datetime | None = None
        ) -> LoadResult:
            if table == "trades":
                rig.producer.stop("test")  # as a SIGTERM arriving mid-transaction would
            self.loads.append(table)
            return rig.loader.load(table, rows, delete_before=delete_before)

    rig.producer.loader = StopWhileLoading()
    started = time.monotonic()
    rig.producer.run_forever()
    assert time.monotonic() - started < 5
    assert StopWhileLoading.loads == ["latest_prices", "order_book_levels", "trades"]
    data = snapshot(pg_conn, rig.symbols)
    assert len(data["trades"]) == 100 and data["klines"] == []


def test_run_forever_keeps_each_endpoint_on_its_interval(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    seen: list[str] = []
    run = rig.producer.run_endpoint

    def counting(endpoint: str) -> CycleReport:
        seen.append(endpoint)
        if len(seen) >= 12:
            rig.producer.stop("test")
        return run(endpoint)

    rig.producer.run_endpoint = counting  # type: ignore[method-assign]
    rig.producer.config = dataclasses.replace(
        rig.config,
        binance=dataclasses.replace(
            rig.config.binance,
            endpoints=dataclasses.replace(
                rig.config.binance.endpoints,
                ticker_price=TickerPriceEndpoint(interval_seconds=0.1),
                depth=DepthEndpoint(interval_seconds=30, limit=10),
            ),
        ),
    )
    rig.producer.run_forever()
    assert seen[:5] == list(ENDPOINTS)  # everything at the start
    assert seen.count("depth") == 1 and seen.count("ticker_price") >= 4


def test_rate_limited_error_from_a_fake_client_sets_the_pause(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()

    class Banned:
        weight_used = 0

        def __getattr__(self, name: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                raise RateLimitedError(status=418, host="x", until=time.monotonic() + 300, retry_after=300)

            return call

    rig.producer.client = Banned()  # type: ignore[assignment]
    reports = rig.producer.run_once()
    assert rig.producer.paused_until > time.monotonic() + 250
    assert reports[0].failed and all(r.skipped for r in reports[1:])


# --- the command line ------------------------------------------------------------------------------


def cli_env(pg_config: PipelineConfig, base_url: str, symbols: Sequence[str], **extra: str) -> dict[str, str]:
    pg = pg_config.postgres
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE__")}
    env.update(
        {
            "PRODUCER_PASSWORD": env.get("PRODUCER_PASSWORD") or "unused",
            "DEBEZIUM_PASSWORD": env.get("DEBEZIUM_PASSWORD") or "unused",
            "CASSANDRA_PASSWORD": env.get("CASSANDRA_PASSWORD") or "unused",
            "PIPELINE__POSTGRES__HOST": pg.host,
            "PIPELINE__POSTGRES__PORT": str(pg.port),
            "PIPELINE__POSTGRES__DBNAME": pg.dbname,
            "PIPELINE__POSTGRES__USER": pg.user,
            "PIPELINE__POSTGRES__PASSWORD": pg.password.reveal(),
            "PIPELINE__BINANCE__BASE_URL": base_url,
            "PIPELINE__BINANCE__SYMBOLS": ",".join(symbols),
            "PIPELINE__BINANCE__MAX_ATTEMPTS": "1",
            "PIPELINE__BINANCE__ENDPOINTS__TRADES__LIMIT": "20",
            "PIPELINE__BINANCE__ENDPOINTS__KLINES__LIMIT": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def simulator() -> Iterator[tuple[SimulatorServer, str, list[str]]]:
    symbols = fresh_symbols()
    server, base_url = start_simulator(port=0, seed=3, symbols=symbols)
    yield server, base_url, symbols
    server.stop()


def run_cli(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_once(
    pg_config: PipelineConfig, simulator: tuple[SimulatorServer, str, list[str]], pg_conn: Any
) -> None:
    _, base_url, symbols = simulator
    proc = run_cli(["--once"], cli_env(pg_config, base_url, symbols))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " producer: " in line and "symbols=" in line]
    assert [line.split(" producer: ")[1].split(":")[0] for line in lines] == list(ENDPOINTS)
    assert all("inserted=" in line and " weight=" in line and " weight_1m=" in line and "duration=" in line
               for line in lines)
    assert all(snapshot(pg_conn, symbols).values())


def test_cli_once_fails_when_every_endpoint_fails(
    pg_config: PipelineConfig, simulator: tuple[SimulatorServer, str, list[str]]
) -> None:
    _, base_url, symbols = simulator
    proc = run_cli(
        ["--once"],
        cli_env(
            pg_config,
            base_url,
            symbols,
            PIPELINE__POSTGRES__PORT="1",
            PIPELINE__POSTGRES__CONNECT_TIMEOUT_SECONDS="2",
        ),
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("load FAILED: cannot connect") == 5
    assert "Traceback" not in proc.stderr


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("binance: {symbols: []}\n")
    proc = run_cli(["--config", str(bad), "--once"], dict(os.environ))
    assert proc.returncode == 2
    assert "binance.symbols" in proc.stderr and "Traceback" not in proc.stderr


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigterm_stops_the_running_producer_with_status_0(
    pg_config: PipelineConfig, simulator: tuple[SimulatorServer, str, list[str]], pg_conn: Any
) -> None:
    server, base_url, symbols = simulator
    env = cli_env(
        pg_config, base_url, symbols, PIPELINE__BINANCE__ENDPOINTS__TICKER_PRICE__INTERVAL_SECONDS="0.2"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        # Past the first round of every endpoint, and polling ticker_price again.
        wait_for(
            lambda: (
                server.sim.stats()["requests"].get("/api/v3/ticker/24hr", 0) >= 2
                and server.sim.stats()["requests"].get("/api/v3/ticker/price", 0) >= 6
            ),
            30,
            "producer cycles",
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM: finishing the current write" in stderr and "producer stopped (SIGTERM)" in stderr
    assert "Traceback" not in stderr
    assert all(snapshot(pg_conn, symbols).values())


def test_a_second_signal_exits_at_once(
    pg_config: PipelineConfig, simulator: tuple[SimulatorServer, str, list[str]]
) -> None:
    server, base_url, symbols = simulator
    server.sim.add_faults([Fault.parse({"mode": "slow", "delay": 20, "endpoint": "/api/v3/ticker/price"})])
    env = cli_env(pg_config, base_url, symbols, PIPELINE__BINANCE__READ_TIMEOUT_SECONDS="60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: server.sim.stats()["requests"].get("/api/v3/ticker/price", 0) >= 1, 30, "a request")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)   # the same Ctrl-C delivered twice (process group and parent)
        time.sleep(0.3)
        assert proc.poll() is None  # the first signal waits for the slow answer; its repeat changes nothing
        time.sleep(StopSignals.REPEAT_WINDOW)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "second SIGTERM: exiting now" in stderr


def test_sigterm_while_waiting_for_weight_budget_exits_at_once(
    pg_config: PipelineConfig, simulator: tuple[SimulatorServer, str, list[str]]
) -> None:
    """The client's rate limiter sleeps through the producer, so a stop cuts a budget wait short."""
    server, base_url, symbols = simulator
    # ticker_price (2 x 2) + depth (2 x 5) leave 16 of 30: the first trades call (25) waits a minute.
    env = cli_env(pg_config, base_url, symbols, PIPELINE__BINANCE__WEIGHT_BUDGET_PER_MINUTE="30")
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: server.sim.stats()["requests"].get("/api/v3/depth", 0) >= 2, 30, "depth requests")
        time.sleep(0.5)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "trades: " in stderr and "(interrupted by shutdown; nothing loaded)" in stderr
    assert server.sim.stats()["requests"].get("/api/v3/trades", 0) == 0
