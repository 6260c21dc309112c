"""Benchmark: backfill-shaped klines through the producer's transform + load path into PostgreSQL.

    .venv/bin/python bench/load_klines.py [--config PATH] [--rows 1000000] [--batch 10000]

Generates `--rows` kline arrays shaped exactly like Binance's /api/v3/klines answer (JSON ints for times
and counts, strings for prices and volumes), then times the producer's load path over all of them --
`transform_klines`, then `PostgresLoader.load_klines` in its two halves (COPY into a session temp table,
then one INSERT ... SELECT ... ON CONFLICT per batch, one transaction per batch) -- and prints rows/s.
Generating the input is not timed.

The rows go to symbol BENCHUSDT, interval 1m, at minutes after the newest BENCHUSDT kline already
stored, so every run inserts fresh rows (the producer role may not delete klines). They are real rows:
point the benchmark at a scratch database (PIPELINE__POSTGRES__* overrides): it refuses to run (exit 2)
where a logical replication slot reads the database, unless given --into-captured-database.
With `--reload`, the same rows are then loaded a second time: all conflicts, nothing changes.
By default a worker thread transforms and prepares batch n+1 (the CPU half of a load: `transform_klines`,
`prepare_load`) while batch n is written (`PostgresLoader.write`: COPY, INSERT, commit), so Python and
PostgreSQL use both cores; `--serial` does one after the other.
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli import add_config_argument, load_or_exit, run, setup_logging
from producer.load import PostgresLoader, PreparedLoad, prepare_load
from producer.transform import to_epoch_ms, transform_klines

SYMBOL, INTERVAL = "BENCHUSDT", "1m"
MINUTE_MS = 60_000
FIRST_OPEN = datetime.fromisoformat("2000-01-01T00:00:00+00:00")


def make_klines(start_ms: int, count: int, seed: int = 1) -> list[list[Any]]:
    """`count` one-minute klines from `start_ms`, with a random walk for prices (8 decimals, like Binance)."""
    rnd = random.Random(seed)
    price = 30000.0
    out: list[list[Any]] = []
    for i in range(count):
        open_ms = start_ms + i * MINUTE_MS
        o = price
        c = max(0.01, o * (1 + rnd.gauss(0, 0.001)))
        h, lo = max(o, c) * (1 + abs(rnd.gauss(0, 0.0005))), min(o, c) * (1 - abs(rnd.gauss(0, 0.0005)))
        vol = rnd.uniform(1, 500)
        taker = vol * rnd.uniform(0.2, 0.8)
        out.append([
            open_ms, f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{vol:.8f}", open_ms + MINUTE_MS - 1,
            f"{vol * c:.8f}", rnd.randint(10, 5000), f"{taker:.8f}", f"{taker * c:.8f}", "0",
        ])
        price = c
    return out


def pages(raw: Sequence[list[Any]], size: int) -> Iterator[Sequence[list[Any]]]:
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


def prepared(raw: Sequence[list[Any]], size: int, pipeline: bool) -> Iterator[PreparedLoad]:
    """transform_klines + prepare_load per batch; with `pipeline`, a worker thread keeps one batch ahead."""

    def make(page: Sequence[list[Any]]) -> PreparedLoad:
        rows, rejects = transform_klines(page, symbol=SYMBOL, interval=INTERVAL)
        assert not rejects, rejects[:3]
        return prepare_load("klines", rows)

    if not pipeline:
        for page in pages(raw, size):
            yield make(page)
        return
    ready: queue.Queue[PreparedLoad | BaseException | None] = queue.Queue(maxsize=2)

    def work() -> None:
        try:
            for page in pages(raw, size):
                ready.put(make(page))
        except BaseException as exc:
            ready.put(exc)
        ready.put(None)

    worker = threading.Thread(target=work, name="transform", daemon=True)
    worker.start()
    while (batch := ready.get()) is not None:
        if isinstance(batch, BaseException):
            raise batch
        yield batch
    worker.join()


@dataclass
class Measured:
    rows: int
    seconds: float
    inserted: int
    updated: int
    client_cpu: float  # seconds of CPU this process used (every thread)
    backend_cpu: float | None  # seconds of CPU the PostgreSQL backend used, when it runs on this host

    def line(self, label: str) -> str:
        rate = self.rows / self.seconds
        text = (f"{label}: {self.rows:,} rows in {self.seconds:.2f} s = {rate:,.0f} rows/s "
                f"(inserted {self.inserted:,}, updated {self.updated:,}); CPU per row: this process "
                f"{self.client_cpu / self.rows * 1e6:.1f} us")
        if self.backend_cpu is not None:
            text += f", PostgreSQL backend {self.backend_cpu / self.rows * 1e6:.1f} us"
        return text


def backend_cpu_seconds(loader: PostgresLoader) -> Callable[[], float | None]:
    """A reader of the backend's CPU time from /proc, if the server is a process of this host."""
    path = Path(f"/proc/{loader.connection().get_backend_pid()}/stat")
    if loader.config.host not in ("127.0.0.1", "localhost", "::1") or not path.exists():
        return lambda: None
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float | None:
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    return read


