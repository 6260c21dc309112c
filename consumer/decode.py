"""Decode one Kafka record written by Debezium's PostgreSQL connector (Kafka Connect JsonConverter).

`decode(topic, partition, offset, key, value, hints)` is pure and runs once per message. It returns a
`Change` with Python values (`Decimal`, timezone-aware UTC `datetime`, `date`, `time`, `bytes`, `int`,
`str`, `bool`, ...), or None for what carries no row change: tombstones, heartbeats, transaction
metadata and logical-decoding messages (op `m`). Anything else it cannot make sense of raises
`PoisonMessageError`, and never another exception type.

Encodings handled (Debezium 3.x):
- envelopes with schemas (`{"schema": ..., "payload": ...}`) and without (the payload alone);
- NUMERIC in every `decimal.handling.mode`: `precise` (base64 of the big-endian two's-complement
  unscaled value; the scale is the field schema's `parameters.scale`, or, without schemas, the column's
  `ColumnHint.scale`), `io.debezium.data.VariableScaleDecimal` structs `{scale, value}`, `string`, and
  `double` (a JSON number, taken as the decimal it prints as). A decimal written as a JSON number by
  JsonConverter's `decimal.format=NUMERIC` is re-read exactly, never through a float;
- times: `Timestamp` (ms), `MicroTimestamp` (µs), `NanoTimestamp` (ns, truncated to µs),
  `ZonedTimestamp` (ISO-8601; timestamptz columns), `Date` (days), `Time` (ms), `MicroTime` (µs),
  `NanoTime` (ns), `ZonedTime`, and Kafka Connect's own Timestamp/Date/Time (`time.precision.mode=
  connect`). Without schemas an integer is only read as a time when its column hint names the unit:
  guessing between ms and µs is how values end up off by 1000;
- `__debezium_unavailable_value` (an unchanged TOASTed column, in any of its forms: text, base64 bytes,
  arrays) is dropped from `before`/`after`, and named in `Change.unavailable`, so the row keeps its old
  value downstream.

Keys: a delete's key is read from the record key; a create, read or update takes it from the primary key
columns of `after` when the hints name them (the consumer's mappings do, from PostgreSQL's catalog), since
the record key repeats exactly those values: one JSON document less to parse per message.

Schema cache: JsonConverter with `schemas.enable=true` repeats the whole schema in every message, and
parsing it dominates decoding. The bytes before `,"payload":` of a value or key are cached (an LRU of
`configure_schema_cache(n)` schemas) with the parsed schema and a per-field conversion plan; a message
that starts with exactly those bytes has only its payload parsed. A prefix is cached only once a full
parse has shown it to be `{"schema":` followed by one complete JSON value equal to the parsed schema, and
anything unexpected on the fast path (payload slice not valid JSON, no closing brace, a number needing the
exact re-read) goes back to the full parse: results are those of the uncached path, always.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from typing import Any, Final, Literal, NamedTuple, cast

import orjson

from consumer.errors import PoisonMessageError

__all__ = [
    "HEARTBEAT_TOPIC_PREFIX",
    "UNAVAILABLE_VALUE",
    "Change",
    "ColumnHint",
    "DecodeHints",
    "TableHints",
    "clear_schema_cache",
    "configure_schema_cache",
    "decode",
]

Op = Literal["c", "u", "d", "r", "t"]
ColumnKind = Literal["decimal", "timestamp", "date", "time", "blob", "raw"]
TimeUnit = Literal["ms", "us", "ns"]
DecimalMode = Literal["precise", "string", "double"]

HEARTBEAT_TOPIC_PREFIX: Final = "__debezium-heartbeat"
UNAVAILABLE_VALUE: Final = "__debezium_unavailable_value"
_UNAVAILABLE_B64: Final = base64.b64encode(UNAVAILABLE_VALUE.encode()).decode()
_UNAVAILABLE_TEXT: Final = (UNAVAILABLE_VALUE, _UNAVAILABLE_B64)
_UNAVAILABLE_LISTS: Final = ([UNAVAILABLE_VALUE], list(UNAVAILABLE_VALUE.encode()))
_OPS: Final = frozenset("cudrt")
_MAX_LSN: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE: Final = date(1970, 1, 1)
_DECIMAL_TEXT: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SNAPSHOT_FALSE: Final = frozenset({"false", ""})


# --- Results and hints ---------------------------------------------------------------------------

class Change(NamedTuple):
    """One row change (or a truncate) of one captured PostgreSQL table. Immutable; a NamedTuple rather
    than a frozen dataclass because one is made per message, in a quarter of the time."""

    topic: str
    partition: int
    offset: int
    table: str                      # source table (source.table, else the topic's last part)
    op: Op                          # c create, u update, d delete, r snapshot read, t truncate
    key: dict[str, Any]             # primary key column -> value ({} for a truncate)
    before: dict[str, Any] | None   # old row: d always; u only with REPLICA IDENTITY FULL
    after: dict[str, Any] | None    # new row: c, r, u
    lsn: int | None                 # source.lsn: this change's WAL position
    ts_ms: int | None               # source.ts_ms: commit time of its transaction, ms since epoch
    schema: str | None = None       # source.schema, the PostgreSQL schema
    snapshot: bool = False          # read during a (initial or incremental) snapshot
    tx_id: int | None = None        # source.txId
    unavailable: frozenset[str] = frozenset()  # unchanged-TOAST columns dropped

    @property
    def row(self) -> dict[str, Any] | None:
        """The row as it is now (after), or as it was for a delete (before)."""
        return self.after if self.after is not None else self.before


@dataclass(frozen=True, slots=True)
class ColumnHint:
    """How to read one column's JSON value when the message carries no schema for it."""

    kind: ColumnKind = "raw"
    scale: int | None = None        # decimal: scale of a `precise` (base64) value
    unit: TimeUnit | None = None    # timestamp/time: unit of an integer value


