"""Benchmark: how fast the consumer drains Kafka into Cassandra, against the raw driver ceiling, and its
end-to-end latency at a steady rate.

    .venv/bin/python bench/consumer_throughput.py [--config PATH] [--events 200000] [--rate 1000]
        [--latency-seconds 30] [--skip-latency] [--profile FILE]

Needs the whole stack (make up). Everything it creates is its own and removed at the end: a Debezium
connector (own slot and topic prefix), Kafka topics, a Cassandra keyspace (infra/cassandra-init.cql
under another name), consumer groups, and its rows in PostgreSQL (symbol BENCH*).

1. Templates: one row per captured table is inserted into PostgreSQL and the bench's own connector
   snapshots them, so the bench has real Debezium messages (JsonConverter with schemas) to copy.
2. Preload: `--events` change events are produced straight into bench topics (<run>t.public.<table>,
   debezium.topic_partitions partitions, keyed like Debezium's): the templates' schemas, with payloads
   for a realistic producer mix (order book snapshots of 40 levels and their retention deletes +
   tombstones, trades, kline updates, price and ticker upserts), each with its own increasing LSN,
   compressed with debezium.compression_type as the connector's producer compresses them. Not timed.
3. Raw ceiling: the same rows (decoded and mapped beforehand, not timed) written by cassandra-driver
   alone: execute_concurrent over bound single-row statements at several concurrencies, and the sink's
   single-partition batches; the best rows/s is the ceiling.
   Then each other stage alone: kafka-python reading the preloaded records (nothing decoded), and
   decoding plus mapping (the workload's messages made again, only decode and map timed); added to the
   ceiling's CPU per row they estimate what one process, its Python on one core, can reach.
4. Drain: `python -m consumer` (one process, then `--workers 2`) with fresh groups drains the preloaded
   topics; events/s is measured from the consumer's own applied-events counter (Prometheus), from the
   first applied event to the last.
5. Latency: the consumer follows the bench connector's topics while rows are inserted into PostgreSQL
   at `--rate` rows/s for `--latency-seconds`; p50/p99 of source.ts_ms (PostgreSQL commit) -> Cassandra
   ack come from the consumer's end-to-end histogram (difference before/after, interpolated in buckets).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import random
import re
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "infra" / "native"))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402

from consumer.app import fetch_settings, load_mappings  # noqa: E402
from consumer.decode import decode  # noqa: E402
from consumer.sink import CassandraSink  # noqa: E402
from pipeline.cli import add_config_argument, load_or_exit, run  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.connector import connector_config, delete, register, with_debezium  # noqa: E402

TABLES = ("latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr")
SYMBOLS = tuple(f"BENCH{c}USDT" for c in "ABCDEFGHIJ")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- Debezium-shaped values ------------------------------------------------------------------------

def _unscaled_b64(d: Decimal, scale: int) -> str:
    unscaled = int(d.scaleb(scale).to_integral_value())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def _zoned(ts: datetime) -> str:
    text = ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return re.sub(r"\.?0+Z$", "Z", text) if "." in text else text


def encode_row(row: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A PostgreSQL row as JsonConverter writes it, following each field's Connect schema."""
    out: dict[str, Any] = {}
    for col, v in row.items():
        fs = fields[col]
        name = fs.get("name")
        if v is None:
            out[col] = None
        elif name == "org.apache.kafka.connect.data.Decimal":
            out[col] = _unscaled_b64(Decimal(v), int(fs["parameters"]["scale"]))
        elif name == "io.debezium.time.ZonedTimestamp":
            out[col] = _zoned(v)
        elif name == "io.debezium.time.MicroTimestamp":
            out[col] = int((v - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
        else:
            out[col] = v
    return out


@dataclasses.dataclass
class Template:
    """A real message of one table: its value and key schemas and a source block to copy."""

    table: str
    value_schema: bytes
    key_schema: bytes
    fields: dict[str, dict[str, Any]]
    key_fields: dict[str, dict[str, Any]]
    source: dict[str, Any]


def templates_from_topics(config: PipelineConfig, prefix: str, timeout: float = 120) -> dict[str, Template]:
    out: dict[str, Template] = {}
    consumer = KafkaConsumer(bootstrap_servers=list(config.kafka.bootstrap_servers),
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000)
    deadline = time.monotonic() + timeout
    try:
        while len(out) < len(TABLES) and time.monotonic() < deadline:
            topics = [f"{prefix}.public.{t}" for t in TABLES if t not in out]
            existing = set(consumer.topics())
            tps = [TopicPartition(t, p) for t in topics if t in existing
                   for p in (consumer.partitions_for_topic(t) or ())]
            if not tps:
                time.sleep(1)
                continue
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            for rec in consumer:
                if rec.value is None:
                    continue
                doc = json.loads(rec.value)
                key = json.loads(rec.key)
                table = doc["payload"]["source"]["table"]
                if table in out:
                    continue
                schema = doc["schema"]
                after = next(f for f in schema["fields"] if f["field"] == "after")
                out[table] = Template(
                    table=table,
                    value_schema=orjson.dumps(schema),
                    key_schema=orjson.dumps(key["schema"]),
                    fields={f["field"]: f for f in after["fields"]},
                    key_fields={f["field"]: f for f in key["schema"]["fields"]},
                    source=doc["payload"]["source"],
                )
    finally:
        consumer.close()
    missing = set(TABLES) - set(out)
    if missing:
        raise SystemExit(f"no template message for {sorted(missing)} from the bench connector")
    return out


# --- The workload ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Event:
    table: str
    op: str
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def workload(seed: int = 7) -> Iterator[Event]:
    """A producer-shaped mix of change events (tombstones follow deletes and are not counted)."""
    rnd = random.Random(seed)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    cycle, trade_id = 0, 1
    books: dict[tuple[str, int], list[dict[str, Any]]] = {}
    kline_counts: dict[str, int] = {}
    while True:
        now = t0 + timedelta(seconds=30 * cycle)
        for sym in SYMBOLS:
            price = Decimal(rnd.randint(100_00, 900_00)) / 100
            # an order book snapshot: 20 levels a side
            uid = cycle * 100 + SYMBOLS.index(sym)
            rows = []
            for side in ("bid", "ask"):
                for level in range(20):
                    row = {"symbol": sym, "last_update_id": uid, "side": side, "level": level,
                           "price": price + Decimal(level if side == "ask" else -level) / 100,
                           "quantity": Decimal(rnd.randint(1, 10**8)) / 10**8, "snapshot_time": now}
                    rows.append(row)
                    yield Event("order_book_levels", "c", {k: row[k] for k in
                                ("symbol", "last_update_id", "side", "level")}, None, row)
            books[(sym, cycle)] = rows
            # retention: the snapshot of 10 cycles ago is deleted
            for row in books.pop((sym, cycle - 10), []):
                yield Event("order_book_levels", "d", {k: row[k] for k in
                            ("symbol", "last_update_id", "side", "level")}, row, None)
            # trades
            for _ in range(30):
                qty = Decimal(rnd.randint(1, 10**6)) / 10**6
                row = {"symbol": sym, "trade_id": trade_id, "price": price, "quantity": qty,
                       "quote_quantity": price * qty,
                       "trade_time": now + timedelta(milliseconds=rnd.randint(0, 29_999)),
                       "is_buyer_maker": rnd.random() < 0.5, "is_best_match": True}
                trade_id += 1
                yield Event("trades", "c", {"symbol": sym, "trade_id": row["trade_id"]}, None, row)
            # the open 1m kline is updated, a new one starts every other cycle
            k = kline_counts.get(sym, 0)
            for op in ("u", "c") if cycle % 2 else ("u",):
                if op == "c":
                    k += 1
                    kline_counts[sym] = k
                open_time = t0 + timedelta(minutes=k)
                row = {"symbol": sym, "interval": "1m", "open_time": open_time,
                       "close_time": open_time + timedelta(seconds=59, milliseconds=999),
                       "open_price": price, "high_price": price + 1, "low_price": price - 1,
                       "close_price": price,
                       "volume": Decimal("12.5"), "quote_volume": price * Decimal("12.5"),
                       "trade_count": rnd.randint(1, 999), "taker_buy_base_volume": Decimal("6.25"),
                       "taker_buy_quote_volume": price * Decimal("6.25")}
                key = {"symbol": sym, "interval": "1m", "open_time": open_time}
                yield Event("klines", op, key, None, row)
            yield Event("latest_prices", "u", {"symbol": sym}, None,
                        {"symbol": sym, "price": price, "updated_at": now})
            t = {"symbol": sym, "price_change": Decimal("-1.5"), "price_change_percent": Decimal("-0.25"),
                 "weighted_avg_price": price, "prev_close_price": price, "last_price": price,
                 "last_quantity": Decimal("0.001"), "bid_price": price, "bid_quantity": Decimal(2),
                 "ask_price": price, "ask_quantity": Decimal(3), "open_price": price, "high_price": price,
                 "low_price": price, "volume": Decimal("12345.678"), "quote_volume": Decimal("1234567.891"),
                 "open_time": now - timedelta(days=1), "close_time": now, "first_trade_id": 1,
                 "last_trade_id": trade_id, "trade_count": trade_id}
            yield Event("ticker_24hr", "u", {"symbol": sym}, None, t)
        cycle += 1


def messages(events: Iterator[Event], templates: Mapping[str, Template], prefix: str, n: int,
             lsn0: int = 10**10) -> Iterator[tuple[str, bytes, bytes | None]]:
    """(topic, key, value) of `n` change events; a delete is followed by its tombstone (not counted)."""
    lsn = lsn0
    for count, ev in enumerate(events):
        if count >= n:
            return
        tpl = templates[ev.table]
        lsn += 40
        now_ms = int(time.time() * 1000)
        source = dict(tpl.source, ts_ms=now_ms, ts_us=now_ms * 1000, ts_ns=now_ms * 1_000_000, lsn=lsn,
                      txId=lsn // 1000, snapshot="false", name=prefix)
        payload = {
            "before": encode_row(ev.before, tpl.fields) if ev.before is not None else None,
            "after": encode_row(ev.after, tpl.fields) if ev.after is not None else None,
            "source": source, "transaction": None, "op": ev.op, "ts_ms": now_ms,
            "ts_us": now_ms * 1000, "ts_ns": now_ms * 1_000_000,
        }
        key_payload = orjson.dumps(encode_row(ev.key, tpl.key_fields))
        key = b'{"schema":' + tpl.key_schema + b',"payload":' + key_payload + b"}"
        value = b'{"schema":' + tpl.value_schema + b',"payload":' + orjson.dumps(payload) + b"}"
        topic = f"{prefix}.public.{ev.table}"
        yield topic, key, value
        if ev.op == "d":
            yield topic, key, None


# --- Helpers ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def applied(samples: Mapping[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("cdc_consumer_events_applied_total"))


def histogram(samples: Mapping[str, float], name: str) -> list[tuple[float, float]]:
    buckets = []
    for k, v in samples.items():
        m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', k)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), v))
    return sorted(buckets)


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus-style: linear interpolation inside the bucket holding the q-th observation."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def consumer_env(run_id: str, prefix: str, group: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PIPELINE__DEBEZIUM__TOPIC_PREFIX": prefix,
        "PIPELINE__CASSANDRA__KEYSPACE": run_id,
        "PIPELINE__CONSUMER__GROUP_ID": group,
        "PIPELINE__CONSUMER__DEAD_LETTER_TOPIC": f"{run_id}.dead-letter",
        "PIPELINE__CONSUMER__METRICS_PORT": str(port),
    })
    return env


def drain(run_id: str, prefix: str, workers: int, total: int, logs: Path,
          profile: str | None = None) -> dict[str, float]:
    port = free_port()
    group = f"{run_id}-drain{workers}"
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "consumer", "--workers", str(workers)]
    log = logs / f"drain{workers}.log"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=consumer_env(run_id, prefix, group, port),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    ports = [port + i for i in range(workers)]
    first: float | None = None
    first_count = 0.0
    last_change, last_count = time.monotonic(), -1.0
    deadline = time.monotonic() + 1800
    wait = 0.1
    try:
        while True:
            time.sleep(wait)
            now = time.monotonic()
            count = sum(applied(scrape(p)) for p in ports)
            if count > 0 and first is None:
                first, first_count = now, count
            # A scrape renders every metric under the consumer's GIL: between the first events and
            # shortly before the expected last one, look rarely (the ends are still seen within 0.1 s).
            if first is not None and count > first_count and count < total:
                eta = (total - count) * (now - first) / (count - first_count)
                wait = min(1.0, max(0.1, eta / 2))
            if count != last_count:
                last_change, last_count = now, count
            if count >= total:
                break
            if proc.poll() is not None:
                raise SystemExit(f"consumer exited {proc.returncode}; see {log}")
            if now > deadline or (first is not None and now - last_change > 60):
                raise SystemExit(f"drain stalled at {count}/{total}; see {log}")
        assert first is not None
        elapsed = last_change - first
        rate = (last_count - first_count) / elapsed if elapsed > 0 else float("nan")
        return {"events": last_count, "seconds": elapsed, "events_per_s": rate}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def decode_map_only(mappings: Any, templates: Mapping[str, Template], prefix: str, n: int) -> float:
    """Seconds per event that decoding and mapping take, on the first `n` events of the workload (it
    repeats every few thousand), alone in the process: no producer thread taking the GIL meanwhile."""
    hints, spent, clock = mappings.decode_hints, 0.0, time.perf_counter
    for offset, (topic, key, value) in enumerate(messages(workload(), templates, prefix, n)):
        t0 = clock()
        change = decode(topic, 0, offset, key, value, hints)
        if change is not None:
            mapper = mappings.for_change(change)
            assert mapper is not None
            mapper.map(change)
        spent += clock() - t0
    return spent / n


