"""Rows from `producer.transform` -> PostgreSQL, batched, one transaction per call.

Every load goes the same way, in one transaction: the rows are COPYed into a per-session temporary
staging table, then
* latest_prices, klines, ticker_24hr (upserted): an UPDATE rewrites the existing rows whose columns are
  DISTINCT FROM the staged ones -- an identical row is left alone, so loading the same data again
  writes nothing and Debezium sees no event;
* every table: an INSERT ... SELECT adds the staged rows whose key is new (trades and order book levels
  are immutable: a known key is skipped);
* order_book_levels: snapshots older than the retention cut-off are deleted.
The counts come from the statements' row counts.

The INSERT is a plain one (INSERT ... ON CONFLICT costs twice as much per row on this workload); should
another session insert one of the same keys meanwhile, it fails with unique_violation, and the step is
redone, after a ROLLBACK TO SAVEPOINT, as `INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT
FROM` (or DO NOTHING), counting inserts and updates by `xmax = 0`.

psycopg2 errors surface as `DatabaseError`. A connection found lost is replaced, and the load (which is
idempotent) is tried once more on the new one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import operator
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import psycopg2
import psycopg2.errors

from pipeline.config import PostgresConfig
from producer.errors import DatabaseError
from producer.transform import EPOCH, Kline, LatestPrice, OrderBookLevel, Ticker24hr, Trade

__all__ = ["TABLES", "LoadResult", "PostgresLoader", "PreparedLoad", "TableSpec", "copy_text", "prepare_load"]

log = logging.getLogger(__name__)

# psycopg2 ships no type information: its connection and cursor are Any to mypy.
Connection: TypeAlias = Any
Cursor: TypeAlias = Any
T = TypeVar("T")


@dataclass(frozen=True)
class LoadResult:
    """What one load did to its table."""

    table: str
    rows: int = 0  # rows handed in (after dropping duplicate keys)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class TableSpec:
    """How rows of one table are written."""

    name: str
    columns: tuple[str, ...]
    types: tuple[type, ...]  # the Python type of each column's values
    nullable: tuple[bool, ...]
    key: tuple[str, ...]
    # Columns an upsert overwrites; empty means the rows are immutable (DO NOTHING).
    update: tuple[str, ...] = ()
    # Columns compared to decide whether an upsert changes a row; default: `update`.
    compare: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        return f"producer_stage_{self.name}"

    @functools.cached_property
    def time_run(self) -> tuple[int, int] | None:
        """(first, end) if the datetime columns are one contiguous run, which the fast COPY path needs."""
        times = [i for i, t in enumerate(self.types) if t is datetime]
        if times and times == list(range(times[0], times[-1] + 1)):
            return times[0], times[-1] + 1
        return None

    @functools.cached_property
    def sequence(self) -> tuple[tuple[str, ...], str] | None:
        """(group, column): the key's leading text columns and the one after them (open time, trade id,
        lastUpdateId). When every staged group starts above the largest value stored for the group, no
        staged key can exist yet: a batch may then be appended without looking anything up."""
        group = tuple(itertools.takewhile(lambda c: self.types[self.columns.index(c)] is str, self.key))
        if len(group) < len(self.key):
            return group, self.key[len(group)]
        return None

    @functools.cached_property
    def text_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.types) if t is str)

    @functools.cached_property
    def line(self) -> str:
        return "\t".join(["%s"] * len(self.columns)) + "\n"


def _spec(name: str, row_type: Any, key: tuple[str, ...], update: Iterable[str] = (),
          compare: Iterable[str] = ()) -> TableSpec:
    hints = typing.get_type_hints(row_type)
    types, nullable = [], []
    for column in row_type._fields:
        hint = hints[column]
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        types.append(options[0] if options else hint)
        nullable.append(type(None) in typing.get_args(hint))
    update = tuple(update)
    return TableSpec(name, tuple(row_type._fields), tuple(types), tuple(nullable), key, update,
                     tuple(compare) or update)


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        # updated_at is when the producer saw the price, not market data: a new one alone is no change.
        _spec("latest_prices", LatestPrice, ("symbol",), update=("price", "updated_at"), compare=("price",)),
        _spec("order_book_levels", OrderBookLevel, ("symbol", "last_update_id", "side", "level")),
        _spec("trades", Trade, ("symbol", "trade_id")),
        _spec("klines", Kline, ("symbol", "interval", "open_time"), update=Kline._fields[3:]),
        _spec("ticker_24hr", Ticker24hr, ("symbol",), update=Ticker24hr._fields[1:]),
    )
}

def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Times travel as microseconds since the epoch (formatting a datetime for COPY costs more than the rest
# of a kline row together); PostgreSQL turns them back into timestamptz. Splitting off the seconds keeps
# the interval arithmetic, done in float8, exact over the whole timestamptz range.
_STAGE_TYPES = {str: "text", Decimal: "numeric", int: "bigint", bool: "boolean", datetime: "bigint"}


def _from_stage(spec: TableSpec, column: str) -> str:
    name = _ident(column)
    if spec.types[spec.columns.index(column)] is datetime:
        return (f"timestamptz 'epoch' + ({name} / 1000000) * interval '1 second' "
                f"+ ({name} % 1000000) * interval '1 microsecond'")
    return name


def _stage_sql(spec: TableSpec) -> str:
    columns = ", ".join(
        f"{_ident(c)} {_STAGE_TYPES[t]}" for c, t in zip(spec.columns, spec.types, strict=True)
    )
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS {spec.stage} ({columns}) ON COMMIT DELETE ROWS"


def _staged_rows(spec: TableSpec) -> str:
    """The staging table as rows of the real table (times converted back)."""
    values = ", ".join(
        f"{_from_stage(spec, c)} AS {_ident(c)}" if _from_stage(spec, c) != _ident(c) else _ident(c)
        for c in spec.columns
    )
    return f"(SELECT {values} FROM pg_temp.{spec.stage}) AS s"


def _same_key(spec: TableSpec) -> str:
    return " AND ".join(f"t.{_ident(k)} = s.{_ident(k)}" for k in spec.key)


def _update_sql(spec: TableSpec) -> str:
    """Existing rows that differ from their staged version: rewritten; identical ones are left alone."""
    assignments = ", ".join(f"{_ident(c)} = s.{_ident(c)}" for c in spec.update)
    old = ", ".join(f"t.{_ident(c)}" for c in spec.compare)
    new = ", ".join(f"s.{_ident(c)}" for c in spec.compare)
    return (
        f"UPDATE public.{_ident(spec.name)} AS t SET {assignments} FROM {_staged_rows(spec)} "
        f"WHERE {_same_key(spec)} AND ROW({old}) IS DISTINCT FROM ROW({new})"
    )


def _appends_only_sql(spec: TableSpec) -> str | None:
    """True when, in every group, the smallest staged sequence value is above the largest stored one:
    then no staged key can exist yet, and a plain INSERT needs no lookup at all (a backfill's case)."""
    if spec.sequence is None:
        return None
    group, column = spec.sequence
    table = f"public.{_ident(spec.name)}"
    cols = ", ".join(_ident(c) for c in group)
    same = " AND ".join(f"t.{_ident(c)} = g.{_ident(c)}" for c in group)
    seq = _ident(column)
    return (
        f"SELECT coalesce(bool_and((g.first > (SELECT max(t.{seq}) FROM {table} AS t WHERE {same})) "
        f"IS NOT FALSE), true) FROM (SELECT {cols}, min({seq}) AS first FROM {_staged_rows(spec)} "
        f"GROUP BY {cols}) AS g"
    )


def _insert_all_sql(spec: TableSpec) -> str:
    """Every staged row, no questions asked (after `_appends_only_sql` said yes); after a SAVEPOINT."""
    cols = ", ".join(_ident(c) for c in spec.columns)
    return (
        f"SAVEPOINT producer_insert; INSERT INTO public.{_ident(spec.name)} ({cols}) "
        f"SELECT {cols} FROM {_staged_rows(spec)}"
    )


def _insert_new_sql(spec: TableSpec) -> str:
    """Staged rows whose key is not in the table yet: a plain insert (ON CONFLICT costs twice as much).

    Run after a SAVEPOINT: a row another session inserted meanwhile raises unique_violation, and the
    load then redoes this step with `_upsert_sql`.
    """
    cols = ", ".join(_ident(c) for c in spec.columns)
    table = f"public.{_ident(spec.name)}"
    return (
        f"SAVEPOINT producer_insert; INSERT INTO {table} ({cols}) SELECT {cols} FROM {_staged_rows(spec)} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {_same_key(spec)})"
    )


def _upsert_sql(spec: TableSpec) -> str:
    """The race-proof fallback of `_insert_new_sql`: INSERT ... ON CONFLICT, counting what it did."""
    cols = ", ".join(_ident(c) for c in spec.columns)
    key = ", ".join(_ident(c) for c in spec.key)
    select = f"INSERT INTO public.{_ident(spec.name)} AS t ({cols}) SELECT {cols} FROM {_staged_rows(spec)}"
    if not spec.update:
        return (
            f"WITH written AS ({select} ON CONFLICT ({key}) DO NOTHING RETURNING 1) "
            "SELECT count(*), 0 FROM written"
        )
    assignments = ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in spec.update)
    old = ", ".join(f"t.{_ident(c)}" for c in spec.compare)
    new = ", ".join(f"EXCLUDED.{_ident(c)}" for c in spec.compare)
    return (
        f"WITH written AS ({select} ON CONFLICT ({key}) DO UPDATE SET {assignments} "
        f"WHERE ROW({old}) IS DISTINCT FROM ROW({new}) "
        # A freshly inserted row has no xmax; an updated one carries the updating transaction's.
        "RETURNING (t.xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
    )


