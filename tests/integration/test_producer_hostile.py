"""The producer against a hostile Binance: the simulator (in this process, port 0) misbehaving while the
producer runs against the real PostgreSQL.

For every kind of trouble -- a storm of 429s, a 418 ban, 5xx, answers slower than the read timeout,
truncated and malformed JSON, numbers that are garbage strings, a missing field -- three things hold:
* the producer carries on: `run_once` returns (no "cycle failed unexpectedly" either), and the
  `python -m producer` process stays up until SIGTERM, then exits 0;
* nothing is sent while a 429/418 pause runs (checked against the arrival times the simulator records,
  and the simulator's own count of requests that broke a pause);
* what reaches the tables is exactly what the simulator served: a rejected record is missing alone, and
  once the trouble is over the tables equal the simulator's own data, value for value.

The simulator's clock is frozen (its market then answers every request alike), except that it jumps to
the end of each 429/418 pause it imposes at the moment the pause ends in real time: a request that
arrives early is one the simulator itself counts as a violation (and answers with a 418).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from test_producer_e2e import TABLES, cli_env, fresh_symbols, producer_config, snapshot

from pipeline.config import PipelineConfig, load
from producer.app import ENDPOINTS, CycleReport, Producer
from producer.binance import BinanceClient
from producer.load import PostgresLoader
from producer.simulator import Fault, SimulatorServer, start_simulator
from producer.simulator_data import Market

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "config" / "pipeline.yaml"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TICKER_PRICE, DEPTH, TRADES, KLINES, TICKER_24HR = (
    "/api/v3/ticker/price", "/api/v3/depth", "/api/v3/trades", "/api/v3/klines", "/api/v3/ticker/24hr"
)
Rows = dict[str, set[tuple[Any, ...]]]


# --- a clock that is frozen except through the simulator's pauses ----------------------------------


class SimTime:
    """The simulator's base clock (epoch seconds) and the producer's `now`: frozen at `start`, and moved
    only by `jump`, which takes effect from a given time.monotonic() on."""

    def __init__(self, start: float) -> None:
        self.start = start
        self._jumps: list[tuple[float, float]] = []  # (from this monotonic time, read this value)
        self._lock = threading.Lock()

    def jump(self, at: float, to: float) -> None:
        with self._lock:
            self._jumps.append((at, to))

    def seconds(self) -> float:
        now = time.monotonic()
        with self._lock:
            return max([self.start, *(to for at, to in self._jumps if now >= at)])

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.seconds(), UTC)


@dataclasses.dataclass(frozen=True)
class Pause:
    status: int  # 429 or 418
    t: float  # time.monotonic() when the answer's request arrived
    seconds: float  # its Retry-After: nothing may arrive before t + seconds


class PauseWatch:
    """Follows the simulator's answers; at each 429/418, records the pause it announced and makes the
    simulated clock reach the pause's end at the moment real time does."""

    def __init__(self, server: SimulatorServer, clock: SimTime) -> None:
        self.server, self.clock = server, clock
        self.pauses: list[Pause] = []
        self._seen = 0

    def poll(self) -> None:
        stats = self.server.sim.stats()
        recent = stats["recent"]
        assert len(recent) < 2000, "the simulator's request log overflowed; the checks need all of it"
        for entry in recent[self._seen:]:
            if entry["status"] not in (429, 418):
                continue
            until_ms = stats["blocked_until_ms"]
            assert until_ms is not None, "the pause ended before the test saw it began"
            pause = (until_ms - entry["sim_ms"]) / 1000
            # The simulator announces Retry-After rounded up to whole seconds, at least 1.
            self.pauses.append(Pause(entry["status"], entry["t"], max(1, math.ceil(pause))))
            # (A millisecond past the end: the stats round it down.)
            self.clock.jump(entry["t"] + pause, (until_ms + 1) / 1000)
        self._seen = len(recent)
        self._assert_none_early(stats)

    def _assert_none_early(self, stats: dict[str, Any]) -> None:
        for pause in self.pauses:
            early = [
                f"{r['path']} {r['symbol']} {r['t'] - pause.t:.3f}s after the {pause.status}"
                for r in stats["recent"]
                if pause.t < r["t"] < pause.t + pause.seconds
            ]
            assert not early, f"sent during a {pause.seconds:.0f}s pause: {early}"
        assert stats["violations"] == 0, f"{stats['violations']} request(s) broke a 429/418 pause"

    def assert_quiet(self) -> None:
        """No request arrived while a pause ran, the simulator saw no violation, and the producer resumed."""
        stats = self.server.sim.stats()
        recent = stats["recent"]
        self._assert_none_early(stats)
        for pause in self.pauses:
            assert any(r["t"] >= pause.t + pause.seconds and r["status"] == 200 for r in recent), (
                f"nothing was asked for after the {pause.status} pause ended"
            )