def kafka_only(config: PipelineConfig, prefix: str, records: int) -> tuple[float, float]:
    """Seconds (wall, and CPU of this process) per record that kafka-python takes to hand over `records`
    preloaded records, with the consumer's fetch settings, touching what the consumer reads of each;
    nothing decoded or written. Timed from the first poll that returned records (not counted)."""
    consumer = KafkaConsumer(
        *(f"{prefix}.public.{t}" for t in TABLES), bootstrap_servers=list(config.kafka.bootstrap_servers),
        group_id=f"{prefix}-kafka-only", enable_auto_commit=False, auto_offset_reset="earliest",
        **fetch_settings(config.consumer))
    try:
        seen, timed, first, cpu = 0, 0, 0.0, 0.0
        deadline = time.monotonic() + 600
        while seen < records:
            if time.monotonic() > deadline:
                raise SystemExit(f"kafka-only read stalled at {seen}/{records}")
            batch = consumer.poll(timeout_ms=1000)
            n = 0
            for recs in batch.values():
                for rec in recs:
                    _ = (rec.topic, rec.partition, rec.offset, rec.key, rec.value)
                n += len(recs)
            seen += n
            if first:
                timed += n
            elif n:
                first, cpu = time.perf_counter(), time.process_time()
        return (time.perf_counter() - first) / max(timed, 1), (time.process_time() - cpu) / max(timed, 1)
    finally:
        consumer.close()


