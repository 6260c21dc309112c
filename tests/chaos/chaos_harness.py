"""Helpers of the chaos suite: the processes it runs, the stream of changes, faults and measurements.

Kept small on purpose; tests/chaos/README.md explains the design, test_chaos.py has the scenarios.
The consumer-side helpers of tests/integration/test_consumer_e2e.py are reused (keyspace from
infra/cassandra-init.cql under another name, consumer environment, log tail, committed offsets).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import requests
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from consumer.verify import TableReport, print_reports, read_pg_tables, verify
from pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from test_consumer_e2e import (  # noqa: E402 - the e2e module is found through the path above
    E2E,
    _committed,
    _drop_keyspace,
    _end_offsets,
    _make_keyspace,
    _tail,
)

__all__ = [
    "E2E",
    "ROOT",
    "TABLES",
    "ConnectorWatch",
    "Proc",
    "SqlChanges",
    "_committed",
    "_drop_keyspace",
    "_end_offsets",
    "_make_keyspace",
    "_tail",
    "classify",
    "dead_letters",
    "pid_of",
    "port_open",
    "stack",
    "wait_clean",
]

TABLES = ("latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr")
STACK_SH = ROOT / "infra" / "native" / "stack.sh"


# --- the native stack --------------------------------------------------------------------------------

def stack(action: str, *services: str, timeout: float = 600) -> float:
    """`infra/native/stack.sh ACTION SERVICE...`; the seconds it took. AssertionError if it fails."""
    started = time.monotonic()
    proc = subprocess.run(["bash", str(STACK_SH), action, *services], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise AssertionError(f"stack.sh {action} {' '.join(services)} failed ({proc.returncode}):\n{tail}")
    return time.monotonic() - started


def pid_of(service: str) -> int | None:
    """The pid stack.sh recorded for a JVM service (proof that a restart really happened)."""
    path = ROOT / ".stack" / "run" / f"{service}.pid"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- processes we start ------------------------------------------------------------------------------

class Proc:
    """A subprocess of ours (consumer or producer) with its log; remembers whether we stopped it, so an
    exit nobody asked for (a crash) can be counted."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.signalled: int | None = None
        self._out = log.open("wb")
        self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=self._out,
                                      stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def unexpected_exit(self) -> bool:
        return not self.alive and self.signalled is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def send(self, sig: int) -> None:
        assert self.alive, f"{self.name} is not running (exit {self.popen.returncode}):\n{_tail(self.log)}"
        self.signalled = sig
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; SIGKILL if it does not go. Returns the exit status."""
        if self.alive:
            self.send(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self._out.close()
        return code


# --- the SQL part of the stream ----------------------------------------------------------------------

BASE = "timestamptz '2024-06-01 00:00:00Z'"


def _sql_ops(s: str, k: int, rng: random.Random) -> list[str]:
    """Inserts, updates and deletes on the row(s) of key k of every table, for symbol prefix s: moves
    across Cassandra partitions (a trade or an order book level changing day, a kline changing its
    primary key) and deletes followed by re-inserts, the cases that can leave stale copies or
    resurrect rows."""
    p = f"{rng.randint(1, 99999)}.{rng.randint(0, 10**8):08d}"
    day = rng.randint(0, 3)
    sym = f"{s}{k % 4}"
    return rng.choice([
        [f"INSERT INTO trades VALUES ('{s}', {k}, {p}, 0.5, {p}, {BASE} + interval '{day} days {k} seconds', "
         f"{str(k % 2 == 0).lower()}, true) ON CONFLICT (symbol, trade_id) DO UPDATE SET "
         "price = EXCLUDED.price, trade_time = EXCLUDED.trade_time"],
        [f"DELETE FROM trades WHERE symbol = '{s}' AND trade_id = {k}"],
        [f"INSERT INTO klines VALUES ('{s}', '1m', {BASE} + interval '{k} minutes', "
         f"{BASE} + interval '{k} minutes 59.999 seconds', 1, 2, 0.5, {p}, 10, 15, {k}, 3, 4) "
         "ON CONFLICT (symbol, interval, open_time) DO UPDATE SET close_price = EXCLUDED.close_price, "
         "trade_count = klines.trade_count + 1"],
        # a primary-key update: Debezium sends a delete of the old key and a create of the new one
        [f"UPDATE klines SET open_time = open_time + interval '40 days' WHERE symbol = '{s}' "
         f"AND interval = '1m' AND open_time = {BASE} + interval '{k} minutes' AND NOT EXISTS (SELECT 1 "
         f"FROM klines WHERE symbol = '{s}' AND interval = '1m' AND open_time = {BASE} + "
         f"interval '40 days {k} minutes')"],
        [f"DELETE FROM klines WHERE symbol = '{s}' AND interval = '1m' AND open_time IN "
         f"({BASE} + interval '{k} minutes', {BASE} + interval '40 days {k} minutes')"],
        [f"INSERT INTO order_book_levels VALUES ('{s}', {k}, 'bid', {lvl}, {p}, 1, "
         f"{BASE} + interval '{day} days') ON CONFLICT DO NOTHING" for lvl in range(3)],
        [f"UPDATE order_book_levels SET snapshot_time = snapshot_time + interval '1 day', quantity = {p} "
         f"WHERE symbol = '{s}' AND last_update_id = {k}"],
        [f"DELETE FROM order_book_levels WHERE symbol = '{s}' AND last_update_id = {k}"],
        [f"INSERT INTO latest_prices VALUES ('{sym}', {p}, now()) ON CONFLICT (symbol) DO UPDATE SET "
         "price = EXCLUDED.price, updated_at = EXCLUDED.updated_at"],
        [f"DELETE FROM latest_prices WHERE symbol = '{sym}'"],
        [f"INSERT INTO ticker_24hr VALUES ('{sym}', -1.5, -0.25, {p}, 101, 99.5, 0.001, 99.4, 2, 99.6, 3, "
         f"101, 102, 98, {p}, 1234567.891, now() - interval '1 day', now(), 1, {k}, 99) "
         "ON CONFLICT (symbol) DO UPDATE SET last_price = EXCLUDED.last_price, volume = EXCLUDED.volume, "
         "close_time = EXCLUDED.close_time"],
        [f"DELETE FROM ticker_24hr WHERE symbol = '{sym}'"],
    ])


class SqlChanges(threading.Thread):
    """Transactions of a few random inserts, updates and deletes, about `rate` per second, as the
    superuser, on the keys of `symbol`; reconnects when PostgreSQL goes away. `changes` counts the
    rows changed by committed transactions."""

    def __init__(self, dsn: dict[str, Any], symbol: str, *, rate: float = 10, keys: int = 150,
                 seed: int = 0) -> None:
        super().__init__(name=f"sql-{symbol}", daemon=True)
        self.dsn, self.symbol, self.rate, self.keys = dsn, symbol, rate, keys
        self.rng = random.Random(seed)
        self.changes = 0
        self.failed = 0
        self._halt = threading.Event()

    def stop(self) -> int:
        self._halt.set()
        self.join(30)
        return self.changes

    def run(self) -> None:
        conn = None
        while not self._halt.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(**{**self.dsn, "connect_timeout": 3})
                with conn, conn.cursor() as cur:
                    n = 0
                    for _ in range(self.rng.randint(2, 5)):
                        for stmt in _sql_ops(self.symbol, self.rng.randrange(self.keys), self.rng):
                            cur.execute(stmt)
                            n += max(cur.rowcount, 0)
                self.changes += n
            except psycopg2.Error:
                self.failed += 1
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                self._halt.wait(0.5)
            self._halt.wait(1 / self.rate)
        if conn is not None:
            conn.close()


def producer_changes(log_text: str) -> int:
    """Rows the producer changed, from its cycle lines (inserted=.. updated=.. deleted=..)."""
    return sum(int(a) + int(b) + int(c) for a, b, c in
               re.findall(r"inserted=(\d+) updated=(\d+) deleted=(\d+)", log_text))


# --- Kafka Connect -----------------------------------------------------------------------------------

class ConnectorWatch(threading.Thread):
    """Polls the connector's status twice a second and records every state it is seen in, e.g.
    'RUNNING/RUNNING', 'RUNNING/FAILED', 'unreachable' (Connect down)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self.url = f"{url.rstrip('/')}/connectors/{name}/status"
        self.seen: list[str] = []
        self.traces: list[str] = []
        self._halt = threading.Event()

    def state(self) -> str:
        try:
            body = requests.get(self.url, timeout=2).json()
        except (requests.RequestException, ValueError):
            return "unreachable"
        tasks = body.get("tasks") or []
        for t in tasks:
            if t.get("trace"):
                cause = [x for x in t["trace"].splitlines() if x.startswith("Caused by")]
                self.traces.append((cause or t["trace"].splitlines())[-1][:300])
        return f"{body.get('connector', {}).get('state', '?')}/{','.join(t.get('state', '?') for t in tasks)}"

    def run(self) -> None:
        while not self._halt.is_set():
            s = self.state()
            if not self.seen or self.seen[-1] != s:
                self.seen.append(s)
            self._halt.wait(0.5)

    def stop(self) -> list[str]:
        self._halt.set()
        if self.is_alive():
            self.join(5)
        return self.seen