# --- what the simulator served, built from its own market, not by the producer's code ------------


def _ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def served(market: Market, config: PipelineConfig, now_ms: int, now: datetime) -> Rows:
    """The rows of every table, in column order, for what the market answers at `now_ms`."""
    ep = config.binance.endpoints
    rows: Rows = {table: set() for table in TABLES}
    for s in config.binance.symbols:
        rows["latest_prices"].add((s, Decimal(market.ticker_price(s, now_ms)["price"]), now))
        book = market.depth(s, ep.depth.limit, now_ms)
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for level, (price, qty) in enumerate(book[key]):
                rows["order_book_levels"].add(
                    (s, book["lastUpdateId"], side, level, Decimal(price), Decimal(qty), now)
                )
        for t in market.trades(s, ep.trades.limit, now_ms):
            rows["trades"].add((s, t["id"], Decimal(t["price"]), Decimal(t["qty"]), Decimal(t["quoteQty"]),
                                _ms(t["time"]), t["isBuyerMaker"], t["isBestMatch"]))
        for interval in ep.klines.intervals:
            for k in market.klines(s, interval, ep.klines.limit, None, None, now_ms):
                rows["klines"].add((s, interval, _ms(k[0]), _ms(k[6]), *map(Decimal, k[1:6]),
                                    Decimal(k[7]), k[8], Decimal(k[9]), Decimal(k[10])))
        d = market.ticker_24hr(s, now_ms)
        rows["ticker_24hr"].add((
            s, *(Decimal(d[f]) for f in (
                "priceChange", "priceChangePercent", "weightedAvgPrice", "prevClosePrice", "lastPrice",
                "lastQty", "bidPrice", "bidQty", "askPrice", "askQty", "openPrice", "highPrice", "lowPrice",
                "volume", "quoteVolume")),
            _ms(d["openTime"]), _ms(d["closeTime"]), d["firstId"], d["lastId"], d["count"],
        ))
    return rows


# The column each table stamps with the producer's own clock (Binance sends no time for it).
_STAMPED = {"latest_prices": 2, "order_book_levels": 6}
ANY_TIME = "<a time within the test>"


def stamped_loosely(rows: Rows, lo: datetime, hi: datetime) -> Rows:
    """The producer-clock columns replaced by ANY_TIME when they fall within [lo, hi] (kept otherwise, so
    that a comparison shows them): for a producer whose clock is not the test's, or when a row may have
    been stamped by any of several cycles."""
    out = dict(rows)
    for table, col in _STAMPED.items():
        out[table] = {
            (*row[:col], ANY_TIME if lo <= row[col] <= hi else row[col], *row[col + 1:])
            for row in rows[table]
        }
    return out


def in_db(conn: Any, symbols: Sequence[str]) -> Rows:
    return {table: set(rows) for table, rows in snapshot(conn, symbols).items()}


def assert_tables(actual: Rows, expected: Rows) -> None:
    problems = []
    for table in TABLES:
        missing, extra = expected[table] - actual[table], actual[table] - expected[table]
        if missing or extra:
            problems.append(
                f"{table}: {len(missing)} row(s) missing, e.g. {sorted(missing, key=repr)[:2]}; "
                f"{len(extra)} unexpected, e.g. {sorted(extra, key=repr)[:2]}"
            )
    assert not problems, "\n".join(problems)


def minus(rows: Rows, table: str, keep: Callable[[tuple[Any, ...]], bool]) -> Rows:
    return {**rows, table: {row for row in rows[table] if keep(row)}}


# --- the in-process rig ----------------------------------------------------------------------------