def raw_ceiling(sink: CassandraSink[Any], writes: Sequence[Any]) -> dict[str, Any]:
    from cassandra.concurrent import execute_concurrent as _execute_concurrent

    def execute_concurrent(*args: Any, **kwargs: Any) -> None:
        for ok, result in _execute_concurrent(*args, **kwargs):
            if not ok:
                raise RuntimeError(f"raw ceiling write failed: {result}")

    results: dict[str, Any] = {"single": {}, "batched": {}}
    # Prepare every statement first: execute_concurrent pulls the next statement from the driver's IO
    # thread, where a synchronous prepare would wait on itself.
    seen = set()
    for w in writes:
        shape = (w.table, w.kind, tuple(w.key), tuple(w.values))
        if shape not in seen:
            seen.add(shape)
            sink.bind(w)
    sample = writes[: min(len(writes), 60_000)]
    for c in (64, 128, 256, 512):
        t = time.perf_counter()
        execute_concurrent(sink.session, ((sink.bind(w), None) for w in sample), concurrency=c,
                           raise_on_first_error=True, results_generator=True)
        rate = len(sample) / (time.perf_counter() - t)
        results["single"][c] = rate
        say(f"raw ceiling, single-row statements, concurrency {c}: {rate:,.0f} rows/s ({len(sample)} rows)")
    best_c = max(results["single"], key=results["single"].get)
    t = time.perf_counter()
    execute_concurrent(sink.session, ((sink.bind(w), None) for w in writes), concurrency=best_c,
                       raise_on_first_error=True, results_generator=True)
    results["single_full"] = len(writes) / (time.perf_counter() - t)
    say(f"raw ceiling, single rows, all {len(writes)} rows at concurrency {best_c}: "
        f"{results['single_full']:,.0f} rows/s")
    results["batched_cpu_us"] = {}
    for c in (64, 128):
        t, cpu = time.perf_counter(), time.process_time()
        requests, rejected = sink.build((w, None) for w in writes)
        assert not rejected
        execute_concurrent(sink.session, ((r.statement, None) for r in requests), concurrency=c,
                           raise_on_first_error=True, results_generator=True)
        rate = len(writes) / (time.perf_counter() - t)
        results["batched"][c] = rate
        # CPU of this process (every thread: with the GIL, about its Python time) per row
        results["batched_cpu_us"][c] = (time.process_time() - cpu) / len(writes) * 1e6
        say(f"raw ceiling, single-partition batches of <= {sink.batch_max_rows} ({len(requests)} requests), "
            f"concurrency {c}: {rate:,.0f} rows/s, {results['batched_cpu_us'][c]:.1f} µs CPU per row")
    results["best"] = max(results["single_full"], *results["batched"].values())
    best_batched = max(results["batched"], key=results["batched"].get)
    results["cpu_us_per_row"] = results["batched_cpu_us"][best_batched]
    return results


