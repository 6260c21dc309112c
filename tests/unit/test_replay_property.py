"""Replay safety, as a property: any history, replayed in any of the ways Kafka can replay it, ends equal.

A random history of one PostgreSQL table (snapshot, inserts, updates, deletes, primary-key changes,
re-snapshots, unchanged-TOAST updates) becomes the Kafka records Debezium would write (real envelopes,
with or without schemas, in a random decimal mode, with tombstones), with increasing LSNs. They go
through decode -> TableMapper -> an in-memory model of Cassandra's last-write-wins semantics (cells
with timestamps, row markers, row tombstones; a delete wins a tie). Then:
- applying them in order, then any prefix again (a consumer group rewound), and
- applying a prefix, then everything from any earlier point (a crash before the offset commit)
both end with exactly the rows of the source table, as the Cassandra table should hold them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import orjson
from fake_secrets import PIPELINE_ENV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decode import UNAVAILABLE_VALUE, DecodeHints, decode
from consumer.mapping import TableMapper, Write, build_mappings, parse_cql
from pipeline.config import load

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load(ROOT / "config" / "pipeline.yaml", PIPELINE_ENV)
MAPPINGS = build_mappings(CONFIG, parse_cql((ROOT / "infra" / "cassandra-init.cql").read_text()))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Row = dict[str, Any]


# --- The source tables -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]  # column -> text | int | dec | ts | bool
    pk: tuple[str, ...]
    full: bool  # REPLICA IDENTITY FULL
    keys: Callable[[], st.SearchStrategy[tuple[Any, ...]]]
    expected_key: Callable[[Row], tuple[Any, ...]]  # the Cassandra primary key of a source row

    @property
    def mapper(self) -> TableMapper:
        return next(m for m in MAPPINGS.mappers if m.mapping.table == self.name)


def ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def kline_bucket(interval: str, t: datetime) -> date:
    return (
        t.date() if interval == "1s" else date(t.year, t.month, 1) if interval == "1m" else date(t.year, 1, 1)
    )


T0 = datetime(2024, 5, 30, 22, tzinfo=UTC)
TIMES = st.integers(0, 5 * 86_400_000_000).map(lambda us: T0 + timedelta(microseconds=us))
KEY_TIMES = st.sampled_from([T0, T0 + timedelta(days=3, milliseconds=5), datetime(2025, 1, 1, tzinfo=UTC)])
KLINE_DECIMALS = (
    "open_price",
    "high_price",
    "low_price",
    "close_price",
    "volume",
    "quote_volume",
    "taker_buy_base_volume",
    "taker_buy_quote_volume",
)

TABLES = {
    "trades": Table(
        "trades",
        {
            "symbol": "text",
            "trade_id": "int",
            "price": "dec",
            "quantity": "dec",
            "quote_quantity": "dec",
            "trade_time": "ts",
            "is_buyer_maker": "bool",
            "is_best_match": "bool",
        },
        ("symbol", "trade_id"),
        True,
        lambda: st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.integers(1, 3)),
        lambda r: (r["symbol"], r["trade_time"].date(), r["trade_id"]),
    ),
    "klines": Table(
        "klines",
        {
            "symbol": "text",
            "interval": "text",
            "open_time": "ts",
            "close_time": "ts",
            **{c: "dec" for c in KLINE_DECIMALS},
            "trade_count": "int",
        },
        ("symbol", "interval", "open_time"),
        False,
        lambda: st.tuples(st.just("BTCUSDT"), st.sampled_from(["1s", "1m", "1h"]), KEY_TIMES),
        lambda r: (r["symbol"], r["interval"], kline_bucket(r["interval"], r["open_time"]), r["open_time"]),
    ),
    "latest_prices": Table(
        "latest_prices",
        {"symbol": "text", "price": "dec", "updated_at": "ts"},
        ("symbol",),
        False,
        lambda: st.tuples(st.sampled_from(["A", "B", "C", "D"])),
        lambda r: (r["symbol"],),
    ),
}

# 14 significant digits at most, so that even decimal.handling.mode=double carries them exactly.
DECIMALS = st.integers(-(10**14), 10**14).map(lambda n: Decimal(n).scaleb(-8))


def values_for(table: Table, draw: Callable[[st.SearchStrategy[Any]], Any], columns: list[str]) -> Row:
    out: Row = {}
    for c in columns:
        kind = table.columns[c]
        out[c] = draw(
            {
                "dec": DECIMALS,
                "ts": TIMES,
                "int": st.integers(0, 2**40),
                "text": st.text(max_size=3),
                "bool": st.none() | st.booleans() if c == "is_best_match" else st.booleans(),
            }[kind]
        )
    return out


# --- Debezium's records ------------------------------------------------------------------------------


@dataclass
class Encoder:
    table: Table
    schemas: bool
    mode: str  # decimal.handling.mode

    def field(self, name: str) -> dict[str, Any]:
        kind = self.table.columns[name]
        f: dict[str, Any] = {
            "field": name,
            "optional": True,
            "type": {"text": "string", "int": "int64", "bool": "boolean", "ts": "string"}.get(kind, ""),
        }
        if kind == "ts":
            f["name"] = "io.debezium.time.ZonedTimestamp"
        if kind == "dec":
            f.update(
                {
                    "precise": {
                        "type": "bytes",
                        "name": "org.apache.kafka.connect.data.Decimal",
                        "parameters": {"scale": "18", "connect.decimal.precision": "38"},
                    },
                    "string": {"type": "string"},
                    "double": {"type": "double"},
                }[self.mode]
            )
        return f

    def value(self, name: str, v: Any) -> Any:
        kind = self.table.columns[name]
        if v is None or v == UNAVAILABLE_VALUE:
            return v
        if kind == "ts":
            return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if kind == "dec":
            d = v.quantize(Decimal("1e-18"), context=Context(prec=60))
            if self.mode == "precise":
                n = int(d.scaleb(18, context=Context(prec=60)))
                return base64.b64encode(n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)).decode()
            return f"{d:f}" if self.mode == "string" else float(d)
        return v

    def row(self, row: Row | None) -> Row | None:
        return None if row is None else {c: self.value(c, v) for c, v in row.items()}

    def envelope(self, payload: Any, columns: list[str], name: str) -> bytes:
        if not self.schemas:
            return orjson.dumps(payload)
        struct = {"type": "struct", "name": name, "fields": [self.field(c) for c in columns]}
        if name.endswith(".Key"):
            return orjson.dumps({"schema": struct, "payload": payload})
        envelope = {
            "type": "struct",
            "fields": [
                {**struct, "optional": True, "field": "before"},
                {**struct, "optional": True, "field": "after"},
                {"type": "struct", "field": "source", "fields": [{"type": "int64", "field": "lsn"}]},
                {"type": "string", "field": "op"},
            ],
        }
        return orjson.dumps({"schema": envelope, "payload": payload})

    def record(self, op: str, lsn: int, before: Row | None, after: Row | None) -> tuple[bytes, bytes]:
        t = self.table
        row = after if after is not None else before
        assert row is not None
        key = self.envelope(
            {c: self.value(c, row[c]) for c in t.pk}, list(t.pk), f"binance.public.{t.name}.Key"
        )
        source = {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": "binance",
            "ts_ms": 1,
            "snapshot": "true" if op == "r" else "false",
            "db": "binance",
            "schema": "public",
            "table": t.name,
            "txId": lsn // 7,
            "lsn": lsn,
        }
        payload = {
            "before": self.row(before),
            "after": self.row(after),
            "source": source,
            "op": op,
            "ts_ms": 2,
        }
        return key, self.envelope(payload, list(t.columns), f"binance.public.{t.name}.Value")


def defaults_for_delete(table: Table, row: Row) -> Row:
    """A REPLICA IDENTITY DEFAULT delete: the key, and Debezium's type defaults for the NOT NULL rest."""
    filler = {"dec": Decimal(0), "ts": EPOCH, "int": 0, "text": "", "bool": False}
    return {c: row[c] if c in table.pk else filler[k] for c, k in table.columns.items()}


