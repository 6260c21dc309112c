"""producer.backfill against the simulator (frozen clock) and PostgreSQL: paging, resuming, the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig
from producer.app import Producer
from producer.backfill import backfill, interval_ms, parse_time, previous_open
from producer.binance import BinanceClient
from producer.errors import BinanceUnavailableError, InvalidSymbolError, RateLimitedError
from producer.load import PostgresLoader
from producer.simulator import Fault, SimulatorServer, start_simulator
from producer.transform import to_epoch_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)  # the simulator's frozen clock


class Frozen:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


@dataclasses.dataclass
class Rig:
    server: SimulatorServer
    clock: Frozen
    client: BinanceClient
    loader: PostgresLoader
    symbol: str
    config: PipelineConfig

    def klines_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.server.sim.stats()["recent"] if r["path"] == "/api/v3/klines"]


@pytest.fixture
def rig(pg_config: PipelineConfig) -> Iterator[Rig]:
    symbol = "B" + secrets.token_hex(5).upper() + "USDT"
    clock = Frozen(NOW)
    server, base_url = start_simulator(port=0, seed=11, symbols=[symbol], clock=clock)
    config = dataclasses.replace(
        pg_config,
        binance=dataclasses.replace(
            pg_config.binance,
            base_url=base_url,
            symbols=(symbol,),
            max_attempts=1,
            weight_budget_per_minute=600,
        ),
    )
    with BinanceClient(config.binance) as client, PostgresLoader(config.postgres) as loader:
        yield Rig(server, clock, client, loader, symbol, config)
    server.stop()


def stored(conn: Any, symbol: str, interval: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT open_time, close_time, close_price, volume FROM klines WHERE symbol = %s "
            'AND "interval" = %s ORDER BY open_time',
            (symbol, interval),
        )
        return list(cur.fetchall())


def test_pages_through_history_and_resumes(rig: Rig, pg_conn: Any) -> None:
    since = NOW - timedelta(hours=1500)  # 2023-12-30 00:30: the first whole hour opens at 01:00
    result = backfill(rig.client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    rows = stored(pg_conn, rig.symbol, "1h")
    assert (result.pages, result.klines, result.inserted, result.updated, result.rejected) == (
        2,
        1500,
        1500,
        0,
        0,
    )
    assert len(rows) == 1500
    assert rows[0][0] == datetime(2023, 12, 30, 1, tzinfo=UTC)
    assert rows[-1][0] == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert all(b[0] - a[0] == timedelta(hours=1) for a, b in itertools.pairwise(rows))
    assert rows[0][1] == datetime(2023, 12, 30, 1, 59, 59, 999000, tzinfo=UTC)
    requests = rig.klines_requests()
    assert len(requests) == 2 and all(r["weight"] == 2 for r in requests)

    # Run again: one page from the newest stored kline, which has not changed (the clock is frozen).
    again = backfill(rig.client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    assert again.resumed_from == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert (again.pages, again.klines, again.inserted, again.updated) == (1, 1, 0, 0)

    # Later: the kline that was open closes (updated), the new ones are inserted.
    rig.clock.at = NOW + timedelta(hours=3, minutes=10)
    later = backfill(rig.client, rig.loader, rig.symbol, "1h", since, rig.clock.at, progress=False)
    assert (later.klines, later.inserted, later.updated) == (4, 3, 1)
    assert len(stored(pg_conn, rig.symbol, "1h")) == 1503


def hours(rows: list[tuple[Any, ...]]) -> list[datetime]:
    return [r[0] for r in rows]


def contiguous(opens: list[datetime], first: datetime, last: datetime, step: timedelta) -> bool:
    return opens == [first + n * step for n in range((last - first) // step + 1)]


def test_history_is_filled_after_the_live_producer_stored_recent_klines(rig: Rig, pg_conn: Any) -> None:
    # The live producer keeps the newest 100 candles of 1m and 1h: the newest stored 1h kline is the
    # open one, yet none of the history since 2024-01-01 is there.
    live = Producer(rig.config, rig.client, rig.loader, now=lambda: NOW).run_endpoint("klines")
    assert live.ok and live.result is not None and live.result.inserted == 200
    assert len(stored(pg_conn, rig.symbol, "1h")) == 100
    rig.server.sim.reset()

    since = datetime(2024, 1, 1, tzinfo=UTC)
    result = backfill(rig.client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    opens = hours(stored(pg_conn, rig.symbol, "1h"))
    last = datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert contiguous(opens, since, last, timedelta(hours=1)) and len(opens) == 1453
    assert result.resumed_from is None and result.start == since
    assert (result.klines, result.inserted, result.updated) == (1453, 1353, 0)
    # One look at whether Binance has klines before the stored ones, then two pages.
    assert (result.probes, result.pages, len(rig.klines_requests())) == (1, 2, 3)
    assert len(stored(pg_conn, rig.symbol, "1m")) == 100, "the other interval is left alone"

    # Run again: it resumes at the newest kline of the unbroken run, with one request.
    rig.server.sim.reset()
    again = backfill(rig.client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    assert again.resumed_from == last
    assert (again.probes, again.pages, again.klines, again.inserted) == (0, 1, 1, 0)
    assert len(rig.klines_requests()) == 1


class GoesAway:
    """The real client, until Binance stops answering after `calls` kline requests."""

    def __init__(self, client: BinanceClient, calls: int) -> None:
        self.client, self.calls = client, calls

    @property
    def weight_used(self) -> int:
        return self.client.weight_used

    def klines(self, symbol: str, interval: str, limit: int, start_time_ms: int | None = None,
               end_time_ms: int | None = None) -> list[Any]:
        if self.calls == 0:
            raise BinanceUnavailableError("Binance went away (test)")
        self.calls -= 1
        return self.client.klines(symbol, interval, limit, start_time_ms, end_time_ms)


def test_an_interrupted_backfill_resumes_where_it_stopped(rig: Rig, pg_conn: Any) -> None:
    since = datetime(2024, 1, 1, tzinfo=UTC)
    Producer(rig.config, rig.client, rig.loader, now=lambda: NOW).run_endpoint("klines")
    # The first run stops after its first page of 300 (the probe before it is a request too).
    with pytest.raises(BinanceUnavailableError):
        backfill(GoesAway(rig.client, 2), rig.loader, rig.symbol, "1h", since, NOW, page_limit=300,
                 progress=False)
    assert len(stored(pg_conn, rig.symbol, "1h")) == 300 + 100
    rig.server.sim.reset()
    resumed = backfill(rig.client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    assert resumed.resumed_from == since + timedelta(hours=299)
    assert resumed.probes == 1  # the gap: Binance has its klines, so they are fetched
    assert (resumed.pages, resumed.klines, resumed.inserted) == (2, 1154, 1053)
    opens = hours(stored(pg_conn, rig.symbol, "1h"))
    assert contiguous(opens, since, datetime(2024, 3, 1, 12, tzinfo=UTC), timedelta(hours=1))


def test_a_gap_binance_has_too_is_not_fetched_again(rig: Rig, pg_conn: Any) -> None:
    # Before the listing (the simulator's first trade is on 2017-08-17) there are no klines.
    since = datetime(2017, 1, 1, tzinfo=UTC)
    first = backfill(rig.client, rig.loader, rig.symbol, "1d", since, NOW, progress=False)
    opens = hours(stored(pg_conn, rig.symbol, "1d"))
    assert opens[0] == datetime(2017, 8, 17, tzinfo=UTC) and first.klines == len(opens) == 2389
    assert contiguous(opens, opens[0], datetime(2024, 3, 1, tzinfo=UTC), timedelta(days=1))
    rig.server.sim.reset()
    again = backfill(rig.client, rig.loader, rig.symbol, "1d", since, NOW, progress=False)
    assert again.resumed_from == datetime(2024, 3, 1, tzinfo=UTC)
    assert (again.probes, again.pages, again.klines) == (1, 1, 1)
    assert len(rig.klines_requests()) == 2


class Outage:
    """The real client, but Binance has no klines opening in [start, stop) (an exchange outage).

    `calls` counts the requests Binance would have had (one per call).
    """

    def __init__(self, client: BinanceClient, start: datetime, stop: datetime) -> None:
        self.client, self.start, self.stop = client, to_epoch_ms(start), to_epoch_ms(stop)
        self.calls = 0

    @property
    def weight_used(self) -> int:
        return self.client.weight_used

    def klines(self, symbol: str, interval: str, limit: int, start_time_ms: int | None = None,
               end_time_ms: int | None = None) -> list[Any]:
        self.calls += 1
        page = self.client.klines(symbol, interval, limit, start_time_ms, end_time_ms)
        before = [k for k in page if k[0] < self.start]
        if len(before) == len(page) or (start_time_ms is not None and start_time_ms >= self.stop):
            return page
        # Binance would go on with what follows the outage.
        return before + self.client.klines(symbol, interval, limit - len(before), self.stop, end_time_ms)


def test_an_exchange_outage_costs_one_probe_per_run(rig: Rig, pg_conn: Any) -> None:
    since, gap = datetime(2024, 2, 1, tzinfo=UTC), (datetime(2024, 2, 10, tzinfo=UTC), datetime(2024, 2, 11,
                                                                                                 tzinfo=UTC))
    client = Outage(rig.client, *gap)
    first = backfill(client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    opens = hours(stored(pg_conn, rig.symbol, "1h"))
    assert len(opens) == first.klines == 29 * 24 + 13 - 24 and gap[0] - timedelta(hours=1) in opens
    client.calls = 0
    again = backfill(client, rig.loader, rig.symbol, "1h", since, NOW, progress=False)
    assert again.resumed_from == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert (again.probes, again.pages, again.klines, client.calls) == (1, 1, 1, 2)


def test_previous_open() -> None:
    assert previous_open(datetime(2024, 3, 1, tzinfo=UTC), "1M") == datetime(2024, 2, 1, tzinfo=UTC)
    assert previous_open(datetime(2024, 1, 1, tzinfo=UTC), "1M") == datetime(2023, 12, 1, tzinfo=UTC)
    assert previous_open(datetime(2024, 1, 1, tzinfo=UTC), "1w") == datetime(2023, 12, 25, tzinfo=UTC)
    assert previous_open(datetime(2024, 1, 1, tzinfo=UTC), "15m") == datetime(2023, 12, 31, 23, 45,
                                                                              tzinfo=UTC)


def test_until_is_exclusive_and_intervals_are_separate(rig: Rig, pg_conn: Any) -> None:
    since, until = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC)
    result = backfill(rig.client, rig.loader, rig.symbol, "15m", since, until, progress=False)
    rows = stored(pg_conn, rig.symbol, "15m")
    assert result.klines == len(rows) == 96
    assert rows[-1][0] == datetime(2024, 2, 1, 23, 45, tzinfo=UTC)
    assert stored(pg_conn, rig.symbol, "1h") == []
    # A resume from a later --since than what is stored starts at --since.
    later = backfill(
        rig.client,
        rig.loader,
        rig.symbol,
        "15m",
        until + timedelta(days=1),
        until + timedelta(days=1, hours=1),
        progress=False,
    )
    assert later.resumed_from is None and later.inserted == 4


def test_a_rate_limit_is_waited_out(rig: Rig, pg_conn: Any) -> None:
    rig.server.sim.add_faults([Fault.parse({"mode": "429", "endpoint": "/api/v3/klines", "retry_after": 1})])
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        rig.server.sim.reset()  # the frozen simulator clock would never see its pause end
        rig.client.limiter._ban = None  # nor would the client's, without really sleeping

    result = backfill(
        rig.client,
        rig.loader,
        rig.symbol,
        "1d",
        datetime(2023, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, tzinfo=UTC),
        progress=False,
        sleep=sleep,
    )
    assert len(waits) == 1 and 0.5 <= waits[0] <= 1.5
    assert result.klines == 365 == len(stored(pg_conn, rig.symbol, "1d"))


def test_unknown_symbol_raises(rig: Rig) -> None:
    with pytest.raises(InvalidSymbolError):
        backfill(rig.client, rig.loader, "NOSUCHCOIN", "1h", NOW - timedelta(days=1), NOW, progress=False)


def test_malformed_records_are_rejected_and_paging_goes_on(
    rig: Rig, pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig.server.sim.add_faults([Fault.parse({"mode": "garbage_numbers", "endpoint": "/api/v3/klines"})])
    caplog.set_level(logging.WARNING)
    result = backfill(
        rig.client, rig.loader, rig.symbol, "1h", NOW - timedelta(hours=1200), NOW, progress=False
    )
    assert (result.klines, result.rejected, result.pages) == (1199, 1, 2)
    assert any("rejected record" in r.getMessage() for r in caplog.records)


def test_parse_time_and_interval_ms() -> None:
    assert parse_time("2024-01-01") == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_time("2024-01-01T12:30Z") == datetime(2024, 1, 1, 12, 30, tzinfo=UTC)
    assert parse_time("2024-01-01T12:30:00+02:00") == datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(Exception, match="expected a date"):
        parse_time("yesterday")
    assert [interval_ms(i) for i in ("1s", "3m", "1h", "1d", "1w")] == [
        1000,
        180_000,
        3_600_000,
        86_400_000,
        604_800_000,
    ]
    assert to_epoch_ms(parse_time("1970-01-02")) == 86_400_000


def test_rate_limited_error_type_is_what_the_client_raises(rig: Rig) -> None:
    rig.server.sim.add_faults([Fault.parse({"mode": "418", "endpoint": "/api/v3/klines", "retry_after": 5})])
    with pytest.raises(RateLimitedError):
        rig.client.klines(rig.symbol, "1h", 10)


# --- the command line ----------------------------------------------------------------------------


def cli(rig: Rig, pg_config: PipelineConfig, *args: str) -> subprocess.CompletedProcess[str]:
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
            "PIPELINE__BINANCE__BASE_URL": rig.config.binance.base_url,
            "PIPELINE__BINANCE__MAX_ATTEMPTS": "1",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "producer", "backfill", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_backfill_progress_and_resume(rig: Rig, pg_config: PipelineConfig, pg_conn: Any) -> None:
    args = [
        "--symbol",
        rig.symbol.lower(),
        "--interval",
        "4h",
        "--since",
        "2023-06-01",
        "--until",
        "2024-02-01",
    ]
    first = cli(rig, pg_config, *args)
    assert first.returncode == 0, first.stderr
    assert "kline" in first.stderr and "100%" in first.stderr  # tqdm's bar, on stderr
    assert f"backfill {rig.symbol} 4h" in first.stderr and "inserted 1470, updated 0" in first.stderr
    assert first.stdout == ""
    assert len(stored(pg_conn, rig.symbol, "4h")) == 1470
    second = cli(rig, pg_config, *args, "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "resumed at 2024-01-31 20:00Z" in second.stderr and "1 klines in 1 pages" in second.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (
            ["--symbol", "NOSUCHCOIN", "--interval", "1h", "--since", "2024-01-01", "--until", "2024-01-02"],
            1,
            "Invalid symbol",
        ),
        (["--symbol", "BTCUSDT", "--interval", "7m", "--since", "2024-01-01"], 2, "invalid choice"),
        (["--symbol", "BTCUSDT", "--interval", "1h", "--since", "soon"], 2, "expected a date"),
        (
            ["--symbol", "BTCUSDT", "--interval", "1h", "--since", "2024-02-01", "--until", "2024-01-01"],
            2,
            "is not after",
        ),
    ],
)
def test_cli_errors(rig: Rig, pg_config: PipelineConfig, args: list[str], status: int, message: str) -> None:
    proc = cli(rig, pg_config, *args)
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