# --- The run ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(parser)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1000, help="rows/s inserted for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the one-process drain under cProfile into FILE")
    args = parser.parse_args()
    env_file = ROOT / ".env"  # `make bench` exports it; a bare run reads it the same way
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            var, sep, setting = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                os.environ.setdefault(var.strip(), setting.strip())
    base = load_or_exit(args.config)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so that the clean-up below runs

    signal.signal(signal.SIGTERM, interrupted)
    run_id = "bench" + "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    prefix, load_prefix = run_id, f"{run_id}t"
    config = with_debezium(base, connector_name=run_id, slot_name=run_id, topic_prefix=prefix)
    config = dataclasses.replace(config, cassandra=dataclasses.replace(config.cassandra, keyspace=run_id))
    logs = ROOT / "bench" / "results" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    say(f"run {run_id}: logs in {logs}")

    import psycopg2
    from apply_cql import split_statements  # type: ignore[import-not-found]

    pg = psycopg2.connect(host=config.postgres.host, port=config.postgres.port, dbname=config.postgres.dbname,
                          user="postgres", password=os.environ.get("POSTGRES_PASSWORD", ""))
    pg.autocommit = True
    sink: CassandraSink[Any] = CassandraSink(config.cassandra, batch_max_rows=config.consumer.batch_max_rows)
    sink.connect()
    admin = KafkaAdminClient(bootstrap_servers=list(config.kafka.bootstrap_servers))
    report: dict[str, Any] = {"run": run_id, "events": args.events}
    try:
        for st in split_statements((ROOT / "infra" / "cassandra-init.cql").read_text()):
            if st.strip():
                sink.execute(re.sub(r"\bbinance\b", run_id, st), timeout=120)
        tpl_sym = "BENCHTPLUSDT"
        with pg.cursor() as cur:
            for t in TABLES:  # what an interrupted run may have left
                cur.execute(f"DELETE FROM {t} WHERE symbol LIKE 'BENCH%%'")
            cur.execute("INSERT INTO latest_prices VALUES (%s, 1.5, now())", (tpl_sym,))
            cur.execute("INSERT INTO trades VALUES (%s, 1, 1.5, 2, 3, now(), true, true)", (tpl_sym,))
            cur.execute("INSERT INTO order_book_levels VALUES (%s, 1, 'bid', 0, 1.5, 2, now())", (tpl_sym,))
            cur.execute("INSERT INTO klines VALUES (%s, '1m', now(), now(), 1, 2, 0.5, 1.5, 10, 15, 7, 3, 4)",
                        (tpl_sym,))
            cur.execute("INSERT INTO ticker_24hr VALUES (%s, -1.5, -0.25, 100.1, 101, 99.5, 0.001, 99.4, 2, "
                        "99.6, 3, 101, 102, 98, 12345.678, 1234567.891, now(), now(), 1, 99, 99)", (tpl_sym,))
        props = connector_config(config, inline_password=True)
        # Snapshot only the bench's own rows: the database may hold anything else.
        props["snapshot.select.statement.overrides"] = ",".join(f"public.{t}" for t in TABLES)
        for t in TABLES:
            props[f"snapshot.select.statement.overrides.public.{t}"] = (
                f"SELECT * FROM public.{t} WHERE symbol = '{tpl_sym}'"
            )
        register(config, props=props, timeout=180, say=say)
        templates = templates_from_topics(config, prefix)
        say("templates: real snapshot messages of the bench connector for " + ", ".join(sorted(templates)))

        # Preload; the same rows, decoded and mapped, are kept for the raw ceiling (not timed).
        mappings = load_mappings(dataclasses.replace(config, debezium=dataclasses.replace(
            config.debezium, topic_prefix=load_prefix)), sink, with_postgres=False)
        writes: list[Any] = []
        partitions = config.debezium.topic_partitions   # as the connector creates its topics
        admin.create_topics({f"{load_prefix}.public.{table}": {"num_partitions": partitions,
                                                               "replication_factor": 1} for table in TABLES})
        # Compressed as the connector's producer compresses (debezium.compression_type).
        codec = config.debezium.compression_type
        producer = KafkaProducer(bootstrap_servers=list(config.kafka.bootstrap_servers), acks=1,
                                 linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20,
                                 compression_type=None if codec == "none" else codec)
        started = time.perf_counter()
        nbytes = nrecords = 0
        for topic, key, value in messages(workload(), templates, load_prefix, args.events):
            producer.send(topic, key=key, value=value)
            nbytes += len(value or b"") + len(key)
            nrecords += 1
            change = decode(topic, 0, nrecords, key, value, mappings.decode_hints)
            if change is not None:
                mapper = mappings.for_change(change)
                assert mapper is not None
                writes.extend(mapper.map(change))
        producer.flush()
        producer.close()
        say(f"preloaded {args.events} change events ({nrecords} records with tombstones, "
            f"{nbytes / 1e6:.0f} MB, {nbytes / max(nrecords, 1):.0f} B/record) "
            f"in {time.perf_counter() - started:.1f}s")
        report["records"] = nrecords
        report["mb"] = nbytes / 1e6

        say(f"{len(writes)} Cassandra writes for the raw ceiling")
        report["raw"] = raw_ceiling(sink, writes)
        del writes

        # The consumer's other stages, each alone: one process does them in series with the writing, apart
        # from C code that releases the GIL (decompression, sockets), which the sum does not know about.
        per_record, cpu_per_record = kafka_only(config, load_prefix, nrecords)
        per_event = nrecords / args.events
        stages = {"kafka_records_per_s": 1 / per_record,
                  "kafka_cpu_us_per_event": cpu_per_record * per_event * 1e6,
                  "decode_map_us_per_event": decode_map_only(mappings, templates, load_prefix,
                                                             min(args.events, 50_000)) * 1e6,
                  "ceiling_cpu_us_per_row": report["raw"]["cpu_us_per_row"]}
        python_us = (stages["ceiling_cpu_us_per_row"] + stages["kafka_cpu_us_per_event"]
                     + stages["decode_map_us_per_event"])
        stages["bound_events_per_s"] = 1e6 / python_us
        stages["bound"] = stages["bound_events_per_s"] / report["raw"]["best"]
        report["stages"] = stages
        say(f"each stage alone, CPU per event: writing (the ceiling's) "
            f"{stages['ceiling_cpu_us_per_row']:.1f} µs, "
            f"kafka-python {stages['kafka_cpu_us_per_event']:.1f} µs ({stages['kafka_records_per_s']:,.0f} "
            f"records/s), decoding and mapping {stages['decode_map_us_per_event']:.1f} µs")
        say(f"added up, as one process runs them with its Python on one core: about "
            f"{stages['bound_events_per_s']:,.0f} events/s = {stages['bound']:.0%} of the ceiling, before "
            "offset and metric bookkeeping (an estimate: parts of each stage are C that releases the GIL)")

        # Drain with the real consumer.
        one = drain(run_id, load_prefix, 1, args.events, logs, args.profile)
        say(f"consumer, 1 process: {one['events_per_s']:,.0f} events/s "
            f"({one['events']:.0f} events in {one['seconds']:.1f}s)")
        two = drain(run_id, load_prefix, 2, args.events, logs)
        say(f"consumer, --workers 2: {two['events_per_s']:,.0f} events/s "
            f"({two['events']:.0f} events in {two['seconds']:.1f}s)")
        report["drain"] = {"1": one, "2": two}
        best = report["raw"]["best"]
        say(f"ratio to the raw ceiling ({best:,.0f} rows/s): 1 process {one['events_per_s'] / best:.0%}, "
            f"2 processes {two['events_per_s'] / best:.0%}")

        if not args.skip_latency:
            report["latency"] = latency(config, run_id, prefix, pg, args.rate, args.latency_seconds, logs)
        (logs / "report.json").write_text(json.dumps(report, indent=2, default=str))
        say(f"report: {logs / 'report.json'}")
    finally:
        say("cleaning up")
        try:
            delete(config, purge=True, say=lambda _: None)
        except Exception as exc:
            say(f"connector cleanup: {exc}")
        with pg.cursor() as cur:
            for t in TABLES:
                cur.execute(f"DELETE FROM {t} WHERE symbol LIKE 'BENCH%%'")
        pg.close()
        sink.execute(f"DROP KEYSPACE IF EXISTS {run_id}", timeout=120)
        sink.close()
        doomed = [t for t in admin.list_topics() if t.startswith(run_id) or t.endswith(f".{run_id}")]
        if doomed:
            admin.delete_topics(doomed, raise_errors=False)
        admin.close()
    return 0


