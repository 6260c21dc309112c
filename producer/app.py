"""The producer's polling loop: every endpoint, for every symbol, on its own schedule, into PostgreSQL.

One cycle of an endpoint fetches it for each symbol (klines: each symbol and interval), transforms the
answers, and loads all the rows in one transaction, then logs one line, where `weight` is what this
cycle's requests weighed and `weight_1m` the weight used on the host in the last minute:

  depth: symbols=BTCUSDT ok=1/1 inserted=8 updated=0 deleted=0 rejected=0 weight=5 weight_1m=9 duration=0.016s

What goes wrong is contained:
* an unknown symbol (InvalidSymbolError) is logged once and never asked for again; the others go on;
* a 429/418 (RateLimitedError) pauses every endpoint until the ban ends;
* a 451 (RestrictedLocationError: the host refuses our location) is logged once and pauses every
  endpoint for RESTRICTED_PAUSE_SECONDS, then the host is tried again;
* Binance failing (BinanceUnavailableError, other API errors) fails that symbol for this cycle;
* a malformed record is rejected alone (and counted); the rest of its batch is loaded;
* PostgreSQL failing (DatabaseError) fails this cycle of this endpoint; the next tick tries again.

`Producer.stop()` (SIGINT/SIGTERM in `main`) lets a running transaction finish, then the loop returns;
fetches still to make in the cycle are dropped, and a wait for request-weight budget is cut short (the
client's rate limiter sleeps through `Producer.sleep`). A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Protocol

from pipeline.cli import StopSignals
from pipeline.config import PipelineConfig
from producer.errors import (
    DatabaseError,
    InvalidSymbolError,
    MalformedRecordError,
    ProducerError,
    RateLimitedError,
    RestrictedLocationError,
)
from producer.load import LoadResult, PostgresLoader
from producer.transform import (
    transform_depth,
    transform_klines,
    transform_ticker_24hr,
    transform_ticker_price,
    transform_trades,
)

__all__ = [
    "ENDPOINTS",
    "BinanceAPI",
    "CycleReport",
    "Loader",
    "Producer",
    "ShutdownRequested",
    "install_signal_handlers",
]

log = logging.getLogger("producer")

ENDPOINTS = ("ticker_price", "depth", "trades", "klines", "ticker_24hr")
# A host answering 451 refuses our location: asking it again every cycle only repeats the error. It is
# tried again after this long (a config change to binance.base_url needs a restart anyway).
RESTRICTED_PAUSE_SECONDS = 300.0
# At most this many rejected records are logged one by one per endpoint cycle; the rest are counted.
MAX_REJECTS_LOGGED = 5


class BinanceAPI(Protocol):
    """What the producer needs of `producer.binance.BinanceClient` (tests pass fakes)."""

    def ticker_price(self, symbol: str) -> dict[str, Any]: ...
    def depth(self, symbol: str, limit: int) -> dict[str, Any]: ...
    def trades(self, symbol: str, limit: int) -> list[Any]: ...
    def klines(self, symbol: str, interval: str, limit: int, start_time_ms: int | None = None,
               end_time_ms: int | None = None) -> list[Any]: ...
    def ticker_24hr(self, symbol: str) -> dict[str, Any]: ...
    @property
    def weight_used(self) -> int: ...
    @property
    def weight_sent(self) -> int: ...


class Loader(Protocol):
    """What the producer needs of `producer.load.PostgresLoader`."""

    def load(self, table: str, rows: Sequence[tuple[Any, ...]], *,
             delete_before: datetime | None = None) -> LoadResult: ...


class ShutdownRequested(Exception):
    """Raised out of an interruptible wait (rate-limit budget, retry backoff) once stop() was called."""


@dataclass
class CycleReport:
    """One cycle of one endpoint."""

    endpoint: str
    symbols: list[str] = field(default_factory=list)  # asked for (invalid ones no longer are)
    calls: int = 0  # Binance calls made (klines: one per symbol and interval)
    fetched: int = 0  # calls that answered
    failed: list[str] = field(default_factory=list)  # "SYMBOL: why", one per failed call
    rejected: int = 0
    result: LoadResult | None = None
    load_error: str | None = None
    weight: int = 0  # what this cycle's requests weighed (retries included)
    weight_used: int = 0  # the host's weight in the last minute, every endpoint's and cycle's
    seconds: float = 0.0
    skipped: str | None = None  # why the cycle did not run at all
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """The cycle reached Binance at least once and its load (if any) committed."""
        return self.skipped is None and not self.interrupted and self.fetched > 0 and self.load_error is None

    def line(self) -> str:
        if self.skipped is not None:
            return f"{self.endpoint}: skipped ({self.skipped})"
        r = self.result or LoadResult(self.endpoint)
        text = (
            f"{self.endpoint}: symbols={','.join(self.symbols)} ok={self.fetched}/{self.calls} "
            f"inserted={r.inserted} "
            f"updated={r.updated} deleted={r.deleted} rejected={self.rejected} "
            f"weight={self.weight} weight_1m={self.weight_used} duration={self.seconds:.3f}s"
        )
        if self.failed:
            text += " failed=[" + "; ".join(self.failed) + "]"
        if self.load_error is not None:
            text += f" load FAILED: {self.load_error}"
        if self.interrupted:
            text += " (interrupted by shutdown; nothing loaded)"
        return text


class Producer:
    """Polls Binance and loads PostgreSQL; `run_forever()` until `stop()`, or `run_once()`.

    `now` gives the wall-clock time stamped on prices and order book snapshots (Binance sends none);
    `monotonic` drives the schedule and is compared with RateLimitedError.until.
    """

    def __init__(
        self,
        config: PipelineConfig,
        client: BinanceAPI,
        loader: Loader,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client
        self.loader = loader
        self.now = now
        self.monotonic = monotonic
        self.invalid_symbols: set[str] = set()
        self.paused_until = 0.0
        self.restricted_until = 0.0  # a 451: no request before this (monotonic) time
        # A plain flag, polled: safe to set from a signal handler (an Event's lock is not re-entrant).
        self._stopping = False
        self.stop_reason = ""

    # -- stopping --

    def stop(self, reason: str = "stop requested") -> None:
        """Finish what is being written, then return from run_forever()/run_once()."""
        if not self._stopping:
            self.stop_reason = reason
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking every 0.1 s to look at the stop flag; True if stopping."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.1))
        return True

    def sleep(self, seconds: float) -> None:
        """A sleep that stop() cuts short with ShutdownRequested (for the client's rate limiter)."""
        if self.wait(seconds):
            raise ShutdownRequested

    # -- running --

    def run_once(self) -> list[CycleReport]:
        """One cycle of every endpoint, in order."""
        reports = []
        for endpoint in ENDPOINTS:
            if self.stopping:
                break
            reports.append(self.run_endpoint(endpoint))
        return reports

    def run_forever(self) -> None:
        """Every endpoint on its own interval (all of them at once at the start) until stop()."""
        start = self.monotonic()
        due = dict.fromkeys(ENDPOINTS, start)
        while not self.stopping:
            endpoint = min(ENDPOINTS, key=lambda e: due[e])
            wait = due[endpoint] - self.monotonic()
            if wait > 0 and self.wait(wait):
                break
            self.run_endpoint(endpoint)
            interval = self.interval(endpoint)
            due[endpoint] += interval
            now = self.monotonic()
            if due[endpoint] < now:  # fell behind: skip the missed ticks rather than burst
                due[endpoint] = now + interval
        log.info("producer stopped (%s)", self.stop_reason)

    def interval(self, endpoint: str) -> float:
        interval: float = getattr(self.config.binance.endpoints, endpoint).interval_seconds
        return interval

    def run_endpoint(self, endpoint: str) -> CycleReport:
        """One cycle of one endpoint; logs its line; never raises (but for KeyboardInterrupt & co)."""
        report = CycleReport(endpoint)
        started = time.perf_counter()
        sent_before = self._client_figure("weight_sent")
        try:
            self._run(endpoint, report)
        except Exception as exc:  # a bug must not kill the producer; the next tick tries again
            log.exception("%s: cycle failed unexpectedly", endpoint)
            report.load_error = report.load_error or f"{type(exc).__name__}: {exc}"
        report.seconds = time.perf_counter() - started
        report.weight = self._client_figure("weight_sent") - sent_before   # only grows
        report.weight_used = self._client_figure("weight_used")
        level = logging.INFO if report.ok or report.skipped or report.interrupted else logging.WARNING
        log.log(level, "%s", report.line())
        return report

    def _run(self, endpoint: str, report: CycleReport) -> None:
        remaining = self.paused_until - self.monotonic()
        if remaining > 0:
            report.skipped = f"Binance rate limit: {remaining:.0f}s of the pause left"
            return
        remaining = self.restricted_until - self.monotonic()
        if remaining > 0:
            report.skipped = f"Binance HTTP 451, restricted location: {remaining:.0f}s of the pause left"
            return
        symbols = [s for s in self.config.binance.symbols if s not in self.invalid_symbols]
        if not symbols:
            report.skipped = "no valid symbol left"
            return
        report.symbols = symbols
        intervals: Sequence[str | None] = (
            self.config.binance.endpoints.klines.intervals if endpoint == "klines" else (None,)
        )
        now = self.now()
        rows: list[tuple[Any, ...]] = []
        rejects: list[MalformedRecordError] = []
        for symbol in symbols:
            for interval in intervals:
                if symbol in self.invalid_symbols:
                    continue
                label = symbol if interval is None else f"{symbol} {interval}"
                if self.stopping:
                    report.interrupted = True
                    return
                report.calls += 1
                try:
                    got, bad = self._fetch(endpoint, symbol, interval, now)
                    rows.extend(got)
                    rejects.extend(bad)
                    report.fetched += 1
                except ShutdownRequested:
                    report.interrupted = True
                    return
                except MalformedRecordError as exc:  # the whole answer was unusable
                    report.fetched += 1
                    rejects.append(exc)
                except InvalidSymbolError as exc:
                    self._invalid(symbol, exc)
                    report.failed.append(f"{label}: not a Binance symbol")
                except RateLimitedError as exc:
                    self._rate_limited(exc)
                    report.failed.append(f"{label}: rate limited")
                    break  # load what was fetched; every endpoint waits for the pause to end
                except RestrictedLocationError as exc:
                    self._restricted(exc)
                    report.failed.append(f"{label}: HTTP 451 restricted location")
                    break  # the host refuses every request from here: pause them all
                except ProducerError as exc:
                    report.failed.append(f"{label}: {type(exc).__name__}: {exc}")
            else:
                continue
            break  # rate limited or restricted
        report.rejected = len(rejects)
        for reject in rejects[:MAX_REJECTS_LOGGED]:
            log.warning("rejected record: %s", reject)
        if len(rejects) > MAX_REJECTS_LOGGED:
            log.warning("%s: %d more rejected records", endpoint, len(rejects) - MAX_REJECTS_LOGGED)
        self._load(endpoint, rows, now, report)

    def _fetch(self, endpoint: str, symbol: str, interval: str | None, now: datetime
               ) -> tuple[Sequence[tuple[Any, ...]], list[MalformedRecordError]]:
        """One call to Binance, transformed: (rows, rejects)."""
        ep = self.config.binance.endpoints
        if endpoint == "ticker_price":
            return transform_ticker_price(self.client.ticker_price(symbol), symbol=symbol, observed_at=now)
        if endpoint == "depth":
            raw_depth = self.client.depth(symbol, ep.depth.limit)
            return transform_depth(raw_depth, symbol=symbol, snapshot_time=now)
        if endpoint == "trades":
            return transform_trades(self.client.trades(symbol, ep.trades.limit), symbol=symbol)
        if endpoint == "klines":
            assert interval is not None
            raw = self.client.klines(symbol, interval, ep.klines.limit)
            return transform_klines(raw, symbol=symbol, interval=interval)
        if endpoint == "ticker_24hr":
            return transform_ticker_24hr(self.client.ticker_24hr(symbol), symbol=symbol)
        raise ValueError(f"unknown endpoint {endpoint!r}")

    def _load(self, endpoint: str, rows: list[tuple[Any, ...]], now: datetime, report: CycleReport) -> None:
        table = _TABLE[endpoint]
        delete_before = None
        if endpoint == "depth":
            delete_before = now - timedelta(seconds=self.config.producer.orderbook_retention_seconds)
        if not rows and delete_before is None:
            return
        try:
            report.result = self.loader.load(table, rows, delete_before=delete_before)
        except DatabaseError as exc:
            report.load_error = str(exc)

    def _invalid(self, symbol: str, exc: InvalidSymbolError) -> None:
        if symbol not in self.invalid_symbols:
            self.invalid_symbols.add(symbol)
            log.error("symbol %s is not listed on Binance (%s): skipping it from now on; "
                      "remove it from binance.symbols", symbol, exc)

    def _rate_limited(self, exc: RateLimitedError) -> None:
        if exc.until > self.paused_until:
            self.paused_until = exc.until
            log.warning("%s: every endpoint pauses for %.0fs", exc, max(exc.until - self.monotonic(), 0.0))

    def _restricted(self, exc: RestrictedLocationError) -> None:
        """One ERROR per pause, not one per symbol, endpoint and cycle."""
        now = self.monotonic()
        if now >= self.restricted_until:
            self.restricted_until = now + RESTRICTED_PAUSE_SECONDS
            log.error("%s; every endpoint pauses for %.0fs. Set binance.base_url to "
                      "https://data-api.binance.vision (or https://api.binance.us in the US)",
                      exc, RESTRICTED_PAUSE_SECONDS)

    def _client_figure(self, name: str) -> int:
        """The client's weight_used or weight_sent; 0 from a fake client without the figure."""
        try:
            return int(getattr(self.client, name))
        except Exception:
            return 0


_TABLE = {
    "ticker_price": "latest_prices",
    "depth": "order_book_levels",
    "trades": "trades",
    "klines": "klines",
    "ticker_24hr": "ticker_24hr",
}


def install_signal_handlers(producer: Producer) -> None:
    """SIGINT/SIGTERM: the first stops the producer cleanly, a second exits at once (128 + signal);
    a repeat within StopSignals.REPEAT_WINDOW is the first one delivered twice.

    The handler only sets a flag or writes with os.write: it may interrupt the main thread anywhere,
    even inside logging or print, whose locks and buffers are not safe to re-enter.
    """
    stop_signals = StopSignals()

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_signals.is_second():
            os.write(2, f"producer: second {name}: exiting now\n".encode())
            os._exit(128 + signum)
        if producer.stopping:
            return
        os.write(2, f"producer: {name}: finishing the current write, then exiting "
                    f"({name} again to exit at once)\n".encode())
        producer.stop(name)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m producer [--config PATH] [--once]`."""
    import argparse

    from pipeline.cli import add_config_argument, load_or_exit, setup_logging
    from producer.binance import BinanceClient
    from producer.ratelimit import RateLimiter

    parser = argparse.ArgumentParser(
        prog="python -m producer",
        description="Poll Binance market data into PostgreSQL. "
                    "`python -m producer backfill --help` for the kline backfill.",
    )
    add_config_argument(parser)
    parser.add_argument("--once", action="store_true",
                        help="one cycle of every endpoint, then exit (status 1 if every endpoint failed)")
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    setup_logging(config.producer.log_level)

    holder: list[Producer] = []
    limiter = RateLimiter(config.binance.weight_budget_per_minute, sleep=lambda s: holder[0].sleep(s))
    with BinanceClient(config.binance, limiter=limiter) as client, PostgresLoader(config.postgres) as loader:
        producer = Producer(config, client, loader)
        holder.append(producer)
        install_signal_handlers(producer)
        log.info("producer: %s -> %s, symbols %s", config.binance.base_url, loader.where,
                 ",".join(config.binance.symbols))
        if args.once:
            reports = producer.run_once()
            if producer.stopping:
                return 0
            return 0 if any(r.ok for r in reports) else 1
        producer.run_forever()
    return 0