# --- measurements ------------------------------------------------------------------------------------

def wait_clean(config: PipelineConfig, symbols: list[str], timeout: float,
               check: Callable[[], None] = lambda: None) -> tuple[bool, list[TableReport]]:
    """verify (the code of `python -m consumer verify`, on the rows of `symbols`) until PostgreSQL and
    Cassandra are equal, calling `check` between passes (it raises when a process crashed).
    Returns (equal, the last reports)."""
    deadline = time.monotonic() + timeout
    reports: list[TableReport] = []
    while True:
        check()
        try:
            reports = verify(config, symbols=symbols)
        except Exception as exc:  # Cassandra or PostgreSQL still coming back
            reports = []
            print(f"verify: {type(exc).__name__}: {exc}")
        if reports and all(r.equal for r in reports):
            return True, reports
        if time.monotonic() > deadline:
            return False, reports
        time.sleep(1)


def describe(reports: Iterable[TableReport]) -> str:
    lines: list[str] = []
    print_reports(list(reports), lines.append)
    return "\n".join(lines)


def classify(config: PipelineConfig, symbols: list[str]) -> dict[str, int]:
    """The rows of `symbols` by PostgreSQL primary key, read from both sides (independently of verify):
    lost        a PostgreSQL row with no Cassandra row;
    resurrected a Cassandra row whose PostgreSQL row does not exist (deleted);
    duplicated  a PostgreSQL row present more than once in Cassandra (a stale copy under another
                Cassandra key, e.g. the old day partition of a trade whose time changed)."""
    from consumer.sink import CassandraSink
    from consumer.verify import _pg_connect, normalise

    pg_tables = read_pg_tables(config, [m.table for m in config.mappings])
    out = {"lost": 0, "resurrected": 0, "duplicated": 0}
    sink: CassandraSink[Any] = CassandraSink(config.cassandra)
    sink.connect()
    conn = _pg_connect(config)
    try:
        for m in config.mappings:
            pk = pg_tables[m.table].primary_key
            renamed = [dict(m.rename).get(c, c) for c in pk]
            with conn.cursor() as cur:
                cur.execute(f"SELECT {', '.join(pk)} FROM {m.table} WHERE symbol = ANY(%s)", (symbols,))
                pg_keys = {tuple(normalise(v) for v in row) for row in cur.fetchall()}
            rows = sink.execute(f"SELECT {', '.join(renamed)} FROM {config.cassandra.keyspace}.{m.target}",
                                timeout=60)
            seen: dict[tuple[Any, ...], int] = {}
            for row in rows:
                if row[renamed.index(dict(m.rename).get("symbol", "symbol"))] not in symbols:
                    continue
                key = tuple(normalise(v) for v in row)
                seen[key] = seen.get(key, 0) + 1
            out["lost"] += len(pg_keys - seen.keys())
            out["resurrected"] += sum(n for k, n in seen.items() if k not in pg_keys)
            out["duplicated"] += sum(n - 1 for k, n in seen.items() if k in pg_keys)
    finally:
        conn.close()
        sink.close()
    return out


