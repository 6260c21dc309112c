"""Kline history into PostgreSQL.

    python -m producer backfill --symbol BTCUSDT --interval 1h --since 2024-01-01 [--until ...]

Pages through /api/v3/klines with startTime and limit 1000, oldest first, and loads every page (one
transaction each) through the producer's own transform and load path. The client's rate limiter keeps
the run inside binance.weight_budget_per_minute; a 429/418 is waited out. A progress bar goes to stderr.

Run again, it resumes at the end of the unbroken run of stored klines that starts at --since (that
kline is fetched again, in case it was still open), not at the newest one stored: the live producer
keeps the latest candles of its intervals, and history before them must still be filled. A gap in the
stored klines costs one request of one kline to tell a gap Binance has too (before the symbol's
listing, an exchange outage) from one to fill.
"""

from __future__ import annotations

import argparse
import calendar
import logging
import re
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tqdm import tqdm

from pipeline.config import KlineInterval
from producer.errors import BinanceUnavailableError, DatabaseError, ProducerError, RateLimitedError
from producer.load import LoadResult
from producer.transform import from_epoch_ms, to_epoch_ms, transform_klines

__all__ = ["PAGE_LIMIT", "BackfillResult", "backfill", "interval_ms", "main", "parse_time"]

log = logging.getLogger("producer.backfill")

PAGE_LIMIT = 1000  # the most klines Binance returns per call
# Gaps in the stored klines looked into per run; past them the run resumes at the next gap and simply
# fetches again what is stored after it (loads are idempotent).
MAX_GAP_PROBES = 100
INTERVALS: tuple[str, ...] = typing.get_args(KlineInterval)
_DAY_MS = 86_400_000
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": _DAY_MS, "w": 7 * _DAY_MS, "M": 30 * _DAY_MS}


def interval_ms(interval: str) -> int:
    """The length of a kline interval in ms (1M counted as 30 days: used for estimates only)."""
    return int(interval[:-1]) * _UNIT_MS[interval[-1]]


def previous_open(open_time: datetime, interval: str) -> datetime:
    """The open time of the kline before the one opening at `open_time` (months are calendar months)."""
    if interval == "1M":
        year, month = divmod(open_time.year * 12 + open_time.month - 2, 12)
        day = min(open_time.day, calendar.monthrange(year, month + 1)[1])
        return open_time.replace(year=year, month=month + 1, day=day)
    return open_time - timedelta(milliseconds=interval_ms(interval))


class KlineSource(Protocol):
    def klines(self, symbol: str, interval: str, limit: int, start_time_ms: int | None = None,
               end_time_ms: int | None = None) -> list[Any]: ...
    @property
    def weight_used(self) -> int: ...


class KlineStore(Protocol):
    def load(self, table: str, rows: Sequence[tuple[Any, ...]], *,
             delete_before: datetime | None = None) -> LoadResult: ...
    def kline_run(self, symbol: str, interval: str, since: datetime, until: datetime
                  ) -> tuple[datetime, datetime, datetime | None] | None: ...


@dataclass
class BackfillResult:
    symbol: str
    interval: str
    start: datetime
    until: datetime
    pages: int = 0
    klines: int = 0
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    resumed_from: datetime | None = None
    probes: int = 0  # one-kline requests made to look into gaps of the stored klines
    seconds: float = 0.0