@dataclass(frozen=True, slots=True)
class TableHints:
    columns: Mapping[str, ColumnHint] = field(default_factory=dict)
    key: tuple[str, ...] = ()       # PostgreSQL primary key, to build Change.key when the record has none
    # `key` was read from PostgreSQL (not guessed from the Cassandra key): creates, reads and updates
    # then take Change.key from `after` instead of parsing the record key.
    key_is_primary: bool = False


@dataclass(frozen=True, slots=True)
class DecodeHints:
    """What schemaless messages do not say: built from the mapping config (see consumer.mapping)."""

    tables: Mapping[str, TableHints] = field(default_factory=dict)   # by source table name
    decimal_mode: DecimalMode = "precise"                              # debezium.decimal_handling_mode


_NO_HINTS: Final = DecodeHints()
_NO_TABLE: Final = TableHints()


class _NeedExactNumbers(Exception):
    """A decimal arrived as a JSON number: parse the message again with numbers as Decimal."""


# --- Entry point ---------------------------------------------------------------------------------

def decode(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    hints: DecodeHints | None = None,
) -> Change | None:
    """Decode one record; None for tombstones, heartbeats, transaction metadata and op `m`."""
    if value is None or topic.startswith(HEARTBEAT_TOPIC_PREFIX):
        return None
    h = hints or _NO_HINTS
    try:
        try:
            return _decode(topic, partition, offset, key, value, h, orjson.loads, _cache_max > 0)
        except _NeedExactNumbers:
            return _decode(topic, partition, offset, key, value, h, _loads_exact, False)
    except PoisonMessageError as exc:
        exc.locate(topic, partition, offset)
        raise
    except MemoryError:
        raise
    except Exception as exc:  # the contract: nothing but PoisonMessageError escapes for bad input
        raise PoisonMessageError(
            "undecodable", "value", f"{type(exc).__name__}: {exc}"[:300]
        ).locate(topic, partition, offset) from exc