_APPENDS_ONLY_SQL = {name: sql for name, spec in TABLES.items() if (sql := _appends_only_sql(spec))}
_INSERT_ALL_SQL = {name: _insert_all_sql(spec) for name in _APPENDS_ONLY_SQL if (spec := TABLES[name])}
_UPDATE_SQL = {name: _update_sql(spec) for name, spec in TABLES.items() if spec.update}
_INSERT_NEW_SQL = {name: _insert_new_sql(spec) for name, spec in TABLES.items()}
_UPSERT_SQL = {name: _upsert_sql(spec) for name, spec in TABLES.items()}
_COPY_SQL = {
    name: f"COPY pg_temp.{spec.stage} ({', '.join(_ident(c) for c in spec.columns)}) FROM STDIN"
    for name, spec in TABLES.items()
}
_STAGE_SQL = {name: _stage_sql(spec) for name, spec in TABLES.items()}


# --- COPY text format ------------------------------------------------------------------------------

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ONE_US = timedelta(microseconds=1)


def copy_text(spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> str:
    """Rows as COPY text for the staging table of `spec`.

    str() of Decimal, int and bool is valid COPY input, datetimes go as microseconds since the epoch,
    None as \\N, and text is escaped where it holds a character COPY treats specially. The fast path
    formats a row with one `%` in C; rows with a None or text needing escapes take the careful one.
    """
    if not rows:
        return ""
    run = spec.time_run
    careful = run is None or any(spec.nullable) or not all(
        map(_copy_safe, {row[i] for i in spec.text_indexes for row in rows})
    )
    if careful:
        return "".join([_copy_line(spec, row) for row in rows])
    assert run is not None
    a, b = run
    line, epoch, us = spec.line, EPOCH, _ONE_US
    if b - a == 1:  # latest_prices, order_book_levels, trades
        return "".join([line % (*r[:a], (r[a] - epoch) // us, *r[b:]) for r in rows])
    if b - a == 2:  # klines, ticker_24hr
        return "".join([line % (*r[:a], (r[a] - epoch) // us, (r[a + 1] - epoch) // us, *r[b:])
                        for r in rows])
    return "".join([line % (*r[:a], *[(t - epoch) // us for t in r[a:b]], *r[b:]) for r in rows])


def _copy_line(spec: TableSpec, row: tuple[Any, ...]) -> str:
    return "\t".join([_copy_value(v) for v in row]) + "\n"


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, datetime):
        return str((value - EPOCH) // _ONE_US)
    return str(value)


def _copy_safe(value: Any) -> bool:
    return isinstance(value, str) and not ("\\" in value or "\t" in value or "\n" in value or "\r" in value)


@dataclass(frozen=True)
class PreparedLoad:
    """A load made ready without the database (rows deduplicated, COPY data built): thread-safe."""

    table: str
    rows: int
    data: bytes
    delete_before: datetime | None = None


def prepare_load(table: str, rows: Sequence[tuple[Any, ...]], *,
                 delete_before: datetime | None = None) -> PreparedLoad:
    """The CPU half of a load: upserted tables keep the last row per key; the COPY text is built."""
    spec = TABLES[table]
    if delete_before is not None and "snapshot_time" not in spec.columns:
        raise ValueError(f"{table} has no snapshot_time: retention applies to order_book_levels only")
    rows = _one_per_key(spec, rows)
    return PreparedLoad(table, len(rows), copy_text(spec, rows).encode(), delete_before)


# --- The loader ------------------------------------------------------------------------------------

# Every statement of this session looks rows up by key, a few to a few thousand per batch: nested loops
# over the primary key are always right, whatever the tables' statistics say (stale ones right after a
# bulk load could otherwise pick a sequential scan of a table of millions for each batch). No JIT: it
# costs up to a second per statement here and saves nothing (a disabled plan's cost would invite it).
_SESSION_OPTIONS = (
    "-c TimeZone=UTC -c jit=off -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"
)

class PostgresLoader:
    """One PostgreSQL session for the producer's writes; not thread-safe."""

    def __init__(self, config: PostgresConfig, *, application_name: str = "binance-producer",
                 connect: Callable[..., Connection] | None = None) -> None:
        self.config = config
        self.application_name = application_name
        self._connect = connect or psycopg2.connect
        self._conn: Connection | None = None
        self._staged: set[str] = set()  # staging tables that exist in this session

    # -- connection --

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def where(self) -> str:
        c = self.config
        return f"postgresql://{c.user}@{c.host}:{c.port}/{c.dbname}"

    def connection(self) -> Connection:
        """The open connection, made anew if there is none or it was lost."""
        if self._conn is not None and self._conn.closed:
            self._discard()
        if self._conn is None:
            c = self.config
            try:
                self._conn = self._connect(
                    host=c.host, port=c.port, dbname=c.dbname, user=c.user, password=c.password.reveal(),
                    connect_timeout=c.connect_timeout_seconds, sslmode=c.sslmode,
                    application_name=self.application_name, options=_SESSION_OPTIONS,
                    keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                )
            except psycopg2.Error as exc:
                raise DatabaseError(f"cannot connect to {self.where}: {_message(exc)}") from exc
            self._staged = set()
        return self._conn

    def close(self) -> None:
        self._discard()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._staged = set()
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def transaction(self, work: Callable[[Cursor], T], *, what: str) -> T:
        """Run `work(cursor)` in one transaction and commit it.

        On a lost connection, reconnect and run `work` once more (every load is idempotent).
        """
        for attempt in (1, 2):
            conn = self.connection()
            staged_before = set(self._staged)
            try:
                with conn.cursor() as cur:
                    result = work(cur)
                conn.commit()
                return result
            except psycopg2.Error as exc:
                self._staged = staged_before  # a rolled-back CREATE TEMPORARY TABLE never happened
                if conn.closed:
                    self._discard()
                    if attempt == 1:
                        log.warning("PostgreSQL connection lost during %s (%s); reconnecting",
                                    what, _message(exc))
                        continue
                    raise DatabaseError(f"{what}: connection to {self.where} lost: {_message(exc)}") from exc
                try:
                    conn.rollback()
                except psycopg2.Error:
                    self._discard()
                raise DatabaseError(f"{what} on {self.where} failed: {_message(exc)}") from exc
            except BaseException:
                if not conn.closed:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        self._discard()
                self._staged = staged_before
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- loads --

    def load(self, table: str, rows: Sequence[tuple[Any, ...]], *,
             delete_before: datetime | None = None) -> LoadResult:
        """Write `rows` (row tuples of `table`) in one transaction; see the module docstring.

        With `delete_before` (order_book_levels only), snapshots taken before it are deleted too.
        """
        started = time.perf_counter()
        return self.write(prepare_load(table, rows, delete_before=delete_before), started=started)

    def write(self, prepared: PreparedLoad, *, started: float | None = None) -> LoadResult:
        """The database half of a load: one transaction."""
        started = time.perf_counter() if started is None else started
        table, spec = prepared.table, TABLES[prepared.table]

        def work(cur: Cursor) -> LoadResult:
            inserted = updated = deleted = 0
            if prepared.rows:
                self._stage(cur, spec)
                cur.copy_expert(_COPY_SQL[table], io.BytesIO(prepared.data), size=1 << 20)
                try:
                    if self._appends_only(cur, table):
                        cur.execute(_INSERT_ALL_SQL[table])
                    else:
                        if spec.update:
                            cur.execute(_UPDATE_SQL[table])
                            updated = cur.rowcount
                        cur.execute(_INSERT_NEW_SQL[table])
                    inserted = cur.rowcount
                except psycopg2.errors.UniqueViolation:
                    # Another session inserted one of these keys since our snapshot: redo race-proof.
                    cur.execute("ROLLBACK TO SAVEPOINT producer_insert")
                    log.info("%s: a concurrent insert of the same keys; loading with ON CONFLICT", table)
                    cur.execute(_UPSERT_SQL[table])
                    counts = cur.fetchone()
                    assert counts is not None
                    inserted, more_updated = int(counts[0]), int(counts[1])
                    updated += more_updated
            if prepared.delete_before is not None:
                cur.execute(f"DELETE FROM public.{_ident(table)} WHERE snapshot_time < %s",
                            (prepared.delete_before,))
                deleted = cur.rowcount
            return LoadResult(table, prepared.rows, inserted, updated, deleted, time.perf_counter() - started)

        return self.transaction(work, what=f"load of {prepared.rows} {table} rows")

    @staticmethod
    def _appends_only(cur: Cursor, table: str) -> bool:
        sql = _APPENDS_ONLY_SQL.get(table)
        if sql is None:
            return False
        cur.execute(sql)
        row = cur.fetchone()
        return bool(row and row[0])

    def _stage(self, cur: Cursor, spec: TableSpec) -> None:
        if spec.name not in self._staged:
            cur.execute(_STAGE_SQL[spec.name])
            self._staged.add(spec.name)

    def load_latest_prices(self, rows: Sequence[LatestPrice]) -> LoadResult:
        return self.load("latest_prices", rows)

    def load_order_book(self, rows: Sequence[OrderBookLevel], *,
                        delete_before: datetime | None = None) -> LoadResult:
        """Insert new snapshots; with `delete_before`, delete snapshots taken before it."""
        return self.load("order_book_levels", rows, delete_before=delete_before)

    def load_trades(self, rows: Sequence[Trade]) -> LoadResult:
        return self.load("trades", rows)

    def load_klines(self, rows: Sequence[Kline]) -> LoadResult:
        return self.load("klines", rows)

    def load_ticker_24hr(self, rows: Sequence[Ticker24hr]) -> LoadResult:
        return self.load("ticker_24hr", rows)

    def newest_kline_open_time(self, symbol: str, interval: str) -> datetime | None:
        """The open time of the newest stored kline of `symbol` and `interval`, if any."""

        def work(cur: Cursor) -> datetime | None:
            cur.execute(
                'SELECT max(open_time) FROM public.klines WHERE symbol = %s AND "interval" = %s',
                (symbol, interval),
            )
            row = cur.fetchone()
            return None if row is None else row[0]

        return self.transaction(work, what="newest kline lookup")

    def kline_run(self, symbol: str, interval: str, since: datetime, until: datetime
                  ) -> tuple[datetime, datetime, datetime | None] | None:
        """The stored klines opening in [since, until): None if there are none, else (first, last, next).

        `first` is the first stored one; `last` ends the unbroken run from `first` (each kline's
        successor opens 1 ms after its close time); `next` is the first stored after the gap that
        ends the run, None when `last` is the newest stored before `until`.
        """

        def work(cur: Cursor) -> tuple[datetime, datetime, datetime | None] | None:
            # One pass in open_time order (the primary key's, so an index scan can feed it when the run
            # is long), stopping at the first kline whose successor is not the next one.
            cur.execute(
                """
                SELECT first_open, open_time, next_open FROM (
                    SELECT open_time, close_time,
                           lead(open_time) OVER w AS next_open,
                           first_value(open_time) OVER w AS first_open
                    FROM public.klines
                    WHERE symbol = %s AND "interval" = %s AND open_time >= %s AND open_time < %s
                    WINDOW w AS (ORDER BY open_time)
                ) AS k
                WHERE next_open IS DISTINCT FROM close_time + interval '1 millisecond'
                ORDER BY open_time
                LIMIT 1
                """,
                (symbol, interval, since, until),
            )
            row = cur.fetchone()
            return None if row is None else (row[0], row[1], row[2])

        return self.transaction(work, what="stored kline lookup")


def _one_per_key(spec: TableSpec, rows: Sequence[tuple[Any, ...]]) -> Sequence[tuple[Any, ...]]:
    """One row per key, as the database would end up with: the last for upserts, the first otherwise."""
    if len(rows) < 2:
        return rows
    key = operator.itemgetter(*(spec.columns.index(c) for c in spec.key))
    keys = list(map(key, rows))
    # Strictly ascending keys (a page of klines, of trades) are unique; comparing is far cheaper than
    # hashing, which an aware datetime does slowly.
    if all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
        return rows
    unique = dict(zip(keys, rows, strict=True)) if spec.update else dict(zip(reversed(keys), reversed(rows),
                                                                             strict=True))
    if len(unique) == len(rows):
        return rows
    kept = list(unique.values())
    return kept if spec.update else kept[::-1]


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