def start_time() -> float:
    """10 s into a minute, a few minutes ago: no pause below crosses into another minute. Taken per test,
    so that order book retention (which goes by snapshot_time, across symbols) spares our snapshots."""
    return (datetime.now(UTC).replace(second=10, microsecond=0) - timedelta(minutes=5)).timestamp()


@dataclasses.dataclass
class Hostile:
    config: PipelineConfig
    server: SimulatorServer
    clock: SimTime
    watch: PauseWatch
    client: BinanceClient
    loader: PostgresLoader
    producer: Producer
    symbols: list[str]

    def fault(self, **fault: Any) -> None:
        self.server.sim.add_faults([Fault.parse(fault)])

    def cycle(self) -> list[CycleReport]:
        """One run_once, with the pauses it met followed."""
        reports = self.producer.run_once()
        self.watch.poll()
        return reports

    def run_until_clean(self, timeout: float = 15) -> list[list[CycleReport]]:
        """Cycles (idling while a pause runs) until every fault is used up and a whole cycle ran clean."""
        deadline = time.monotonic() + timeout
        cycles = []
        while True:
            reports = self.cycle()
            cycles.append(reports)
            if all(clean(r) for r in reports) and not self.server.sim.faults():
                return cycles
            assert time.monotonic() < deadline, f"no clean cycle in {timeout}s: {[r.line() for r in reports]}"
            if any(r.skipped for r in reports):
                time.sleep(0.02)

    def expected(self) -> Rows:
        return served(self.server.sim.market, self.config, self.server.sim.clock.now_ms(), self.clock.now())

    def requests(self, path: str, symbol: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.server.sim.stats()["recent"]
                if r["path"] == path and symbol in (None, r["symbol"])]


def clean(report: CycleReport) -> bool:
    return report.ok and not report.failed and not report.rejected and report.fetched == report.calls


@pytest.fixture
def hostile(pg_config: PipelineConfig, caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Hostile]]:
    """Makes a producer (real client, real loader) for two fresh symbols against a simulator on SimTime;
    afterwards, checks that no cycle died of an unexpected exception."""
    made: list[Hostile] = []
    caplog.set_level(logging.INFO, logger="producer")

    def make(**binance: Any) -> Hostile:
        symbols = fresh_symbols()
        clock = SimTime(start_time())
        server, base_url = start_simulator(port=0, seed=11, symbols=symbols, clock=clock.seconds)
        config = producer_config(pg_config, base_url, symbols)
        config = dataclasses.replace(config, binance=dataclasses.replace(config.binance, **binance))
        loader = PostgresLoader(config.postgres, application_name="test-producer-hostile")
        client = BinanceClient(config.binance)
        producer = Producer(config, client, loader, now=clock.now)
        rig = Hostile(config, server, clock, PauseWatch(server, clock), client, loader, producer, symbols)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.client.close()
        rig.loader.close()
        rig.server.stop()
    crashed = [r.getMessage() for r in caplog.records
               if r.exc_info or "failed unexpectedly" in r.getMessage()]
    assert not crashed, f"a cycle died of an unexpected exception: {crashed}"


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected record: ")]


# --- 429 and 418 -----------------------------------------------------------------------------------


def test_a_storm_of_429s_is_waited_out_without_one_early_request(
    hostile: Callable[..., Hostile], pg_conn: Any
) -> None:
    rig = hostile()
    rig.fault(mode="429", count=3, retry_after=1)  # whatever is asked next, three times running
    started = time.monotonic()
    cycles = rig.run_until_clean()
    assert [p.status for p in rig.watch.pauses] == [429, 429, 429]
    assert all(p.seconds == 1 for p in rig.watch.pauses)
    rig.watch.assert_quiet()
    assert time.monotonic() - started >= 3
    stats = rig.server.sim.stats()
    assert stats["statuses"].get("429") == 3 and "418" not in stats["statuses"]
    # Each 429 failed the call that met it and paused everything else; while paused, every endpoint skipped.
    first = cycles[0]
    assert first[0].failed == [f"{rig.symbols[0]}: rate limited"]
    assert all(r.skipped and "rate limit" in r.skipped for r in first[1:])
    assert_tables(in_db(pg_conn, rig.symbols), rig.expected())