def _loads_exact(data: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(data, parse_float=Decimal, parse_constant=refuse)


def _decode(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    hints: DecodeHints,
    loads: Callable[[bytes], Any],
    cached: bool,
) -> Change | None:
    plan, schema, payload = _split(value, "value", loads, cached)
    if payload is None:                                   # JSON null, or schema + null payload
        return None
    if not isinstance(payload, dict):
        raise PoisonMessageError("bad_envelope", "value.payload", f"expected an object, got {_kind(payload)}")
    op = payload.get("op")
    if op is None:
        if _is_metadata(payload):
            return None
        raise PoisonMessageError("bad_envelope", "value.payload.op", "no op: not a change event")
    if op == "m":
        return None
    if not isinstance(op, str) or op not in _OPS:
        raise PoisonMessageError("bad_op", "value.payload.op", f"unknown op {str(op)[:20]!r}")

    source = payload.get("source")
    if source is None:
        source = {}
    elif not isinstance(source, dict):
        raise PoisonMessageError("bad_envelope", "value.payload.source", f"not an object: {_kind(source)}")
    table = source.get("table")
    if table is None or table == "":
        table = topic.rsplit(".", 1)[-1]
    elif not isinstance(table, str):
        raise PoisonMessageError("bad_envelope", "value.payload.source.table", "not a string")
    db_schema = source.get("schema")
    if db_schema is not None and not isinstance(db_schema, str):
        raise PoisonMessageError("bad_envelope", "value.payload.source.schema", "not a string")
    lsn = _int_or_none(source.get("lsn"), "value.payload.source.lsn", 0, _MAX_LSN)
    ts_ms = _int_or_none(source.get("ts_ms"), "value.payload.source.ts_ms", -(2**63), _MAX_LSN)
    tx_id = _int_or_none(source.get("txId"), "value.payload.source.txId", 0, 2**64 - 1)
    snap = source.get("snapshot")
    snapshot = bool(snap) if not isinstance(snap, str) else snap not in _SNAPSHOT_FALSE

    table_hints = hints.tables.get(table, _NO_TABLE)
    mode = hints.decimal_mode
    before_schema = after_schema = None
    if schema is not None:
        envelope_fields = plan.envelope_fields() if plan is not None else _fields(schema, "value.schema")
        before_schema = envelope_fields.get("before")
        after_schema = envelope_fields.get("after")

    dropped: set[str] = set()
    if plan is not None:
        before = _planned_row(
            payload.get("before"), plan, before_schema, table_hints, mode, "value.payload.before", dropped
        )
        after = _planned_row(
            payload.get("after"), plan, after_schema, table_hints, mode, "value.payload.after", dropped
        )
    else:
        before = _row(
            payload.get("before"), before_schema, table_hints, mode, "value.payload.before", dropped
        )
        after = _row(payload.get("after"), after_schema, table_hints, mode, "value.payload.after", dropped)
    if op in ("c", "r", "u") and after is None:
        raise PoisonMessageError("bad_envelope", "value.payload.after", f"op {op} without an after row")
    if op == "d" and before is None:
        raise PoisonMessageError("bad_envelope", "value.payload.before", "op d without a before row")

    row_key: dict[str, Any] | None = None
    pk = table_hints.key
    if op == "t":
        row_key = {}
    elif op != "d" and table_hints.key_is_primary and pk and after is not None:   # (always: c, r, u)
        # The record key repeats the primary key columns of `after`: take them from there, unparsed.
        row_key = {c: after.get(c) for c in pk}
        if None in row_key.values():
            row_key = None   # a key column missing from after: the record key says what it is
    if row_key is None:
        if key is not None:
            row_key = _key(key, table_hints, mode, loads, cached)
        else:
            source_row = after if after is not None else before
            assert source_row is not None
            row_key = {c: source_row[c] for c in pk if c in source_row}

    return Change(
        topic=topic,
        partition=partition,
        offset=offset,
        table=table,
        op=cast(Op, op),  # checked against _OPS above
        key=row_key,
        before=before,
        after=after,
        lsn=lsn,
        ts_ms=ts_ms,
        schema=db_schema,
        snapshot=snapshot,
        tx_id=tx_id,
        unavailable=frozenset(dropped),
    )


# --- Envelope parts ------------------------------------------------------------------------------

def _parse(data: bytes, where: str, loads: Callable[[bytes], Any]) -> Any:
    if not data:
        raise PoisonMessageError("not_json", where, "empty")
    try:
        return loads(data)
    except (ValueError, TypeError, RecursionError) as exc:   # orjson.JSONDecodeError is a ValueError
        raise PoisonMessageError("not_json", where, str(exc)[:200]) from None


def _envelope(doc: Any, where: str) -> tuple[dict[str, Any] | None, Any]:
    """(schema, payload) of a JsonConverter record, with or without schemas."""
    if isinstance(doc, dict) and len(doc) == 2 and "schema" in doc and "payload" in doc:
        schema = doc["schema"]
        if schema is not None and not isinstance(schema, dict):
            raise PoisonMessageError("bad_envelope", f"{where}.schema", f"not an object: {_kind(schema)}")
        return schema, doc["payload"]
    return None, doc


def _is_metadata(payload: dict[str, Any]) -> bool:
    """A transaction BEGIN/END record, or a heartbeat that reached a non-heartbeat topic."""
    if payload.get("status") in ("BEGIN", "END") and "id" in payload:
        return True
    return len(payload) == 1 and type(payload.get("ts_ms")) is int


def _fields(struct: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(struct, dict):
        raise PoisonMessageError("bad_envelope", where, "schema is not an object")
    fields = struct.get("fields")
    if not isinstance(fields, list):
        raise PoisonMessageError("bad_envelope", f"{where}.fields", "struct schema without a fields list")
    out: dict[str, dict[str, Any]] = {}
    for f in fields:
        if not isinstance(f, dict) or not isinstance(f.get("field"), str):
            raise PoisonMessageError("bad_envelope", f"{where}.fields", "field schema without a name")
        out[f["field"]] = f
    return out


def _split(
    data: bytes, where: str, loads: Callable[[bytes], Any], cached: bool
) -> tuple[_SchemaPlan | None, dict[str, Any] | None, Any]:
    """(cached plan or None, schema, payload) of a key or value: from the schema cache when its bytes
    start with a known schema, else by a full parse (which then teaches the cache)."""
    hit = _cached_split(data) if cached else None
    if hit is not None:
        plan, payload = hit
        return plan, plan.schema, payload
    schema, payload = _envelope(_parse(data, where, loads), where)
    return (_remember(data, schema) if cached and schema is not None else None), schema, payload


def _key(
    data: bytes, table_hints: TableHints, mode: DecimalMode, loads: Callable[[bytes], Any], cached: bool
) -> dict[str, Any]:
    plan, schema, payload = _split(data, "key", loads, cached)
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise PoisonMessageError("bad_envelope", "key", f"expected an object, got {_kind(payload)}")
    if plan is not None:
        row = _planned_row(payload, plan, schema, table_hints, mode, "key", None)
    else:
        row = _row(payload, schema, table_hints, mode, "key", None)
    assert row is not None
    return row


def _row(
    raw: Any,
    struct: dict[str, Any] | None,
    table_hints: TableHints,
    mode: DecimalMode,
    where: str,
    dropped: set[str] | None,
) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PoisonMessageError("bad_envelope", where, f"expected an object, got {_kind(raw)}")
    fields = _fields(struct, f"{where}(schema)") if struct is not None else None
    hints = table_hints.columns
    out: dict[str, Any] = {}
    for col, v in raw.items():
        if v is None:
            out[col] = None
            continue
        if dropped is not None and _is_unavailable(v):
            dropped.add(col)
            continue
        hint = hints.get(col)
        if fields is None:
            if hint is not None:
                out[col] = _hinted(v, hint, mode, f"{where}.{col}")
            else:
                out[col] = float(v) if type(v) is Decimal else v
            continue
        fs = fields.get(col)
        if fs is None:
            raise PoisonMessageError("bad_envelope", f"{where}.{col}", "column not in the message's schema")
        out[col] = _typed(v, fs, hint, f"{where}.{col}")
    return out


def _is_unavailable(v: Any) -> bool:
    t = type(v)
    if t is str:
        return v in _UNAVAILABLE_TEXT
    if t is list:
        return bool(v) and (v == _UNAVAILABLE_LISTS[0] or v == _UNAVAILABLE_LISTS[1])
    return False


# --- Values with a schema ------------------------------------------------------------------------

_INT_TYPES: Final = frozenset({"int8", "int16", "int32", "int64"})
_FLOAT_TYPES: Final = frozenset({"float", "double", "float32", "float64"})  # JsonConverter: float, double


def _typed(v: Any, fs: dict[str, Any], hint: ColumnHint | None, where: str) -> Any:
    name = fs.get("name")
    if name is not None:
        semantic = _SEMANTIC.get(name)
        if semantic is not None:
            return semantic(v, fs, where)
    typ = fs.get("type")
    t = type(v)
    if typ in _INT_TYPES:
        if t is not int:
            raise PoisonMessageError("bad_value", where, f"{typ} field holds {_kind(v)}")
    elif typ == "string":
        if t is not str:
            raise PoisonMessageError("bad_value", where, f"string field holds {_kind(v)}")
    elif typ in _FLOAT_TYPES:
        if t is not float and t is not int and t is not Decimal:
            raise PoisonMessageError("bad_value", where, f"{typ} field holds {_kind(v)}")
    elif typ == "boolean":
        if t is not bool:
            raise PoisonMessageError("bad_value", where, f"boolean field holds {_kind(v)}")
    elif typ == "bytes":
        if t is not str:
            raise PoisonMessageError("bad_value", where, f"bytes field holds {_kind(v)}")
        return _b64(v, where)
    elif typ == "struct":
        if t is not dict:
            raise PoisonMessageError("bad_value", where, f"struct field holds {_kind(v)}")
    elif typ == "array":
        if t is not list:
            raise PoisonMessageError("bad_value", where, f"array field holds {_kind(v)}")
    elif typ == "map":
        if t is not dict and t is not list:
            raise PoisonMessageError("bad_value", where, f"map field holds {_kind(v)}")
    else:
        raise PoisonMessageError("bad_envelope", where, f"unknown schema type {str(typ)[:30]!r}")
    if hint is not None and hint.kind != "raw" and name is None:
        # A plain type the mapping wants as something richer: string/double-mode decimals, an
        # epoch number for a timestamp column, ...
        mode: DecimalMode = "double" if t is float else "string"
        return _hinted(v, hint, mode, where)
    if t is Decimal:   # a float64 re-read exactly: keep the column's Python type a float
        return float(v)
    return v


def _precise_decimal(v: Any, fs: dict[str, Any], where: str) -> Decimal:
    params = fs.get("parameters")
    scale_text = params.get("scale") if isinstance(params, dict) else None
    try:
        scale = int(scale_text) if scale_text is not None else None
    except (TypeError, ValueError):
        scale = None
    if scale is None or isinstance(scale_text, bool):
        raise PoisonMessageError("bad_envelope", where, "Decimal schema without an integer parameters.scale")
    if type(v) is str:
        return _unscaled(v, scale, where)
    if type(v) in (int, Decimal):          # JsonConverter decimal.format=NUMERIC: an exact JSON number
        return _finite(Decimal(v), where)
    if type(v) is float:
        raise _NeedExactNumbers
    raise PoisonMessageError("bad_value", where, f"decimal field holds {_kind(v)}")


def _variable_decimal(v: Any, fs: dict[str, Any] | None, where: str) -> Decimal:
    if type(v) is not dict or set(v) != {"scale", "value"}:
        raise PoisonMessageError("bad_value", where, "VariableScaleDecimal is not a {scale, value} object")
    scale, unscaled = v["scale"], v["value"]
    if type(scale) is not int or type(unscaled) is not str:
        raise PoisonMessageError("bad_value", where, "VariableScaleDecimal with a bad scale or value")
    return _unscaled(unscaled, scale, where)


# Unbounded precision and exponent: Decimal arithmetic under it is exact (consumer.encode uses it too).
EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _unscaled(text: str, scale: int, where: str) -> Decimal:
    if not -10_000 <= scale <= 10_000:
        raise PoisonMessageError("bad_value", where, f"decimal scale {scale} out of range")
    raw = _b64(text, where)
    if not raw:
        raise PoisonMessageError("bad_value", where, "empty decimal")
    unscaled = int.from_bytes(raw, "big", signed=True)
    # Exact at any length: scaleb only moves the exponent under this context, and Decimal(int) does not go
    # through int -> str, which Python refuses past 4,300 digits (an unconstrained numeric can be longer).
    return Decimal(unscaled).scaleb(-scale, EXACT)


def _b64(text: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise PoisonMessageError("bad_value", where, "not valid base64") from None


def _finite(d: Decimal, where: str) -> Decimal:
    if not d.is_finite():
        raise PoisonMessageError("bad_value", where, f"non-finite decimal {d}")
    return d


def _decimal_text(v: str, where: str) -> Decimal:
    if not _DECIMAL_TEXT.fullmatch(v):
        raise PoisonMessageError("bad_value", where, f"not a decimal: {v[:40]!r}")
    try:
        return Decimal(v)
    except InvalidOperation:
        raise PoisonMessageError("bad_value", where, f"not a decimal: {v[:40]!r}") from None


def _from_epoch(v: Any, unit: TimeUnit, where: str) -> datetime:
    if type(v) is not int:
        raise PoisonMessageError("bad_value", where, f"timestamp holds {_kind(v)}, expected an integer")
    try:
        if unit == "ms":
            return _EPOCH + timedelta(milliseconds=v)
        if unit == "us":
            return _EPOCH + timedelta(microseconds=v)
        return _EPOCH + timedelta(microseconds=v // 1000)
    except OverflowError:
        raise PoisonMessageError("bad_value", where, f"timestamp {v} {unit} out of range") from None


def _iso_timestamp(v: Any, where: str) -> datetime:
    if type(v) is not str:
        raise PoisonMessageError("bad_value", where, f"ZonedTimestamp holds {_kind(v)}")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise PoisonMessageError("bad_value", where, f"not an ISO-8601 timestamp: {v[:40]!r}") from None
    if dt.tzinfo is None:
        raise PoisonMessageError("bad_value", where, f"timestamp without a UTC offset: {v[:40]!r}")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise PoisonMessageError("bad_value", where, f"timestamp out of range: {v[:40]!r}") from None


def _epoch_date(v: Any, where: str) -> date:
    if type(v) is not int:
        raise PoisonMessageError("bad_value", where, f"date holds {_kind(v)}, expected days since epoch")
    try:
        return _EPOCH_DATE + timedelta(days=v)
    except OverflowError:
        raise PoisonMessageError("bad_value", where, f"date {v} out of range") from None


def _time_of_day(v: Any, unit: TimeUnit, where: str) -> time:
    if type(v) is not int:
        raise PoisonMessageError("bad_value", where, f"time holds {_kind(v)}, expected an integer")
    micros = v * 1000 if unit == "ms" else v if unit == "us" else v // 1000
    if not 0 <= micros < 86_400_000_000:
        raise PoisonMessageError("bad_value", where, f"time of day {v} {unit} out of range")
    seconds, us = divmod(micros, 1_000_000)
    return time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)


def _iso_time(v: Any, where: str) -> time:
    if type(v) is not str:
        raise PoisonMessageError("bad_value", where, f"time holds {_kind(v)}")
    try:
        return time.fromisoformat(v)
    except ValueError:
        raise PoisonMessageError("bad_value", where, f"not an ISO-8601 time: {v[:40]!r}") from None


def _iso_date(v: str, where: str) -> date:
    try:
        return date.fromisoformat(v)
    except ValueError:
        raise PoisonMessageError("bad_value", where, f"not an ISO-8601 date: {v[:40]!r}") from None


_Semantic = Callable[[Any, dict[str, Any], str], Any]
_SEMANTIC: Final[dict[str, _Semantic]] = {
    "org.apache.kafka.connect.data.Decimal": _precise_decimal,
    "io.debezium.data.VariableScaleDecimal": _variable_decimal,
    "io.debezium.time.Timestamp": lambda v, fs, w: _from_epoch(v, "ms", w),
    "org.apache.kafka.connect.data.Timestamp": lambda v, fs, w: _from_epoch(v, "ms", w),
    "io.debezium.time.MicroTimestamp": lambda v, fs, w: _from_epoch(v, "us", w),
    "io.debezium.time.NanoTimestamp": lambda v, fs, w: _from_epoch(v, "ns", w),
    "io.debezium.time.ZonedTimestamp": lambda v, fs, w: _iso_timestamp(v, w),
    "io.debezium.time.Date": lambda v, fs, w: _epoch_date(v, w),
    "org.apache.kafka.connect.data.Date": lambda v, fs, w: _epoch_date(v, w),
    "io.debezium.time.Time": lambda v, fs, w: _time_of_day(v, "ms", w),
    "org.apache.kafka.connect.data.Time": lambda v, fs, w: _time_of_day(v, "ms", w),
    "io.debezium.time.MicroTime": lambda v, fs, w: _time_of_day(v, "us", w),
    "io.debezium.time.NanoTime": lambda v, fs, w: _time_of_day(v, "ns", w),
    "io.debezium.time.ZonedTime": lambda v, fs, w: _iso_time(v, w),
}


# --- Schema cache and conversion plans ----------------------------------------------------------

_SCHEMA_HEAD: Final = b'{"schema":'
_PAYLOAD_SEP: Final = b',"payload":'
_HEAD_LEN: Final = len(_SCHEMA_HEAD)
_SEP_LEN: Final = len(_PAYLOAD_SEP)
_DEFAULT_CACHE_SIZE: Final = 256

_Conv = Callable[[Any, "ColumnHint | None"], Any]
_RowPlan = dict[str, tuple[_Conv, bool]]   # column -> (converter, whether it reads the column's hint)


class _SchemaPlan:
    """One cached schema: the parsed schema and, built on first use, its fields and row plans."""

    __slots__ = ("_envelope", "_rows", "index_key", "prefix", "schema")

    def __init__(self, schema: dict[str, Any], prefix: bytes, index_key: tuple[int, bytes]) -> None:
        self.schema = schema
        self.prefix = prefix            # the message bytes before `,"payload":`
        self.index_key = index_key
        self._envelope: dict[str, dict[str, Any]] | None = None
        self._rows: dict[str, _RowPlan] = {}

    def envelope_fields(self) -> dict[str, dict[str, Any]]:
        fields = self._envelope
        if fields is None:   # raises as the uncached path does, each time, for a bad schema
            fields = self._envelope = _fields(self.schema, "value.schema")
        return fields

    def row_plan(self, struct: dict[str, Any], where: str) -> _RowPlan:
        # `where` names the struct: value.payload.before/after (envelope fields) or key (the key schema)
        plan = self._rows.get(where)
        if plan is None:
            plan = self._rows[where] = _compile_row(struct, where)
        return plan


# The LRU owns the plans (by their whole prefix); the index finds a message's candidates by the prefix's
# length and last bytes, so that a lookup neither copies nor hashes kilobytes of schema.
_lru: OrderedDict[bytes, _SchemaPlan] = OrderedDict()
_index: dict[tuple[int, bytes], list[_SchemaPlan]] = {}
_cache_max: int = _DEFAULT_CACHE_SIZE
_TAIL: Final = 64


def configure_schema_cache(max_entries: int = _DEFAULT_CACHE_SIZE) -> None:
    """Keep up to `max_entries` schemas (LRU); 0 turns the cache off (every message fully parsed)."""
    global _cache_max
    if max_entries < 0:
        raise ValueError("max_entries must be >= 0")
    _cache_max = max_entries
    _evict()


def clear_schema_cache() -> None:
    _lru.clear()
    _index.clear()


def schema_cache_size() -> int:
    return len(_lru)


def _evict() -> None:
    with contextlib.suppress(KeyError, ValueError):   # another thread evicting the same entry
        while len(_lru) > _cache_max:
            _, old = _lru.popitem(last=False)
            plans = _index[old.index_key]
            plans.remove(old)
            if not plans:
                del _index[old.index_key]


def _index_key(data: bytes, at: int) -> tuple[int, bytes]:
    return at, data[max(at - _TAIL, 0) : at]


def _lookup(data: bytes, at: int) -> _SchemaPlan | None:
    plans = _index.get(_index_key(data, at))
    if plans:
        for plan in plans:
            if data.startswith(plan.prefix):   # the whole prefix, byte for byte
                return plan
    return None


def _cached_split(data: bytes) -> tuple[_SchemaPlan, Any] | None:
    """(plan, parsed payload) when `data` starts with a cached schema prefix, else None (full parse)."""
    if not data.startswith(_SCHEMA_HEAD) or not data.endswith(b"}"):
        return None
    # The last `,"payload":` is the envelope's unless the payload has a "payload" key; then the first one
    # is, unless the schema has one. Any position whose prefix equals a cached one is the right split.
    at = data.rfind(_PAYLOAD_SEP, _HEAD_LEN)
    if at < 0:
        return None
    plan = _lookup(data, at)
    if plan is None:
        first = data.find(_PAYLOAD_SEP, _HEAD_LEN, at)
        if first < 0 or (plan := _lookup(data, first)) is None:
            return None
        at = first
    try:
        payload = orjson.loads(data[at + _SEP_LEN : -1])
    except (ValueError, TypeError, RecursionError):
        return None   # the full parse says what is wrong
    # A plain try, not contextlib.suppress, which costs more than the rest of the lookup (every message).
    try:  # noqa: SIM105
        _lru.move_to_end(plan.prefix)
    except KeyError:   # evicted meanwhile: the plan is still valid
        pass
    return plan, payload


def _remember(data: bytes, schema: dict[str, Any]) -> _SchemaPlan | None:
    """After a full parse of `data` gave `schema`: cache its prefix if it is exactly that schema."""
    if not data.startswith(_SCHEMA_HEAD):
        return None
    at = data.find(_PAYLOAD_SEP, _HEAD_LEN)
    if at < 0:
        return None
    try:   # one complete JSON value between the head and the separator, and the same schema
        if orjson.loads(data[_HEAD_LEN:at]) != schema:
            return None
    except (ValueError, TypeError, RecursionError):
        return None   # e.g. a `,"payload":` inside the schema: never cached, always fully parsed
    prefix = data[:at]
    known = _lru.get(prefix)
    if known is not None:
        return known
    plan = _SchemaPlan(schema, prefix, _index_key(data, at))
    _lru[prefix] = plan
    _index.setdefault(plan.index_key, []).append(plan)
    _evict()
    return plan


def _planned_row(
    raw: Any,
    plan: _SchemaPlan,
    struct: dict[str, Any] | None,
    table_hints: TableHints,
    mode: DecimalMode,
    where: str,
    dropped: set[str] | None,
) -> dict[str, Any] | None:
    """`_row` with the struct's per-field converters built once per schema."""
    if raw is None:
        return None
    if struct is None:
        return _row(raw, None, table_hints, mode, where, dropped)
    if not isinstance(raw, dict):
        raise PoisonMessageError("bad_envelope", where, f"expected an object, got {_kind(raw)}")
    if not isinstance(struct, dict):
        _fields(struct, f"{where}(schema)")   # raises, as _row does
    convs = plan.row_plan(struct, where)
    hints = table_hints.columns
    out: dict[str, Any] = {}
    for col, v in raw.items():
        if v is None:
            out[col] = None
            continue
        t = type(v)
        # _is_unavailable inlined for strings, the common case: this runs for every column of every row
        if dropped is not None and (
            (t is str and v in _UNAVAILABLE_TEXT) or (t is list and _is_unavailable(v))
        ):
            dropped.add(col)
            continue
        conv = convs.get(col)
        if conv is None:
            raise PoisonMessageError("bad_envelope", f"{where}.{col}", "column not in the message's schema")
        fn, hinted = conv
        out[col] = fn(v, hints.get(col) if hinted else None)
    return out


def _compile_row(struct: dict[str, Any], where: str) -> _RowPlan:
    fields = _fields(struct, f"{where}(schema)")
    return {col: _compile_field(fs, f"{where}.{col}") for col, fs in fields.items()}


_PLAIN_TYPES: Final[dict[str, tuple[type, ...]]] = {
    **{t: (int,) for t in _INT_TYPES},
    **{t: (float, int) for t in _FLOAT_TYPES},
    "string": (str,),
    "boolean": (bool,),
}
_EPOCH_UNITS: Final[dict[str, TimeUnit]] = {
    "io.debezium.time.Timestamp": "ms",
    "org.apache.kafka.connect.data.Timestamp": "ms",
    "io.debezium.time.MicroTimestamp": "us",
    "io.debezium.time.NanoTimestamp": "ns",
}


def _compile_field(fs: dict[str, Any], w: str) -> tuple[_Conv, bool]:
    """A converter equal to `_typed(v, fs, hint, w)`, with what depends only on the schema done once."""
    name = fs.get("name")
    if name is not None:
        semantic = _SEMANTIC.get(name)
        if semantic is not None:
            if name == "org.apache.kafka.connect.data.Decimal":
                params = fs.get("parameters")
                scale_text = params.get("scale") if isinstance(params, dict) else None
                if type(scale_text) is str and scale_text.isascii() and scale_text.isdigit():
                    scale = int(scale_text)

                    def decimal(v: Any, _h: ColumnHint | None) -> Any:
                        if type(v) is str:
                            return _unscaled(v, scale, w)
                        return _precise_decimal(v, fs, w)

                    return decimal, False
            unit = _EPOCH_UNITS.get(name)
            if unit is not None:
                return (lambda v, _h: _from_epoch(v, unit, w)), False
            if name == "io.debezium.time.ZonedTimestamp":
                return (lambda v, _h: _iso_timestamp(v, w)), False
            return (lambda v, _h: semantic(v, fs, w)), False
    plain = _PLAIN_TYPES.get(fs.get("type"))  # type: ignore[arg-type]
    if plain is None:
        return (lambda v, h: _typed(v, fs, h, w)), name is None
    if name is not None:   # a named plain type (Json, Enum, ...): the hint is never read
        def named(v: Any, _h: ColumnHint | None) -> Any:
            return v if type(v) in plain else _typed(v, fs, None, w)

        return named, False

    def unnamed(v: Any, h: ColumnHint | None) -> Any:
        t = type(v)
        if t in plain:   # never Decimal: _typed's type check passes, and only the hint is left
            if h is None or h.kind == "raw":
                return v
            return _hinted(v, h, "double" if t is float else "string", w)
        return _typed(v, fs, h, w)

    return unnamed, True


# --- Values without a schema ---------------------------------------------------------------------

def _hinted(v: Any, hint: ColumnHint, mode: DecimalMode, where: str) -> Any:
    """Read a schemaless value as the kind its column hint names."""
    kind = hint.kind
    t = type(v)
    if kind == "raw":
        return float(v) if t is Decimal else v
    if kind == "decimal":
        if t is str:
            if mode == "precise":
                if hint.scale is None:
                    raise PoisonMessageError("no_scale", where, "precise decimal, no schema: set its scale")
                return _unscaled(v, hint.scale, where)
            return _finite(_decimal_text(v, where), where)
        if t is int or t is Decimal:
            return _finite(Decimal(v), where)
        if t is float:
            if mode == "double":
                return Decimal(repr(v))   # the shortest text that reads back as this double
            raise _NeedExactNumbers       # decimal.format=NUMERIC: re-read the message exactly
        if t is dict:
            return _variable_decimal(v, None, where)
        raise PoisonMessageError("bad_value", where, f"decimal column holds {_kind(v)}")
    if kind == "timestamp":
        if t is str:
            return _iso_timestamp(v, where)
        if t is int:
            if hint.unit is None:
                raise PoisonMessageError("no_unit", where, "integer timestamp without a schema: set its unit")
            return _from_epoch(v, hint.unit, where)
        raise PoisonMessageError("bad_value", where, f"timestamp column holds {_kind(v)}")
    if kind == "date":
        if t is int:
            return _epoch_date(v, where)
        if t is str:
            return _iso_date(v, where)
        raise PoisonMessageError("bad_value", where, f"date column holds {_kind(v)}")
    if kind == "time":
        if t is str:
            return _iso_time(v, where)
        if t is int:
            if hint.unit is None:
                raise PoisonMessageError("no_unit", where, "integer time without a schema: set its unit")
            return _time_of_day(v, hint.unit, where)
        raise PoisonMessageError("bad_value", where, f"time column holds {_kind(v)}")
    if kind == "blob":
        if t is str:
            return _b64(v, where)
        raise PoisonMessageError("bad_value", where, f"binary column holds {_kind(v)}")
    raise PoisonMessageError("undecodable", where, f"unknown column kind {kind!r}")


# --- Small helpers -------------------------------------------------------------------------------

def _int_or_none(v: Any, where: str, lo: int, hi: int) -> int | None:
    if v is None:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise PoisonMessageError("bad_envelope", where, f"not an integer in {lo}..{hi}: {str(v)[:30]}")
    return v


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", Decimal: "a number", type(None): "null"}.get(type(v), type(v).__name__)