# --- Cassandra ---------------------------------------------------------------------------------------


@dataclass
class CassandraRow:
    marker: int = -1
    tombstone: int = -1
    cells: dict[str, tuple[int, Any]] = field(default_factory=dict)


class Cassandra:
    """Last write wins by timestamp, per cell; a row tombstone hides what is not newer (delete wins ties)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], CassandraRow] = {}

    def apply(self, write: Write) -> None:
        row = self.rows.setdefault(tuple(write.key.items()), CassandraRow())
        ts = write.timestamp_us
        if write.kind == "delete":
            row.tombstone = max(row.tombstone, ts)
            return
        assert write.kind == "upsert"
        row.marker = max(row.marker, ts)
        for col, value in write.values.items():
            old = row.cells.get(col)
            if old is not None and old[0] == ts:
                # Cassandra would pick one by comparing the values: two writes of one cell at one
                # timestamp must therefore be the same write, or the order would be left to chance.
                assert old[1] == value, f"{col}: {old[1]!r} and {value!r} both at timestamp {ts}"
            if old is None or ts > old[0]:
                row.cells[col] = (ts, value)

    def table(self) -> dict[tuple[Any, ...], Row]:
        out = {}
        for key, row in self.rows.items():
            visible = {c: v for c, (ts, v) in row.cells.items() if ts > row.tombstone and v is not None}
            if row.marker > row.tombstone or visible:
                out[tuple(v for _, v in key)] = visible
        return out


def expected(table: Table, source: dict[tuple[Any, ...], Row]) -> dict[tuple[Any, ...], Row]:
    """The source table as Cassandra should hold it: key columns out, times in milliseconds, no nulls."""
    key_columns = set(table.mapper.mapping.key)
    out = {}
    for row in source.values():
        values = {
            c: ms(v) if isinstance(v, datetime) else v
            for c, v in row.items()
            if c not in key_columns and v is not None
        }
        out[table.expected_key(row)] = values
    return out


# --- The property --------------------------------------------------------------------------------------


def history(
    table: Table, draw: Callable[[st.SearchStrategy[Any]], Any], encoder: Encoder
) -> tuple[list[tuple[bytes | None, bytes | None]], dict[tuple[Any, ...], Row]]:
    source: dict[tuple[Any, ...], Row] = {}
    records: list[tuple[bytes | None, bytes | None]] = []
    non_key = [c for c in table.columns if c not in table.pk]
    lsn = draw(st.integers(1, 10**12))

    def new_row(key: tuple[Any, ...]) -> Row:
        return {**dict(zip(table.pk, key, strict=True)), **values_for(table, draw, non_key)}

    def snapshot() -> None:
        nonlocal lsn
        lsn += draw(st.integers(1, 10**6))
        for row in source.values():  # every read carries the snapshot's LSN
            records.append(encoder.record("r", lsn, None, dict(row)))

    def step() -> int:
        nonlocal lsn
        lsn += draw(st.integers(1, 10**6))  # each change its own, larger LSN
        return lsn

    for key in draw(st.lists(table.keys(), min_size=1, max_size=4, unique=True)):
        source[key] = new_row(key)
    snapshot()
    for _ in range(draw(st.integers(4, 30))):
        action = draw(
            st.sampled_from(["insert", "insert", "update", "update", "update", "delete", "rekey", "snapshot"])
        )
        if action in ("update", "delete", "rekey") and source:
            key = draw(st.sampled_from(sorted(source, key=repr)))
        else:
            key = draw(table.keys())
        if action == "snapshot":
            snapshot()
        elif action == "insert" and key not in source:
            source[key] = new_row(key)
            records.append(encoder.record("c", step(), None, dict(source[key])))
        elif action == "update" and key in source:
            old = source[key]
            changed = draw(st.lists(st.sampled_from(non_key), min_size=1, unique=True))
            new = {**old, **values_for(table, draw, changed)}
            source[key] = new
            after = dict(new)
            if not table.full:  # unchanged TOASTed values arrive as the placeholder
                for c in draw(st.lists(st.sampled_from(non_key), unique=True)):
                    if c not in changed:
                        after[c] = UNAVAILABLE_VALUE
            records.append(encoder.record("u", step(), dict(old) if table.full else None, after))
        elif action in ("delete", "rekey") and key in source:
            old = source.pop(key)
            before = dict(old) if table.full else defaults_for_delete(table, old)
            at = step()
            records.append(encoder.record("d", at, before, None))
            records.append((encoder.record("d", at, before, None)[0], None))  # the tombstone
            new_key = draw(table.keys())
            if action == "rekey" and new_key not in source and new_key != key:
                # UPDATE ... SET <primary key>: a delete and a create at one LSN
                source[new_key] = {**old, **dict(zip(table.pk, new_key, strict=True))}
                records.append(encoder.record("c", at, None, dict(source[new_key])))
    return records, source


def apply(
    cassandra: Cassandra, records: list[tuple[bytes | None, bytes | None]], hints: DecodeHints, table: Table
) -> None:
    for n, (key, value) in enumerate(records):
        change = decode(f"binance.public.{table.name}", 0, n, key, value, hints)
        if change is not None:
            for write in table.mapper.map(change):
                cassandra.apply(write)


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(table: Table, data: st.DataObject) -> None:
    encoder = Encoder(
        table,
        data.draw(st.booleans(), "schemas"),
        data.draw(st.sampled_from(["precise", "string", "double"]), "decimal mode"),
    )
    records, source = history(table, data.draw, encoder)
    hints = DecodeHints(tables=MAPPINGS.decode_hints.tables, decimal_mode=encoder.mode)  # type: ignore[arg-type]
    want = expected(table, source)

    once = Cassandra()
    apply(once, records, hints, table)
    assert once.table() == want

    rewound = data.draw(st.integers(0, len(records)), "prefix replayed")
    apply(once, records[:rewound], hints, table)
    assert once.table() == want

    crashed_at = data.draw(st.integers(0, len(records)), "crash after")
    resumed_from = data.draw(st.integers(0, crashed_at), "resume from")
    again = Cassandra()
    apply(again, records[:crashed_at], hints, table)
    apply(again, records[resumed_from:], hints, table)
    assert again.table() == want


@PROPERTY
@given(st.data())
def test_replay_trades_replica_identity_full(data: st.DataObject) -> None:
    """Deletes and day-moving updates find their partition in the full before image."""
    check(TABLES["trades"], data)


@PROPERTY
@given(st.data())
def test_replay_klines_replica_identity_default_with_toast(data: st.DataObject) -> None:
    """Buckets from key columns; unchanged TOAST values keep their old value."""
    check(TABLES["klines"], data)


@PROPERTY
@given(st.data())
def test_replay_latest_prices_with_key_changes(data: st.DataObject) -> None:
    check(TABLES["latest_prices"], data)


def test_the_model_catches_an_order_mistake() -> None:
    """The property has teeth: with every write at one timestamp, a replayed old value would win."""
    cassandra = Cassandra()
    key = {"symbol": "A"}
    cassandra.apply(Write("binance", "latest_prices", "upsert", key, {"price": Decimal(1)}, 10))
    cassandra.apply(Write("binance", "latest_prices", "upsert", key, {"price": Decimal(2)}, 11))
    cassandra.apply(Write("binance", "latest_prices", "upsert", key, {"price": Decimal(1)}, 10))  # replayed
    assert cassandra.table() == {("A",): {"price": Decimal(2)}}
    cassandra.apply(Write("binance", "latest_prices", "delete", key, {}, 11))  # delete wins a tie
    assert cassandra.table() == {}
    cassandra.apply(Write("binance", "latest_prices", "upsert", key, {"price": None}, 12))  # row marker only
    assert cassandra.table() == {("A",): {}}