def dead_letters(config: PipelineConfig, topic: str) -> list[Any]:
    """Every record in a dead-letter topic (none if it does not exist)."""
    servers = list(config.kafka.bootstrap_servers)
    reader = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, consumer_timeout_ms=2000,
                           max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        parts = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while any(reader.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in reader.poll(timeout_ms=1000).values():
                out.extend(recs)
        return out
    finally:
        reader.close()


# --- poison ------------------------------------------------------------------------------------------

@dataclass
class Poison:
    what: str
    topic: str
    partition: int
    key: bytes
    value: bytes
    reason: str          # the error_reason header its dead letter must carry
    offset: int = -1


def _envelope(table: str, op: str, after: Any, *, drop: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {
        "before": None, "after": after, "op": op, "ts_ms": int(time.time() * 1000),
        "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": "chaos", "db": "binance",
                   "schema": "public", "table": table, "lsn": 1, "txId": 1, "snapshot": "false",
                   "ts_ms": int(time.time() * 1000)},
    }
    payload.pop(drop, None)
    return {"schema": None, "payload": payload}


def poison_messages(prefix: str, big_bytes: int) -> list[Poison]:
    """The five kinds of poison of scenario 8 (schemaless envelopes, as JsonConverter writes them
    without schemas; the consumer reads both)."""
    trades = f"{prefix}.public.trades"
    prices = f"{prefix}.public.latest_prices"
    key = json.dumps({"symbol": "POISON", "trade_id": 1}).encode()
    wrong_type = _envelope("trades", "c", {"symbol": "POISON", "trade_id": "not-a-number", "price": "1",
                                           "quantity": "1", "quote_quantity": "1", "trade_time": "x",
                                           "is_buyer_maker": True, "is_best_match": True})
    # A trades-shaped row on the trades topic that claims another table (source.table).
    unknown = _envelope("no_such_table", "c", {"symbol": "POISON", "trade_id": 2, "price": "1",
                                               "quantity": "1", "quote_quantity": "1",
                                               "trade_time": "2026-12-04T00:00:00Z",
                                               "is_buyer_maker": True, "is_best_match": True})
    missing_after = _envelope("latest_prices", "c", None, drop="after")
    big = json.dumps({"schema": None, "payload": "x" * big_bytes}).encode()
    return [
        Poison("invalid JSON", trades, 0, key, b"{not json", "not_json"),
        Poison("wrong type", trades, 1, key, json.dumps(wrong_type).encode(), "bad_value"),
        Poison("unknown table", trades, 2, key, json.dumps(unknown).encode(), "wrong_table"),
        Poison(f"{len(big) / 1e6:.1f} MB", trades, 0, key, big, "bad_envelope"),
        Poison("missing after", prices, 0, json.dumps({"symbol": "POISON"}).encode(),
               json.dumps(missing_after).encode(), "bad_envelope"),
    ]


def produce(config: PipelineConfig, message: Poison) -> None:
    producer = KafkaProducer(bootstrap_servers=list(config.kafka.bootstrap_servers), acks="all",
                             max_request_size=16 * 1024 * 1024)
    try:
        meta = producer.send(message.topic, key=message.key, value=message.value,
                             partition=message.partition).get(timeout=30)
        message.offset = meta.offset
    finally:
        producer.close()


# --- results -----------------------------------------------------------------------------------------

@dataclass
class Result:
    scenario: str
    fault: str = ""
    events: int = 0
    lost: int | None = None
    duplicated: int | None = None
    resurrected: int | None = None
    recovery_s: float | None = None
    dead_letters: str = ""
    unexpected_exits: int = 0
    seconds: float = 0.0
    status: str = "not run"
    notes: list[str] = field(default_factory=list)


def write_results(results: list[Result], directory: Path) -> Path:
    """results.json and results.md under `directory` (in .stack/, which git ignores)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    md = directory / "results.md"
    md.write_text(table(results) + "\n\n" + "\n".join(
        f"- **{r.scenario}**: {r.fault}. " + " ".join(r.notes) for r in results) + "\n")
    return md


def table(results: list[Result]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))

    head = ("| scenario | events | lost | duplicated | resurrected | recovery (s) | dead letters "
            "| unexpected exits | scenario time (s) | status |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        rows.append(f"| {r.scenario} | {r.events} | {num(r.lost)} | {num(r.duplicated)} | "
                    f"{num(r.resurrected)} | {num(r.recovery_s)} | {r.dead_letters or '-'} | "
                    f"{r.unexpected_exits} | {r.seconds:.0f} | {r.status} |")
    return "\n".join(rows)