def measure(loader: PostgresLoader, raw: Sequence[list[Any]], batch: int, pipeline: bool) -> Measured:
    backend = backend_cpu_seconds(loader)
    inserted = updated = 0
    backend_before, cpu_before = backend(), time.process_time()
    started = time.perf_counter()
    for load in prepared(raw, batch, pipeline):
        result = loader.write(load)
        inserted += result.inserted
        updated += result.updated
    seconds = time.perf_counter() - started
    backend_after = backend()
    backend_used = None if backend_before is None or backend_after is None else backend_after - backend_before
    return Measured(len(raw), seconds, inserted, updated, time.process_time() - cpu_before, backend_used)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_argument(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="rows per transaction (default 10000)")
    parser.add_argument("--serial", action="store_true",
                        help="transform, prepare and write one batch after another (default: a worker "
                             "thread transforms and prepares the next batch while one is written)")
    parser.add_argument("--reload", action="store_true", help="then load the same rows again (no-op upserts)")
    parser.add_argument("--into-captured-database", action="store_true",
                        help="run even though a logical replication slot (Debezium) reads this database")
    args = parser.parse_args()
    config = load_or_exit(args.config)
    setup_logging("WARNING")
    with PostgresLoader(config.postgres, application_name="bench-load-klines") as loader:
        slots = loader.transaction(
            lambda cur: (cur.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical' "
                                     "AND database = current_database()"), cur.fetchall())[1],
            what="replication slot lookup",
        )
        if slots and not args.into_captured_database:
            print(f"{loader.where} has logical replication slot(s) {', '.join(s for (s,) in slots)}: "
                  f"{args.rows:,} benchmark klines would flow on to Kafka and Cassandra. Point the "
                  "benchmark at a scratch database (PIPELINE__POSTGRES__* overrides), or pass "
                  "--into-captured-database.",
                  file=sys.stderr)
            return 2
        newest = loader.newest_kline_open_time(SYMBOL, INTERVAL)
        start = FIRST_OPEN if newest is None else newest + timedelta(minutes=1)
        print(f"generating {args.rows:,} klines {SYMBOL} {INTERVAL} from {start:%Y-%m-%d %H:%M}Z into "
              f"{loader.where} ...", file=sys.stderr)
        raw = make_klines(to_epoch_ms(start), args.rows)
        assert Decimal(raw[0][1]) > 0
        # The generated input (a million lists) would be walked by every full garbage collection while
        # the load runs: a cost of this harness, not of the producer, which holds one page at a time.
        gc.freeze()
        method = (
            "transform_klines + prepare_load (dedupe, COPY text) + PostgresLoader.write (COPY into a temp "
            "table; new keys: plain INSERT ... SELECT, existing ones: UPDATE ... WHERE IS DISTINCT FROM), "
            f"{args.batch:,} rows per transaction, "
            + ("serial" if args.serial else "the next batch transformed and prepared in a worker thread")
        )
        print(f"method: {method}")
        load1 = os.getloadavg()[0]
        print(measure(loader, raw, args.batch, not args.serial).line("load  "))
        if args.reload:
            print(measure(loader, raw, args.batch, not args.serial).line("reload"))
        print(f"host: {os.cpu_count()} CPUs, load average before/after {load1:.2f}/{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    run(main)