def test_a_418_ban_mid_cycle_silences_every_endpoint_until_it_ends(
    hostile: Callable[..., Hostile], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = hostile()
    first, second = rig.symbols
    rig.fault(mode="418", retry_after=2, endpoint=DEPTH, symbol=first)
    banned_at = rig.clock.now()
    reports = rig.cycle()
    assert reports[0].ok and reports[0].result is not None and reports[0].result.inserted == 2
    assert reports[1].failed == [f"{first}: rate limited"] and reports[1].calls == 1  # not one more depth
    assert all(r.skipped and "rate limit" in r.skipped for r in reports[2:])
    assert [(p.status, p.seconds) for p in rig.watch.pauses] == [(418, 2)]
    assert any("answered HTTP 418" in m and "sending nothing for" in m
               for m in (r.getMessage() for r in caplog.records))
    # Cycle after cycle during the ban, nothing is sent at all.
    while time.monotonic() < rig.watch.pauses[0].t + 1.5:
        assert all(r.skipped for r in rig.cycle())
        time.sleep(0.05)
    assert rig.requests(DEPTH, second) == [] and rig.requests(TRADES) == []
    rig.run_until_clean()
    rig.watch.assert_quiet()
    stats = rig.server.sim.stats()
    assert stats["statuses"].get("418") == 1 and "429" not in stats["statuses"]
    # latest_prices was loaded before the ban and again after it: stamped by either cycle.
    end = rig.clock.now()
    assert_tables(
        stamped_loosely(in_db(pg_conn, rig.symbols), banned_at, end),
        stamped_loosely(rig.expected(), banned_at, end),
    )


# --- 5xx, timeouts, broken bodies ------------------------------------------------------------------


def test_5xx_answers_are_retried_and_a_lasting_one_fails_only_its_symbol(
    hostile: Callable[..., Hostile], pg_conn: Any
) -> None:
    rig = hostile()  # max_attempts=2
    first, second = rig.symbols
    for mode, path, symbol in (("500", TICKER_PRICE, first), ("502", DEPTH, second),
                               ("503", TRADES, first), ("504", KLINES, second)):
        rig.fault(mode=mode, endpoint=path, symbol=symbol)  # once: the retry gets through
    rig.fault(mode="503", endpoint=TICKER_24HR, symbol=second, count=2)  # both attempts of one cycle
    reports = {r.endpoint: r for r in rig.cycle()}
    assert all(r.ok for r in reports.values()), [r.line() for r in reports.values()]
    assert all(clean(reports[e]) for e in ENDPOINTS[:4]), [r.line() for r in reports.values()]
    assert len(reports["ticker_24hr"].failed) == 1
    assert reports["ticker_24hr"].failed[0].startswith(f"{second}: BinanceUnavailableError")
    assert "after 2 attempt(s): _BadResponse: HTTP 503" in reports["ticker_24hr"].failed[0]
    assert [r["status"] for r in rig.requests(TICKER_24HR, second)] == [503, 503]
    assert [r["status"] for r in rig.requests(TRADES, first)] == [503, 200]
    expected = rig.expected()
    assert_tables(in_db(pg_conn, rig.symbols), minus(expected, "ticker_24hr", lambda row: row[0] != second))
    rig.run_until_clean()
    assert_tables(in_db(pg_conn, rig.symbols), expected)
    assert rig.watch.pauses == []


def test_answers_slower_than_the_read_timeout_are_abandoned_and_retried(
    hostile: Callable[..., Hostile], pg_conn: Any
) -> None:
    rig = hostile(read_timeout_seconds=0.3)
    first, second = rig.symbols
    rig.fault(mode="slow", delay=1.5, endpoint=DEPTH, symbol=first)  # the retry is answered at once
    rig.fault(mode="slow", delay=1.5, endpoint=TRADES, symbol=second, count=2)  # both attempts time out
    started = time.monotonic()
    reports = {r.endpoint: r for r in rig.cycle()}
    took = time.monotonic() - started
    # Waiting for the answers would take 3 x 1.5 s.
    assert took < 3.5, f"a cycle waited {took:.1f}s on answers it should have given up on after 0.3s"
    assert clean(reports["depth"]), reports["depth"].line()
    assert reports["trades"].ok and len(reports["trades"].failed) == 1
    assert reports["trades"].failed[0].startswith(f"{second}: BinanceUnavailableError")
    assert "ReadTimeout" in reports["trades"].failed[0]
    assert len(rig.requests(DEPTH, first)) == 2 and len(rig.requests(TRADES, second)) == 2
    expected = rig.expected()
    assert_tables(in_db(pg_conn, rig.symbols), minus(expected, "trades", lambda row: row[0] != second))
    rig.run_until_clean()
    assert_tables(in_db(pg_conn, rig.symbols), expected)


def test_truncated_and_malformed_json_never_reach_the_tables(
    hostile: Callable[..., Hostile], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = hostile()
    first, second = rig.symbols
    # Retried, and the retry is answered well: no trace of them in the data.
    rig.fault(mode="disconnect", endpoint=TICKER_PRICE, symbol=second)
    rig.fault(mode="malformed", endpoint=TRADES, symbol=first)  # a 200 whose JSON is cut in half
    rig.fault(mode="error", status=200, body="<html><body>captive portal</body></html>", endpoint=DEPTH,
              symbol=first)
    rig.fault(mode="error", status=200, body='[[1,"2",', endpoint=KLINES, symbol=first)
    # Cut short twice: the first kline interval of `second` fails this cycle.
    rig.fault(mode="malformed", endpoint=KLINES, symbol=second, count=2)
    # Well-formed JSON of the wrong shape: rejected, not retried.
    rig.fault(mode="error", status=200, body='{"code": 0, "msg": "not a list"}', endpoint=TRADES,
              symbol=second)
    rig.fault(mode="error", status=200, body="null", endpoint=TICKER_24HR, symbol=first)
    rig.fault(mode="error", status=200, body=f'{{"symbol": "{first}", "price": 1.5}}',
              endpoint=TICKER_PRICE, symbol=first)  # a JSON float has already lost digits
    rig.fault(mode="error", status=200, body='{"lastUpdateId": 7, "bids": "none", "asks": []}',
              endpoint=DEPTH, symbol=second)
    reports = {r.endpoint: r for r in rig.cycle()}
    assert all(r.ok for r in reports.values()), [r.line() for r in reports.values()]
    assert [r.rejected for r in reports.values()] == [1, 1, 1, 0, 1]
    assert len(reports["klines"].failed) == 1
    assert reports["klines"].failed[0].startswith(f"{second} 1m: BinanceUnavailableError: ")
    assert "after 2 attempt(s): _BadResponse: HTTP 200 body is not JSON" in reports["klines"].failed[0]
    lines = rejected_lines(caplog)
    for text in (
        f"ticker_price symbol={first} field price: record 0: expected a decimal number as a string, "
        "got a JSON float",
        f"depth symbol={second} field bids: snapshot: expected a list, got a string",
        f"{TRADES} symbol={second} field <response>: expected a JSON array, got dict",
        f"{TICKER_24HR} symbol={first} field <response>: expected a JSON object, got NoneType",
    ):
        assert any(text in line for line in lines), (text, lines)
    expected = rig.expected()
    first_cycle = minus(expected, "latest_prices", lambda row: row[0] != first)
    first_cycle = minus(first_cycle, "order_book_levels", lambda row: row[0] != second)
    first_cycle = minus(first_cycle, "trades", lambda row: row[0] != second)
    first_cycle = minus(first_cycle, "klines", lambda row: row[:2] != (second, "1m"))
    first_cycle = minus(first_cycle, "ticker_24hr", lambda row: row[0] != first)
    assert_tables(in_db(pg_conn, rig.symbols), first_cycle)
    rig.run_until_clean()
    assert_tables(in_db(pg_conn, rig.symbols), expected)


# --- garbage numbers and missing fields: one record rejected, the rest of its batch loaded ----------


@pytest.mark.parametrize(
    "garbage",
    ["abc", "NaN", "-Infinity", "", " 1.5", "1,5", "1_000.5", "0x1F", "\u0661\u0662\u0663",
     "1.2.3", "-", ".", "123456789012345678901.5", "0.0000000000000000001", "1e400"],
)
def test_a_garbage_number_rejects_its_record_alone(
    hostile: Callable[..., Hostile], pg_conn: Any, caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    rig = hostile()
    second = rig.symbols[1]
    # Every decimal string of the first record of each answer for `second` becomes `garbage`.
    for path in (TICKER_PRICE, DEPTH, TRADES, KLINES, TICKER_24HR):
        rig.fault(mode="garbage_numbers", value=garbage, endpoint=path, symbol=second)
    reports = {r.endpoint: r for r in rig.cycle()}
    assert all(r.ok and not r.failed for r in reports.values()), [r.line() for r in reports.values()]
    # depth: the best bid and the best ask (the first record of each side).
    assert {e: r.rejected for e, r in reports.items()} == {
        "ticker_price": 1, "depth": 2, "trades": 1, "klines": 1, "ticker_24hr": 1
    }
    lines = rejected_lines(caplog)
    assert len(lines) == 6, lines
    for endpoint, field in (("ticker_price", "price"), ("depth", "bids.price"), ("depth", "asks.price"),
                            ("trades", "price"), ("klines", "open"), ("ticker_24hr", "priceChange")):
        assert any(line.startswith(f"rejected record: {endpoint} symbol={second} field {field}: ")
                   for line in lines), (endpoint, field, lines)
    expected = rig.expected()
    first_trade = min(row[1] for row in expected["trades"] if row[0] == second)
    first_kline = min(row[2] for row in expected["klines"] if row[:2] == (second, "1m"))
    first_cycle = minus(expected, "latest_prices", lambda row: row[0] != second)
    first_cycle = minus(first_cycle, "order_book_levels", lambda row: row[0] != second or row[3] != 0)
    first_cycle = minus(first_cycle, "trades", lambda row: row[:2] != (second, first_trade))
    first_cycle = minus(first_cycle, "klines", lambda row: row[:3] != (second, "1m", first_kline))
    first_cycle = minus(first_cycle, "ticker_24hr", lambda row: row[0] != second)
    assert_tables(in_db(pg_conn, rig.symbols), first_cycle)
    # The next cycle, served clean, fills in exactly the records that were rejected.
    rig.run_until_clean()
    assert_tables(in_db(pg_conn, rig.symbols), expected)


def test_a_missing_field_rejects_its_record_alone(
    hostile: Callable[..., Hostile], pg_conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = hostile()
    first, second = rig.symbols
    rig.fault(mode="missing_field", endpoint=TICKER_PRICE, symbol=first)  # price
    rig.fault(mode="missing_field", endpoint=DEPTH, symbol=second)  # lastUpdateId: the snapshot is unusable
    rig.fault(mode="missing_field", endpoint=TRADES, symbol=first, field="time")
    rig.fault(mode="missing_field", endpoint=KLINES, symbol=second, field=0)  # the open time
    rig.fault(mode="missing_field", endpoint=TICKER_24HR, symbol=first, field="count")
    reports = {r.endpoint: r for r in rig.cycle()}
    assert all(r.ok and not r.failed for r in reports.values()), [r.line() for r in reports.values()]
    assert [r.rejected for r in reports.values()] == [1, 1, 1, 1, 1]
    lines = rejected_lines(caplog)
    for prefix in (
        f"ticker_price symbol={first} field price: record 0: missing",
        f"depth symbol={second} field lastUpdateId: snapshot: missing",
        f"trades symbol={first} field time: record 0: missing",
        f"klines symbol={second} field ",
        f"ticker_24hr symbol={first} field count: record 0: missing",
    ):
        assert any(line.startswith(f"rejected record: {prefix}") for line in lines), (prefix, lines)
    expected = rig.expected()
    first_trade = min(row[1] for row in expected["trades"] if row[0] == first)
    first_kline = min(row[2] for row in expected["klines"] if row[:2] == (second, "1m"))
    first_cycle = minus(expected, "latest_prices", lambda row: row[0] != first)
    first_cycle = minus(first_cycle, "order_book_levels", lambda row: row[0] != second)
    first_cycle = minus(first_cycle, "trades", lambda row: row[:2] != (first, first_trade))
    first_cycle = minus(first_cycle, "klines", lambda row: row[:3] != (second, "1m", first_kline))
    first_cycle = minus(first_cycle, "ticker_24hr", lambda row: row[0] != first)
    assert_tables(in_db(pg_conn, rig.symbols), first_cycle)
    rig.run_until_clean()
    assert_tables(in_db(pg_conn, rig.symbols), expected)


# --- the process: python -m producer, running, through all of it at once ----------------------------


def test_the_producer_process_rides_out_a_hostile_binance(pg_config: PipelineConfig, pg_conn: Any,
                                                          tmp_path: Path) -> None:
    symbols = fresh_symbols()
    first, second = symbols
    clock = SimTime(start_time())
    server, base_url = start_simulator(port=0, seed=12, symbols=symbols, clock=clock.seconds)
    watch = PauseWatch(server, clock)
    fast = "0.2"
    env = cli_env(
        pg_config, base_url, symbols,
        PIPELINE__BINANCE__MAX_ATTEMPTS="2",
        PIPELINE__BINANCE__BACKOFF_INITIAL_SECONDS="0.01",
        PIPELINE__BINANCE__BACKOFF_MAX_SECONDS="0.05",
        PIPELINE__BINANCE__READ_TIMEOUT_SECONDS="0.5",
        PIPELINE__BINANCE__WEIGHT_BUDGET_PER_MINUTE="6000",
        **{f"PIPELINE__BINANCE__ENDPOINTS__{e.upper()}__INTERVAL_SECONDS": fast for e in ENDPOINTS},
    )
    config = load(CONFIG_PATH, environ=env)  # what the process runs with
    # Faults are taken first-match: the unscoped 429 storm, then a 418, come first; then data faults.
    faults: list[Mapping[str, Any]] = [
        {"mode": "429", "count": 3, "retry_after": 1},
        {"mode": "418", "retry_after": 2},
        {"mode": "503", "endpoint": TICKER_PRICE, "symbol": first, "count": 3},
        {"mode": "slow", "delay": 1.5, "endpoint": DEPTH, "symbol": second},
        {"mode": "malformed", "endpoint": TRADES, "symbol": first, "count": 2},
        {"mode": "disconnect", "endpoint": KLINES, "symbol": second},
        {"mode": "garbage_numbers", "value": "abc", "endpoint": TRADES, "symbol": second},
        {"mode": "missing_field", "endpoint": TICKER_24HR, "symbol": first},
        {"mode": "garbage_numbers", "value": "NaN", "endpoint": KLINES, "symbol": first, "all_records": True},
    ]
    server.sim.add_faults([Fault.parse(dict(f)) for f in faults])
    log_path = tmp_path / "producer.log"
    started = datetime.now(UTC)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "producer"], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
    try:
        # Follow the pauses until every fault is used up and the tables hold what the simulator serves.
        deadline = time.monotonic() + 30
        expected: Rows = {}
        while True:
            assert proc.poll() is None, f"the producer exited ({proc.returncode}):\n{log_path.read_text()}"
            watch.poll()
            if not server.sim.faults():
                now = datetime.now(UTC)
                expected = stamped_loosely(
                    served(server.sim.market, config, server.sim.clock.now_ms(), now), started, now
                )
                if stamped_loosely(in_db(pg_conn, symbols), started, now) == expected:
                    break
            assert time.monotonic() < deadline, "the tables never came to hold what the simulator serves"
            time.sleep(0.02)
        time.sleep(0.5)  # a few more cycles, served clean: nothing changes
        assert proc.poll() is None
        now = datetime.now(UTC)
        assert_tables(stamped_loosely(in_db(pg_conn, symbols), started, now), expected)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "failed unexpectedly" not in output, output
    assert "producer stopped (SIGTERM)" in output
    assert [(p.status, p.seconds) for p in watch.pauses] == [(429, 1), (429, 1), (429, 1), (418, 2)]
    watch.assert_quiet()
    for text in (
        f"rejected record: trades symbol={second} field price: record 0:",
        f"rejected record: ticker_24hr symbol={first} field lastPrice: record 0: missing",
        f"rejected record: klines symbol={first} field open: ",
        "klines: 5 more rejected records",  # all 10 klines of one answer: 5 logged, the rest counted
    ):
        assert text in output, (text, output[-3000:])
