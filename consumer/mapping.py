"""Turn decoded changes (consumer.decode.Change) into Cassandra writes, as config/pipeline.yaml says.

A `TableMapper` is built from one `MappingConfig` and the Cassandra table's columns (a `CqlTable`: from
`parse_cql(infra/cassandra-init.cql)`, from the live cluster with `cql_table_from_metadata`, or by hand
in tests). `build_mappings(config, cql_tables)` builds every mapper, checks them all against the
Cassandra tables (and, when given, the PostgreSQL tables) and raises one ConfigError naming the YAML
path of every problem. `Mappings.decode_hints` is what `consumer.decode.decode` needs for messages
without schemas.

A `Write` is what the sink executes:
- `upsert`: INSERT INTO keyspace.table (key..., values...) VALUES (...) USING TIMESTAMP t [AND TTL n].
  Use INSERT (it writes a row marker), not UPDATE, so a row whose other columns are all null still
  exists. A column absent from `values` must be left unset (an unchanged TOASTed value keeps its old
  value); a column present with None is written as null.
- `delete`: DELETE FROM keyspace.table USING TIMESTAMP t WHERE <every key column> = ...
- `truncate`: TRUNCATE keyspace.table (only when consumer.truncate is apply; see the limits below).

Replay safety: write timestamps from the WAL
--------------------------------------------
Every write carries `USING TIMESTAMP t`, derived from where the change sits in PostgreSQL's WAL:

    t = consumer.timestamp_offset + source.lsn        a streamed change (op c, u, d, t)
    t = consumer.timestamp_offset + source.lsn - 1    a snapshot read (op r)

Cassandra keeps, cell by cell, the value with the highest timestamp, and a delete hides every cell whose
timestamp is not above its own. So applying a change twice, or an older change after a newer one,
changes nothing: replaying Kafka from any earlier offset (a consumer that crashed before committing its
offsets, a rewound consumer group, events Debezium sends again after a Connect restart) ends with the
same rows as applying every change once, in order.

Why the LSN orders the changes of a row correctly:
- `source.lsn` is the WAL position of the change's own record (pgoutput sends each change with its
  record's LSN), not its transaction's: two changes of one row in one transaction have distinct,
  increasing LSNs.
- Across transactions the LSNs of changes are not in commit order (a long transaction's early changes
  have lower LSNs than a shorter one that committed first), but for any one row they are: a second
  writer of the row waits on the first one's row lock (a re-insert of a deleted key, on the unique
  index) until the first commits, so its change lies after the first's commit record in the WAL. A
  Cassandra row is keyed by the PostgreSQL primary key (plus buckets computed from the row), so order
  per row is all that matters.
- Events that share an LSN (one multi-insert WAL record of COPY, or the delete + create pair Debezium
  emits when an update changes a primary key) are about different rows.
- A snapshot read carries the LSN L at which the snapshot was taken. The row is as of L: every change
  it contains committed before L, so its record starts below L - 1 (a record is longer than a byte),
  and every change streamed after the snapshot has an LSN of at least L. L - 1 sorts the read after
  everything in it and before everything after it, a change at exactly L included. A row read again by
  a later snapshot (snapshot.mode always or when_needed, an incremental snapshot, a re-created
  connector) gets that snapshot's larger LSN, newer than every change it reflects, so a re-read is as
  harmless as a replay, except for the race in the first limit below, which every snapshot shares.
- An update that moves a row to another Cassandra key (with REPLICA IDENTITY FULL, e.g. a changed
  trade_time moves a trade to another day) becomes a delete of the old key and an insert of the new
  one, both at t: two different rows.

Limits:
- A transaction in flight while the connector's snapshot starts, which changed a row before the
  snapshot's LSN and committed after it, is streamed (the snapshot did not see it) with a change LSN
  below the snapshot's: the snapshot's older version of that row wins. Any snapshot can be hit (the
  first start of the connector, and every later snapshot listed above), and only rows that existed
  before it; the row's next change repairs it, but a delete lost this way leaves the row in Cassandra
  until `make verify` finds it: run it after every snapshot.
  (Debezium's events carry each change's LSN, not its transaction's commit LSN, which would avoid this.)
- LSNs must keep growing for as long as the Cassandra data lives. They do across restarts, crashes,
  failover to a physical standby and pg_upgrade (it carries the WAL position over); they do not for a
  database re-created by initdb and restored from a dump, nor after pg_resetwal to an older WAL
  position: every new write would lose to the old data. Then either truncate the Cassandra tables and
  let Debezium snapshot again, or set consumer.timestamp_offset above every timestamp already written
  (the old cluster's last pg_current_wal_lsn(), or SELECT max(writetime(<column>)) per table).
- Tombstones are kept gc_grace_seconds (10 days by default). A replay of changes older than that may
  resurrect deleted rows: never rewind the consumer group further back than gc_grace_seconds.
- The timestamps are not times. Nothing else may write these tables (cqlsh's wall-clock timestamps,
  ~1.7e15, would win forever), TimeWindowCompactionStrategy must not be used, and Cassandra's
  minimum_timestamp guardrail must stay off. TTLs count from arrival and are unaffected, but a replay
  re-arms the TTL of the rows it writes.
- TRUNCATE cannot be ordered: Cassandra drops everything regardless of timestamps, so a replayed
  truncate loses the later changes until a new snapshot. Hence consumer.truncate defaults to ignore.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, Protocol

from consumer.decode import Change, ColumnHint, ColumnKind, DecimalMode, DecodeHints, TableHints, TimeUnit
from consumer.errors import ConsumerError, PoisonMessageError
from pipeline.config import MappingConfig, PipelineConfig
from pipeline.schema import ConfigError

__all__ = [
    "CqlTable",
    "Mappings",
    "PgTable",
    "TableMapper",
    "Write",
    "build_mappings",
    "cql_table_from_metadata",
    "parse_cql",
    "write_timestamp",
]

WriteKind = Literal["upsert", "delete", "truncate"]
BucketUnit = Literal["hour", "day", "month", "year"]
MAX_TIMESTAMP: Final = 2**63 - 1


class Write(NamedTuple):
    """One Cassandra statement: see the module docstring for how the sink executes each kind. Immutable;
    a NamedTuple rather than a frozen dataclass because one is made per change, in a third of the time."""

    keyspace: str
    table: str
    kind: WriteKind
    key: dict[str, Any]       # every primary key column (Cassandra names); {} for a truncate
    values: dict[str, Any]    # other columns to set; absent = leave unset, None = write null
    timestamp_us: int         # USING TIMESTAMP
    ttl: int = 0              # USING TTL, seconds; 0 = none


class CqlTableLike(Protocol):
    """What the mapper needs of a Cassandra table: CqlTable, or the sink's TableSchema."""

    @property
    def columns(self) -> Mapping[str, str]: ...
    @property
    def primary_key(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class CqlTable:
    """A Cassandra table as the mapper needs it: column types, and the primary key when known."""

    name: str
    columns: Mapping[str, str]                 # column -> CQL type, e.g. "decimal", "frozen<list<text>>"
    primary_key: tuple[str, ...] = ()          # partition key columns, then clustering columns
    partition_key: tuple[str, ...] = ()
    keyspace: str | None = None


@dataclass(frozen=True)
class PgTable:
    """A PostgreSQL table as `validate` needs it (from information_schema, or init-db.sql in tests)."""

    name: str
    columns: Mapping[str, str]                 # column -> type as written, e.g. "numeric(38, 18)"
    primary_key: tuple[str, ...]
    replica_identity: Literal["default", "full", "nothing", "index"] = "default"


def write_timestamp(change: Change, offset: int = 0) -> int:
    """USING TIMESTAMP for a change: its LSN (minus one for a snapshot read) plus `offset`."""
    lsn = change.lsn
    if lsn is None:
        raise PoisonMessageError("no_position", "value.payload.source.lsn", "no LSN: cannot order the change")
    ts = offset + lsn - (1 if change.op == "r" else 0)
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise PoisonMessageError("no_position", "value.payload.source.lsn", f"timestamp {ts} out of range")
    return ts


# --- Column conversions --------------------------------------------------------------------------

_Coerce = Callable[[Any, str], Any]


def _bad(v: Any, col: str, want: str) -> PoisonMessageError:
    return PoisonMessageError("bad_value", col, f"{type(v).__name__} {str(v)[:40]!r} does not fit {want}")


def _int_range(bits: int | None, want: str) -> _Coerce:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if bits else (None, None)

    def coerce(v: Any, col: str) -> Any:
        if type(v) is not int or (lo is not None and hi is not None and not lo <= v <= hi):
            raise _bad(v, col, want)
        return v

    return coerce


def _text(v: Any, col: str) -> Any:
    if type(v) is not str:
        raise _bad(v, col, "text")
    return v


def _boolean(v: Any, col: str) -> Any:
    if type(v) is not bool:
        raise _bad(v, col, "boolean")
    return v


def _decimal(v: Any, col: str) -> Any:
    if type(v) is Decimal and v.is_finite():
        return v
    if type(v) is int:
        return Decimal(v)
    raise _bad(v, col, "decimal")


def _floating(v: Any, col: str) -> Any:
    if type(v) in (float, int, Decimal):
        return float(v)
    raise _bad(v, col, "double")


def _timestamp(v: Any, col: str) -> Any:
    # Cassandra keeps milliseconds: truncate here, so that what we write is exactly what it stores.
    if type(v) is not datetime or v.tzinfo is None:
        raise _bad(v, col, "timestamp")
    extra = v.microsecond % 1000
    return v.replace(microsecond=v.microsecond - extra) if extra else v


def _date(v: Any, col: str) -> Any:
    if type(v) is not date:
        raise _bad(v, col, "date")
    return v


def _time(v: Any, col: str) -> Any:
    if type(v) is not time:
        raise _bad(v, col, "time")
    if v.tzinfo is not None:
        offset = v.utcoffset()
        if offset:
            raise _bad(v, col, "time (a time of day without a UTC offset)")
        v = v.replace(tzinfo=None)
    return v


def _blob(v: Any, col: str) -> Any:
    if type(v) is not bytes:
        raise _bad(v, col, "blob")
    return v


def _uuid(v: Any, col: str) -> Any:
    if type(v) is uuid.UUID:
        return v
    try:
        return uuid.UUID(v)
    except (TypeError, ValueError, AttributeError):
        raise _bad(v, col, "uuid") from None


def _as_is(v: Any, col: str) -> Any:
    return v


_COERCE: Final[dict[str, _Coerce]] = {
    "text": _text, "varchar": _text, "ascii": _text, "inet": _text,
    "bigint": _int_range(64, "bigint"), "counter": _int_range(64, "counter"),
    "int": _int_range(32, "int"), "smallint": _int_range(16, "smallint"),
    "tinyint": _int_range(8, "tinyint"), "varint": _int_range(None, "varint"),
    "boolean": _boolean, "decimal": _decimal, "double": _floating, "float": _floating,
    "timestamp": _timestamp, "date": _date, "time": _time, "blob": _blob,
    "uuid": _uuid, "timeuuid": _uuid,
}
_HINT_KIND: Final[dict[str, ColumnKind]] = {
    "decimal": "decimal", "timestamp": "timestamp", "date": "date", "time": "time", "blob": "blob",
}

# PostgreSQL type (normalised) -> Cassandra types its values fit.
_PG_FITS: Final[dict[str, frozenset[str]]] = {
    "numeric": frozenset({"decimal"}),
    "text": frozenset({"text", "varchar", "ascii"}),
    "smallint": frozenset({"smallint", "int", "bigint", "varint"}),
    "integer": frozenset({"int", "bigint", "varint"}),
    "bigint": frozenset({"bigint", "varint"}),
    "boolean": frozenset({"boolean"}),
    "real": frozenset({"float", "double"}),
    "double precision": frozenset({"double"}),
    "timestamptz": frozenset({"timestamp"}),
    "timestamp": frozenset({"timestamp"}),
    "date": frozenset({"date"}),
    "time": frozenset({"time"}),
    "bytea": frozenset({"blob"}),
    "uuid": frozenset({"uuid", "text"}),
    "json": frozenset({"text"}),
}
_PG_ALIASES: Final = {
    "decimal": "numeric", "character varying": "text", "varchar": "text", "character": "text",
    "char": "text", "bpchar": "text", "int2": "smallint", "int": "integer", "int4": "integer",
    "int8": "bigint", "bool": "boolean", "float4": "real", "float8": "double precision",
    "timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp",
    "time without time zone": "time", "jsonb": "json", "serial": "integer", "bigserial": "bigint",
    "smallserial": "smallint",
}


def _pg_base(pg_type: str) -> tuple[str, tuple[int, ...]]:
    """('numeric', (38, 18)) from 'numeric(38, 18)'; ('timestamptz', (3,)) from 'timestamptz(3)'."""
    text = pg_type.strip().lower()
    m = re.search(r"\(([^)]*)\)", text)
    args = tuple(int(a) for a in re.findall(r"-?\d+", m.group(1))) if m else ()
    base = re.sub(r"\s+", " ", re.sub(r"\([^)]*\)", "", text)).strip()
    return _PG_ALIASES.get(base, base), args


# --- The mapper ----------------------------------------------------------------------------------

class TableMapper:
    """Maps the changes of one PostgreSQL table onto one Cassandra table."""

    def __init__(
        self,
        mapping: MappingConfig,
        cql: CqlTableLike | Mapping[str, str],
        *,
        keyspace: str = "binance",
        topic: str | None = None,
        index: int = 0,
        timestamp_offset: int = 0,
    ) -> None:
        self.mapping = mapping
        self.cql: CqlTableLike = CqlTable(mapping.target, dict(cql)) if isinstance(cql, Mapping) else cql
        self.keyspace = keyspace
        self.topic = mapping.topic or topic or f"binance.public.{mapping.table}"
        self.path = f"mappings[{index}]"
        self.timestamp_offset = timestamp_offset
        self.target = mapping.target
        self.ttl = mapping.ttl_seconds
        columns = self.cql.columns
        self._ignored = frozenset(mapping.ignore_columns)
        # source column -> (Cassandra column, conversion), for every column that is carried over
        self._to_cql: dict[str, tuple[str, _Coerce]] = {}
        renamed = dict(mapping.rename)
        bucket_columns = set(mapping.day_buckets)
        for cql_col, cql_type in columns.items():
            if cql_col in bucket_columns:
                continue
            sources = [s for s, t in renamed.items() if t == cql_col]
            source = sources[0] if sources else cql_col
            if not sources and cql_col in renamed:
                continue  # the same-named source column is renamed to something else
            self._to_cql[source] = (cql_col, _COERCE.get(_cql_base(cql_type), _as_is))
        self._from_cql = {c: s for s, (c, _) in self._to_cql.items()}
        self._buckets = tuple(
            (col, src, _COERCE.get(_cql_base(columns.get(col, "date")), _as_is))
            for col, src in mapping.day_buckets.items()
        )
        self._bucket_by_column = {col: (src, coerce) for col, src, coerce in self._buckets}
        self._bucket_sources = frozenset(src for _, src, _ in self._buckets) | (
            {mapping.bucket_unit_by} if mapping.bucket_unit_by else set()
        )
        self._key = tuple(mapping.key)
        # Per key column, looked up once (key_of runs for every change): (column, its source column or
        # bucket source, conversion or None, whether it is a bucket).
        plan: list[tuple[str, str, _Coerce | None, bool]] = []
        for col in self._key:
            if col in self._bucket_by_column:
                src, coerce = self._bucket_by_column[col]
                plan.append((col, src, coerce, True))
            else:
                source = self._from_cql.get(col, col)
                plan.append((col, source, self._to_cql[source][1] if source in self._to_cql else None, False))
        self._key_plan = tuple(plan)

    # -- the per-message work --

    def map(self, change: Change) -> tuple[Write, ...]:
        """The writes for one change: usually one; a delete and an upsert when a row changes its key."""
        ts = write_timestamp(change, self.timestamp_offset)
        op = change.op
        if op == "t":
            return (Write(self.keyspace, self.target, "truncate", {}, {}, ts, 0),)
        if op == "d":
            assert change.before is not None
            row = {**change.before, **change.key}
            return (Write(self.keyspace, self.target, "delete", self.key_of(row, "before"), {}, ts, 0),)
        after = change.after
        assert after is not None
        key = self.key_of(after, "after")
        values: dict[str, Any] = {}
        to_cql, ignored, key_columns = self._to_cql, self._ignored, self._key
        for col, v in after.items():
            target = to_cql.get(col)
            if target is None:
                if col in ignored or col in self._bucket_sources:
                    continue
                raise PoisonMessageError(
                    "unknown_column", col,
                    f"{change.table}.{col} has no column in Cassandra {self.keyspace}.{self.target}: add it "
                    f"there or to {self.path}.ignore_columns",
                )
            cql_col, coerce = target
            if cql_col in key_columns:
                continue
            values[cql_col] = None if v is None else coerce(v, cql_col)
        upsert = Write(self.keyspace, self.target, "upsert", key, values, ts, self.ttl)
        if op == "u" and change.before is not None:
            try:
                old_key = self.key_of(change.before, "before")
            except PoisonMessageError:
                old_key = key   # a before image without the key's columns: the key did not change
            if old_key != key:
                return (Write(self.keyspace, self.target, "delete", old_key, {}, ts, 0), upsert)
        return (upsert,)

    def key_of(self, row: Mapping[str, Any], where: str = "row") -> dict[str, Any]:
        """The Cassandra primary key of a decoded (PostgreSQL-named) row; PoisonMessageError if none."""
        key: dict[str, Any] = {}
        for col, source, coerce, bucket in self._key_plan:
            if bucket:
                assert coerce is not None
                key[col] = coerce(self._bucket(row, source, where), col)
                continue
            v = row.get(source)
            if v is None:
                raise PoisonMessageError(
                    "missing_value", f"{where}.{source}", f"no value for Cassandra key column {col}"
                )
            key[col] = v if coerce is None else coerce(v, col)
        return key

    def _bucket(self, row: Mapping[str, Any], source: str, where: str) -> date | datetime:
        ts = row.get(source)
        if type(ts) is date:
            ts = datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
        if type(ts) is not datetime:
            raise PoisonMessageError(
                "missing_value", f"{where}.{source}", f"bucket needs a timestamp, got {type(ts).__name__}"
            )
        m = self.mapping
        unit: BucketUnit = m.bucket_unit
        if m.bucket_unit_by is not None:
            unit = m.bucket_units.get(str(row.get(m.bucket_unit_by)), unit)
        ts = ts.astimezone(UTC)
        if unit == "hour":
            return ts.replace(minute=0, second=0, microsecond=0)
        if unit == "day":
            return ts.date()
        if unit == "month":
            return date(ts.year, ts.month, 1)
        return date(ts.year, 1, 1)

    # -- set-up --

    def _cql_name(self, source: str) -> str:
        return self._to_cql[source][0] if source in self._to_cql else source

    def source_key(self, pg: PgTable | None = None) -> tuple[str, ...]:
        """The PostgreSQL primary key: PostgreSQL's own, else the key's non-bucket columns by source name."""
        if pg is not None:
            return pg.primary_key
        return tuple(self._from_cql.get(c, c) for c in self._key if c not in self.mapping.day_buckets)

    def hints(self, pg: PgTable | None = None) -> TableHints:
        """How schemaless messages of this table are read (see consumer.decode.ColumnHint)."""
        columns: dict[str, ColumnHint] = {}
        for source, (cql_col, _) in self._to_cql.items():
            kind = _HINT_KIND.get(_cql_base(self.cql.columns[cql_col]), "raw")
            if kind != "raw":
                columns[source] = self._hint(source, kind)
        for _, source, _ in self._buckets:
            columns.setdefault(source, self._hint(source, "timestamp"))
        return TableHints(columns=columns, key=self.source_key(pg), key_is_primary=pg is not None)

    def _hint(self, source: str, kind: ColumnKind) -> ColumnHint:
        m = self.mapping
        scale = m.decimal_scales.get(source, m.decimal_scale) if kind == "decimal" else None
        unit: TimeUnit | None = m.timestamp_units.get(source) if kind in ("timestamp", "time") else None
        return ColumnHint(kind=kind, scale=scale, unit=unit)

    def validate(
        self,
        pg: PgTable | None = None,
        *,
        schemas_enable: bool = True,
        decimal_mode: DecimalMode = "precise",
        captured_tables: Iterable[str] | None = None,
    ) -> list[str]:
        """Every problem of this mapping, each naming its YAML path; [] when it is sound."""
        m, p, cols = self.mapping, self.path, self.cql.columns
        problems: list[str] = []
        where = f"Cassandra {self.keyspace}.{self.target}"
        if captured_tables is not None and m.table not in set(captured_tables):
            problems.append(f"{p}.table: {m.table} is not captured (not in debezium.tables)")
        if not cols:
            return [*problems, f"{p}.target: no table {self.keyspace}.{self.target} in Cassandra"]

        # Names that must exist.
        for src, dst in m.rename.items():
            if dst not in cols:
                problems.append(f"{p}.rename.{src}: {where} has no column {dst}")
            if pg is not None and src not in pg.columns:
                problems.append(f"{p}.rename.{src}: PostgreSQL table {m.table} has no column {src}")
        for col, src in m.day_buckets.items():
            base = _cql_base(cols.get(col, ""))
            if col not in cols:
                problems.append(f"{p}.day_buckets.{col}: {where} has no column {col}")
            elif base not in ("date", "timestamp"):
                problems.append(f"{p}.day_buckets.{col}: a bucket is a date or timestamp column, not {base}")
            elif base == "date" and "hour" in (m.bucket_unit, *m.bucket_units.values()):
                problems.append(f"{p}.day_buckets.{col}: hour buckets need a timestamp column, not date")
            if pg is not None:
                if src not in pg.columns:
                    problems.append(f"{p}.day_buckets.{col}: PostgreSQL table {m.table} has no column {src}")
                elif _pg_base(pg.columns[src])[0] not in ("timestamptz", "timestamp", "date"):
                    problems.append(f"{p}.day_buckets.{col}: {src} is {pg.columns[src]}, not a timestamp")
        if m.bucket_unit_by is not None and pg is not None and m.bucket_unit_by not in pg.columns:
            problems.append(f"{p}.bucket_unit_by: {m.table} has no column {m.bucket_unit_by}")
        if m.bucket_units and m.bucket_unit_by is None:
            problems.append(f"{p}.bucket_units: needs bucket_unit_by, the column whose value picks the unit")
        for section, names in (("ignore_columns", m.ignore_columns), ("decimal_scales", m.decimal_scales),
                               ("timestamp_units", m.timestamp_units)):
            for name in names:
                if pg is not None and name not in pg.columns:
                    problems.append(f"{p}.{section}.{name}: PostgreSQL table {m.table} has no column {name}")

        # The key.
        for i, col in enumerate(m.key):
            if col not in cols:
                problems.append(f"{p}.key[{i}]: {where} has no column {col}")
        if len(set(m.key)) != len(m.key):
            problems.append(f"{p}.key: a column appears twice")
        if self.cql.primary_key and tuple(m.key) != self.cql.primary_key:
            problems.append(
                f"{p}.key: [{', '.join(m.key)}], but the primary key of {where} is "
                f"({', '.join(self.cql.primary_key)})"
            )
        if pg is not None:
            if m.replica_identity != pg.replica_identity:
                problems.append(
                    f"{p}.replica_identity: {m.replica_identity} but PostgreSQL table {m.table} has "
                    f"REPLICA IDENTITY {pg.replica_identity.upper()}"
                )
            missing = [c for c in pg.primary_key if self._cql_name(c) not in m.key]
            if missing:
                problems.append(
                    f"{p}.key: lacks PostgreSQL primary key column(s) {', '.join(missing)}: distinct rows "
                    f"would share one Cassandra row"
                )
            for i, col in enumerate(m.key):
                source = self._from_cql.get(col, col)
                if col in cols and col not in m.day_buckets and source not in pg.columns:
                    problems.append(f"{p}.key[{i}]: PostgreSQL table {m.table} has no column {source}")
        # What a delete carries: the whole old row under FULL, else only the primary key.
        if m.replica_identity != "full":
            in_delete = set(pg.primary_key) if pg is not None else set(self.source_key())
            for i, col in enumerate(m.key):
                if col in m.day_buckets:
                    needed = [m.day_buckets[col]] + ([m.bucket_unit_by] if m.bucket_unit_by else [])
                    what = f"{col} (bucket of {m.day_buckets[col]})"
                else:
                    needed = [self._from_cql.get(col, col)]
                    what = col
                lacking = [n for n in needed if n not in in_delete]
                if lacking:
                    problems.append(
                        f"{p}.key[{i}]: a delete under REPLICA IDENTITY DEFAULT carries only the primary "
                        f"key, so it cannot supply {what}: use replica_identity: full (and ALTER TABLE "
                        f"{m.table} REPLICA IDENTITY FULL), or a key derived from primary key columns"
                    )

        # Types, column by column.
        if pg is not None:
            for src, pg_type in pg.columns.items():
                base, args = _pg_base(pg_type)
                if src not in self._to_cql:
                    if src not in m.ignore_columns and src not in self._bucket_sources:
                        problems.append(
                            f"{p}.ignore_columns: PostgreSQL column {m.table}.{src} has none in {where}: "
                            f"add one, or list {src} in ignore_columns"
                        )
                    continue
                cql_col = self._to_cql[src][0]
                cql_type = _cql_base(cols[cql_col])
                fits = _PG_FITS.get(base)
                if base == "numeric" and len(args) == 2 and args[1] == 0:
                    fits = frozenset({"decimal", "varint", "bigint"})
                if fits is not None and cql_type not in fits:
                    problems.append(
                        f"{p}.target: column {src} is PostgreSQL {pg_type}, which does not fit Cassandra "
                        f"{cols[cql_col]} ({self.target}.{cql_col})"
                    )
                if base == "numeric" and cql_type == "decimal":
                    scale = m.decimal_scales.get(src, m.decimal_scale)
                    pg_scale = args[1] if len(args) == 2 else 0 if len(args) == 1 else None
                    if scale is not None and pg_scale is not None and scale != pg_scale:
                        section = "decimal_scales." + src if src in m.decimal_scales else "decimal_scale"
                        problems.append(f"{p}.{section}: {scale}, but {m.table}.{src} is {pg_type}")
                if (not schemas_enable and base in ("timestamp", "time") and cql_type in ("timestamp", "time")
                        and src not in m.timestamp_units):
                    problems.append(
                        f"{p}.timestamp_units.{src}: {m.table}.{src} is {pg_type}, sent as an integer when "
                        f"messages carry no schema: set its unit (ms for precision 0-3, us for 4-6)"
                    )
        # Scales Debezium does not send without schemas.
        if not schemas_enable and decimal_mode == "precise":
            lacking = []
            for src, (cql_col, _) in self._to_cql.items():
                scale = m.decimal_scales.get(src, m.decimal_scale)
                if _cql_base(cols[cql_col]) != "decimal" or scale is not None:
                    continue
                if pg is not None and src in pg.columns and len(_pg_base(pg.columns[src])[1]) == 0:
                    continue  # numeric without a declared scale arrives as {scale, value}
                lacking.append(src)
            if lacking:
                problems.append(
                    f"{p}.decimal_scale: messages carry no schema (debezium.schemas_enable false) and "
                    f"decimals are precise, so the scale of {', '.join(lacking)} must be configured"
                )
        return problems


def _cql_base(cql_type: str) -> str:
    return cql_type.strip().lower()


# --- All mappings --------------------------------------------------------------------------------

class Mappings:
    """Every table mapper, found by topic or by source table, and the hints `decode` needs."""

    def __init__(self, mappers: Sequence[TableMapper], decode_hints: DecodeHints | None = None) -> None:
        self.mappers = tuple(mappers)
        self.decode_hints = decode_hints or DecodeHints(tables={m.mapping.table: m.hints() for m in mappers})
        self.topics = tuple(m.topic for m in self.mappers)
        self._by_topic = {m.topic: m for m in self.mappers}
        self._by_table = {m.mapping.table: m for m in self.mappers}

    def for_change(self, change: Change) -> TableMapper | None:
        """The mapper of a change's topic, else of its source table; None for an unmapped table.

        A change whose source.table is not the table its topic is mapped from is poison: writing it to
        the topic's Cassandra table would put one table's rows into another's."""
        mapper = self._by_topic.get(change.topic)
        if mapper is None:
            return self._by_table.get(change.table)
        if change.table != mapper.mapping.table:
            raise PoisonMessageError(
                "wrong_table", "value.payload.source.table",
                f"a change of table {change.table[:100]!r} on {change.topic}, which carries "
                f"{mapper.mapping.table!r}",
            )
        return mapper

    def map(self, change: Change) -> tuple[Write, ...]:
        """The writes of a change; () for a table no mapping names."""
        mapper = self.for_change(change)
        return mapper.map(change) if mapper is not None else ()


def build_mappings(
    config: PipelineConfig,
    cql_tables: Mapping[str, CqlTableLike] | Callable[[str, str], CqlTableLike],
    *,
    pg_tables: Mapping[str, PgTable] | None = None,
    timestamp_offset: int = 0,
) -> Mappings:
    """Build and check every mapper; ConfigError lists every problem by its YAML path.

    `cql_tables`: the Cassandra tables by name (`parse_cql(...)`), or a function (keyspace, table) ->
    table that reads the live cluster (e.g. the sink's `table_schema`) and raises ConsumerError for a
    table that does not exist. `pg_tables`, when given, adds the checks against PostgreSQL itself.
    """
    dbz = config.debezium
    problems: list[str] = []
    mappers: list[TableMapper] = []
    if not config.mappings:
        problems.append("mappings: no table is mapped to Cassandra")
    if not 0 <= timestamp_offset <= 2**62:   # leaves 2**62 of WAL positions: ample
        problems.append(f"consumer.timestamp_offset: {timestamp_offset} out of range 0..{2**62}")
    hints: dict[str, TableHints] = {}
    for i, m in enumerate(config.mappings):
        cql = _lookup(cql_tables, config.cassandra.keyspace, m.target)
        mapper = TableMapper(
            m, cql, keyspace=config.cassandra.keyspace, index=i, timestamp_offset=timestamp_offset,
            topic=f"{dbz.topic_prefix}.{dbz.schema}.{m.table}",
        )
        pg = pg_tables.get(m.table) if pg_tables is not None else None
        if pg_tables is not None and pg is None:
            problems.append(f"mappings[{i}].table: no table {m.table} in PostgreSQL")
        problems += mapper.validate(
            pg, schemas_enable=dbz.schemas_enable, decimal_mode=dbz.decimal_handling_mode,
            captured_tables=dbz.tables,
        )
        mappers.append(mapper)
        hints[m.table] = mapper.hints(pg)
    topics = [mp.topic for mp in mappers]
    for t in sorted({t for t in topics if topics.count(t) > 1}):
        problems.append(f"mappings: topic {t} is mapped more than once")
    if problems:
        raise ConfigError(problems)
    return Mappings(tuple(mappers), DecodeHints(tables=hints, decimal_mode=dbz.decimal_handling_mode))


def _lookup(
    tables: Mapping[str, CqlTableLike] | Callable[[str, str], CqlTableLike], keyspace: str, name: str
) -> CqlTableLike:
    if isinstance(tables, Mapping):
        return tables.get(name) or CqlTable(name, {})
    try:
        return tables(keyspace, name)
    except ConsumerError:
        return CqlTable(name, {})   # validate reports the missing table


# --- Reading Cassandra schemas -------------------------------------------------------------------

def parse_cql(text: str) -> dict[str, CqlTable]:
    """The CREATE TABLE statements of a CQL file (e.g. infra/cassandra-init.cql), by table name."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"(--|//)[^\n]*", " ", text)
    tables: dict[str, CqlTable] = {}
    for statement in text.split(";"):
        m = re.match(
            r"\s*CREATE\s+(?:TABLE|COLUMNFAMILY)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:(\w+)\.)?(\w+)\s*\(",
            statement, flags=re.I,
        )
        if not m:
            continue
        body = _balanced(statement, m.end() - 1)
        columns: dict[str, str] = {}
        partition: tuple[str, ...] = ()
        clustering: tuple[str, ...] = ()
        for item in _split_top(body):
            pk = re.fullmatch(r"PRIMARY\s+KEY\s*\((.*)\)", item, flags=re.I | re.S)
            if pk:
                parts = _split_top(pk.group(1))
                first = parts[0].strip()
                partition = tuple(_split_top(first[1:-1])) if first.startswith("(") else (first,)
                clustering = tuple(parts[1:])
                continue
            col = re.fullmatch(r"(\w+)\s+(.+?)(\s+PRIMARY\s+KEY)?(\s+STATIC)?", item, flags=re.I | re.S)
            if col:
                columns[col.group(1)] = re.sub(r"\s+", "", col.group(2))
                if col.group(3):
                    partition = (col.group(1),)
        name = m.group(2)
        tables[name] = CqlTable(name, columns, partition + clustering, partition, m.group(1))
    return tables


def _balanced(text: str, open_at: int) -> str:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "(<":
            depth += 1
        elif text[i] in ")>":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    return text[open_at + 1:]


def _split_top(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [s for s in items if s]


def cql_table_from_metadata(table: Any) -> CqlTable:
    """A CqlTable from the driver's cluster.metadata.keyspaces[ks].tables[name] (a TableMetadata)."""
    columns = {name: str(col.cql_type) for name, col in table.columns.items()}
    partition = tuple(c.name for c in table.partition_key)
    clustering = tuple(c.name for c in table.clustering_key)
    return CqlTable(str(table.name), columns, partition + clustering, partition, str(table.keyspace_name))