def latency(config: PipelineConfig, run_id: str, prefix: str, pg: Any, rate: int, seconds: float,
            logs: Path) -> dict[str, float]:
    """Rows into PostgreSQL at `rate`/s; the consumer's end-to-end histogram gives p50/p99."""
    port = free_port()
    log = logs / "latency.log"
    proc = subprocess.Popen([sys.executable, "-m", "consumer"], cwd=ROOT,
                            env=consumer_env(run_id, prefix, f"{run_id}-latency", port),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    name = "cdc_consumer_end_to_end_seconds"
    try:
        # Caught up with the snapshot (the template rows) first: nothing applied for 3 s.
        last, since = -1.0, time.monotonic()
        while time.monotonic() - since < 3 or last <= 0:
            time.sleep(0.2)
            now = applied(scrape(port))
            if now != last:
                last, since = now, time.monotonic()
            if proc.poll() is not None:
                raise SystemExit(f"consumer exited {proc.returncode}; see {log}")
        before = histogram(scrape(port), name)
        start_count = applied(scrape(port))
        say(f"latency: inserting {rate} trades/s into PostgreSQL for {seconds:.0f}s")
        batch = max(1, rate // 20)  # a transaction every 50 ms, like a producer flushing small batches
        sent = 0
        t0 = time.monotonic()
        trade_id = 10**9
        with pg.cursor() as cur:
            while time.monotonic() - t0 < seconds:
                rows = []
                for _ in range(batch):
                    trade_id += 1
                    rows.append(cur.mogrify("(%s, %s, 100.5, 0.25, 25.125, now(), true, true)",
                                            ("BENCHLATUSDT", trade_id)).decode())
                cur.execute("INSERT INTO trades VALUES " + ",".join(rows))
                sent += batch
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 120
        while applied(scrape(port)) - start_count < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        after = histogram(scrape(port), name)
        diff = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
        if not diff or diff[-1][1] <= 0:
            from pipeline.connector import connector_state

            state = connector_state(config)
            why = state.trace.splitlines()[-1] if state and state.trace else ""
            say(f"latency: none of the {sent} rows reached Cassandra; the bench connector is "
                f"{state.describe() if state else 'gone'}: {why}")
        p50, p99 = quantile(diff, 0.5), quantile(diff, 0.99)
        achieved = sent / elapsed
        say(f"latency at {achieved:,.0f} rows/s ({sent} rows): p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms (PostgreSQL commit -> Cassandra ack)")
        dbz = debezium_share(config, prefix)
        say(f"  of which Debezium (PostgreSQL commit -> record in Kafka): p50 {dbz[0] * 1000:.0f} ms, "
            f"p99 {dbz[1] * 1000:.0f} ms")
        return {"rate": achieved, "rows": sent, "p50_s": p50, "p99_s": p99,
                "debezium_p50_s": dbz[0], "debezium_p99_s": dbz[1]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def debezium_share(config: PipelineConfig, prefix: str) -> tuple[float, float]:
    """p50/p99 of (Kafka record timestamp - source.ts_ms) of the latency run's rows: Debezium's part."""
    topic = f"{prefix}.public.trades"
    c = KafkaConsumer(bootstrap_servers=list(config.kafka.bootstrap_servers), enable_auto_commit=False,
                      consumer_timeout_ms=2000)
    tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    lags = []
    for rec in c:
        if rec.value is None or b"BENCHLATUSDT" not in rec.value:
            continue
        source = orjson.loads(rec.value)["payload"]["source"]
        lags.append((rec.timestamp - source["ts_ms"]) / 1000)
    c.close()
    lags.sort()
    if not lags:
        return float("nan"), float("nan")
    return lags[len(lags) // 2], lags[min(len(lags) - 1, int(len(lags) * 0.99))]


if __name__ == "__main__":
    run(main)