def backfill(
    client: KlineSource,
    loader: KlineStore,
    symbol: str,
    interval: str,
    since: datetime,
    until: datetime,
    *,
    page_limit: int = PAGE_LIMIT,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> BackfillResult:
    """Load the klines of `symbol`/`interval` opening in [since, until), resuming after stored ones."""
    started = time.perf_counter()
    end = to_epoch_ms(until) - 1

    def fetch(start_ms: int, limit: int) -> list[Any]:
        while True:
            try:
                return client.klines(symbol, interval, limit, start_time_ms=start_ms, end_time_ms=end)
            except RateLimitedError as exc:
                wait = max(exc.until - monotonic(), 1.0)
                log.warning("%s; waiting %.0fs", exc, wait)
                sleep(wait)

    result = BackfillResult(symbol, interval, since, until)
    start = _resume_point(loader, fetch, result, since, until)
    result.start, result.resumed_from = start, (start if start != since else None)
    cursor = to_epoch_ms(start)
    if cursor > end:
        result.seconds = time.perf_counter() - started
        return result
    step = interval_ms(interval)
    bar = tqdm(total=max((end - cursor) // step + 1, 1), unit="kline", unit_scale=True, file=sys.stderr,
               desc=f"{symbol} {interval}", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    try:
        while cursor <= end:
            page = fetch(cursor, page_limit)
            if not page:
                break
            rows, rejects = transform_klines(page, symbol=symbol, interval=interval)
            for reject in rejects:
                log.warning("rejected record: %s", reject)
            loaded = loader.load("klines", rows)
            result.pages += 1
            result.klines += len(rows)
            result.inserted += loaded.inserted
            result.updated += loaded.updated
            result.rejected += len(rejects)
            last = _last_open_ms(page, rows)
            if last is None:
                raise ProducerError(f"klines page from {from_epoch_ms(cursor):%Y-%m-%d %H:%M}Z: "
                                    "no record with a usable open time; cannot page on")
            bar.update(min(len(page), bar.total - bar.n))
            bar.set_postfix(to=f"{from_epoch_ms(last):%Y-%m-%d %H:%M}", weight=client.weight_used,
                            refresh=False)
            if len(page) < page_limit:
                break  # Binance had no more up to `end`
            cursor = last + 1
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result


def _resume_point(loader: KlineStore, fetch: Callable[[int, int], list[Any]], result: BackfillResult,
                  since: datetime, until: datetime) -> datetime:
    """Where the run starts: the last kline of the unbroken stored run from `since`, else `since`."""
    symbol, interval = result.symbol, result.interval
    resume, at = since, since  # every kline Binance has in [since, at) is stored; resume is one of them
    while True:
        stored = loader.kline_run(symbol, interval, at, until)
        if stored is None:
            return resume
        first, last, later = stored
        if previous_open(first, interval) >= at:
            # Klines missing before `first`, or Binance has none (not listed yet, an outage)?
            if result.probes >= MAX_GAP_PROBES:
                return resume
            result.probes += 1
            probe = fetch(to_epoch_ms(at), 1)
            opens = _last_open_ms(probe, [])
            if opens is None or opens != to_epoch_ms(first):
                return resume
        if later is None:
            return last  # fetched again: it may have been open when stored
        resume, at = last, last + timedelta(milliseconds=1)


def _last_open_ms(page: list[Any], rows: Sequence[Any]) -> int | None:
    for k in reversed(page):
        if isinstance(k, list) and k and type(k[0]) is int:
            return int(k[0])
    return to_epoch_ms(rows[-1].open_time) if rows else None


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")


def parse_time(text: str) -> datetime:
    """`2024-01-01`, `2024-01-01T12:00`, `2024-01-01T12:00:00Z`, ... -> aware datetime (UTC unless told)."""
    if not _DATE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected a date like 2024-01-01 or 2024-01-01T12:00Z, got {text!r}"
        )
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _symbol(text: str) -> str:
    symbol = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{2,20}", symbol):
        raise argparse.ArgumentTypeError(f"expected a symbol like BTCUSDT, got {text!r}")
    return symbol


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.cli import add_config_argument, load_or_exit, setup_logging
    from producer.binance import BinanceClient
    from producer.load import PostgresLoader

    parser = argparse.ArgumentParser(prog="python -m producer backfill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(parser)
    parser.add_argument("--symbol", required=True, type=_symbol)
    parser.add_argument("--interval", required=True, choices=INTERVALS)
    parser.add_argument("--since", required=True, type=parse_time, help="first open time (UTC unless told)")
    parser.add_argument("--until", type=parse_time, help="end, exclusive (default: now)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    setup_logging(config.producer.log_level)
    until = args.until or datetime.now(UTC)
    if until <= args.since:
        parser.error(f"--until {until:%Y-%m-%dT%H:%M:%SZ} is not after "
                     f"--since {args.since:%Y-%m-%dT%H:%M:%SZ}")

    with BinanceClient(config.binance) as client, \
            PostgresLoader(config.postgres, application_name="binance-backfill") as loader:
        try:
            result = backfill(client, loader, args.symbol, args.interval, args.since, until,
                              progress=not args.no_progress)
        except (BinanceUnavailableError, DatabaseError) as exc:
            print(f"backfill stopped: {exc}\nrun the same command again to resume", file=sys.stderr)
            return 1
        except ProducerError as exc:  # an unknown symbol, a 451, another 4xx
            print(f"backfill failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("backfill interrupted; run the same command again to resume", file=sys.stderr)
            return 130
    resumed = f", resumed at {result.resumed_from:%Y-%m-%d %H:%M}Z" if result.resumed_from else ""
    print(
        f"backfill {result.symbol} {result.interval} {result.start:%Y-%m-%d %H:%M}Z.."
        f"{result.until:%Y-%m-%d %H:%M}Z{resumed}: {result.klines} klines in {result.pages} pages "
        f"(inserted {result.inserted}, updated {result.updated}, rejected {result.rejected}) "
        f"in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    return 0
