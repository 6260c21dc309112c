"""`python -m consumer verify` (`make verify`): is every mapped PostgreSQL table in Cassandra, exactly?

For every mapping: read the PostgreSQL table (as postgres.user, or consumer.verify_user), turn each row
into the Cassandra row it must become with the consumer's own mapping code (a snapshot read through
`TableMapper.map`), read the Cassandra table, and compare: row counts, rows missing on either side, and
every mapped column's value. Decimals compare by value (1.50 == 1.5); timestamps to the millisecond
Cassandra keeps. Prints the first consumer.verify_max_differences differences per table; exit 1 when
any table differs, 0 when all are equal, 2 on a bad config.

The two databases are read one after the other, so a pipeline that is still applying changes shows
them as differences: `--wait SECONDS` compares again until equal or the time is up.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pipeline.cli import add_config_argument, load_or_exit, setup_logging
from pipeline.config import PipelineConfig
from pipeline.schema import ConfigError

log = logging.getLogger("consumer.verify")

EXIT_EQUAL = 0
EXIT_DIFFERENT = 1
EXIT_CONFIG = 2

_REPLICA_IDENTITY = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


def _pg_connect(config: PipelineConfig) -> Any:
    import psycopg2

    pg, cc = config.postgres, config.consumer
    user = cc.verify_user or pg.user
    password = cc.verify_password if cc.verify_user else pg.password
    conn = psycopg2.connect(
        host=pg.host, port=pg.port, dbname=pg.dbname, user=user,
        password=password.reveal() if password is not None else "",
        connect_timeout=pg.connect_timeout_seconds, sslmode=pg.sslmode,
        options="-c TimeZone=UTC -c default_transaction_read_only=on",
    )
    return conn


def read_pg_tables(config: PipelineConfig, tables: Iterable[str]) -> dict[str, Any]:
    """The PostgreSQL tables as `consumer.mapping.PgTable`s (columns with their types as written, primary
    key, replica identity), from the catalog."""
    from consumer.mapping import PgTable

    schema = config.debezium.schema
    out: dict[str, Any] = {}
    conn = _pg_connect(config)
    try:
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(
                    "SELECT c.oid, c.relreplident FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                    (schema, table),
                )
                row = cur.fetchone()
                if row is None:
                    continue
                oid, ident = row
                cur.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (oid,),
                )
                columns = {name: typ for name, typ in cur.fetchall()}
                cur.execute(
                    "SELECT a.attname FROM pg_index i "
                    "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                    "ON true JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                    "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
                    (oid,),
                )
                pk = tuple(r[0] for r in cur.fetchall())
                out[table] = PgTable(table, columns, pk, _REPLICA_IDENTITY.get(ident, "default"))  # type: ignore[arg-type]
    finally:
        conn.close()
    return out


# --- Normalising values for comparison -------------------------------------------------------------

def normalise(value: Any) -> Any:
    """A value as compared: decimals by value, timestamps as UTC epoch milliseconds, dates as dates."""
    if value is None:
        return None
    t = type(value)
    if t is Decimal:
        return value.normalize() if value.is_finite() else value
    if t is datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return ("ts", delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000)
    if t is date:
        return value
    date_method = getattr(value, "date", None)
    if t.__name__ == "Date" and callable(date_method):  # cassandra.util.Date
        try:
            return date_method()
        except ValueError:
            return value
    return value


def _show(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "ts":
        try:   # integer arithmetic: a float of the milliseconds is off by one far from 1970
            shown = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value[1])
            return shown.isoformat(timespec="milliseconds")
        except OverflowError:
            return f"{value[1]} ms since 1970"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return repr(value)


# --- Comparing one table ---------------------------------------------------------------------------

@dataclass
class TableReport:
    table: str
    target: str
    pg_rows: int = 0
    cassandra_rows: int = 0
    missing: int = 0        # in PostgreSQL, not in Cassandra
    extra: int = 0          # in Cassandra, not in PostgreSQL
    different: int = 0      # in both, some column differs
    unmappable: int = 0     # PostgreSQL rows the mapping rejects
    samples: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmappable)

    def note(self, text: str, limit: int) -> None:
        if len(self.samples) < limit:
            self.samples.append(text)


def _key_text(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show(normalise(v))}" for k, v in key.items())


def compare_table(
    mapper: Any,
    pg_rows: Iterable[Mapping[str, Any]],
    cassandra_rows: Iterable[Mapping[str, Any]],
    *,
    limit: int = 20,
) -> TableReport:
    """Compare one table: `pg_rows` as PostgreSQL has them, `cassandra_rows` as the driver returns them."""
    from consumer.decode import Change
    from consumer.errors import PoisonMessageError

    table = mapper.mapping.table
    report = TableReport(table, mapper.target)
    key_cols = tuple(mapper.mapping.key)
    expected: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}
    for row in pg_rows:
        report.pg_rows += 1
        change = Change(topic=mapper.topic, partition=0, offset=0, table=table, op="r", key={},
                        before=None, after=dict(row), lsn=2, ts_ms=None, snapshot=True)
        try:
            writes = mapper.map(change)
        except PoisonMessageError as exc:
            report.unmappable += 1
            report.note(f"PostgreSQL row the mapping rejects: {exc}", limit)
            continue
        upserts = [w for w in writes if w.kind == "upsert"]
        if not upserts:
            continue
        w = upserts[-1]
        nkey = tuple(normalise(w.key[c]) for c in key_cols)
        expected[nkey] = (w.key, w.values)
    seen: set[tuple[Any, ...]] = set()
    for crow in cassandra_rows:
        report.cassandra_rows += 1
        nkey = tuple(normalise(crow.get(c)) for c in key_cols)
        want = expected.get(nkey)
        if want is None:
            report.extra += 1
            report.note(f"only in Cassandra: {_key_text({c: crow.get(c) for c in key_cols})}", limit)
            continue
        seen.add(nkey)
        key, values = want
        diffs = []
        for col, v in values.items():
            a, b = normalise(v), normalise(crow.get(col))
            if a != b:
                diffs.append(f"{col}: PostgreSQL {_show(a)} != Cassandra {_show(b)}")
        if diffs:
            report.different += 1
            report.note(f"differs at {_key_text(key)}: {'; '.join(diffs)}", limit)
    for nkey, (key, _) in expected.items():
        if nkey not in seen:
            report.missing += 1
            report.note(f"missing in Cassandra: {_key_text(key)}", limit)
    return report


# --- All tables ------------------------------------------------------------------------------------

def _pg_rows(
    conn: Any, schema: str, table: str, symbols: Sequence[str] | None = None
) -> Iterable[dict[str, Any]]:
    from psycopg2 import sql

    with conn.cursor(name=f"verify_{table}") as cur:
        cur.itersize = 10_000
        query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        if symbols:
            cur.execute(query + sql.SQL(" WHERE symbol = ANY(%s)"), (list(symbols),))
        else:
            cur.execute(query)
        names: list[str] | None = None
        for row in cur:
            if names is None:
                names = [d[0] for d in cur.description]
            yield dict(zip(names, row, strict=True))


def _cassandra_rows(
    sink: Any, keyspace: str, table: str, columns: Mapping[str, str]
) -> Iterable[dict[str, Any]]:
    """The rows of a Cassandra table, `columns` mapping each name to its CQL type. Timestamps are read as
    their stored epoch milliseconds: the driver makes datetimes from them through a float, which is off by
    a millisecond far from 1970 (9999-12-31T23:59:59.999 reads back as .998)."""
    from cassandra.query import SimpleStatement

    from consumer.sink import DICT_ROWS

    exact = [c for c, t in columns.items() if t == "timestamp"]
    cols = ", ".join(
        f'blobAsBigint(timestampAsBlob("{c}")) AS "{c}"' if c in exact else f'"{c}"' for c in columns
    )
    stmt = SimpleStatement(f'SELECT {cols} FROM "{keyspace}"."{table}"', fetch_size=5000)
    timeout = max(60.0, sink.config.request_timeout_seconds)
    for row in sink.session.execute(stmt, timeout=timeout, execution_profile=DICT_ROWS):
        for c in exact:
            ms = row.get(c)
            if ms is not None:
                row[c] = ("ts", ms)   # as normalise() gives a datetime
        yield row


def verify(
    config: PipelineConfig,
    *,
    tables: Sequence[str] | None = None,
    symbols: Sequence[str] | None = None,
    limit: int | None = None,
    sink: Any = None,
) -> list[TableReport]:
    """Compare every mapping (or those of `tables`, and only the rows of `symbols` when given: every
    table has a symbol column); ConfigError if the mappings don't fit the tables."""
    from consumer.app import load_mappings
    from consumer.sink import CassandraSink

    limit = limit or config.consumer.verify_max_differences
    own_sink = sink is None
    if sink is None:
        sink = CassandraSink(config.cassandra)
        sink.connect()
    try:
        mappings = load_mappings(config, sink)
        conn = _pg_connect(config)
        try:
            reports = []
            for mapper in mappings.mappers:
                if tables and mapper.mapping.table not in tables:
                    continue
                columns = dict(mapper.cql.columns)
                conn.rollback()
                crows = _cassandra_rows(sink, mapper.keyspace, mapper.target, columns)
                if symbols:
                    column = mapper.mapping.rename.get("symbol", "symbol")
                    wanted = set(symbols)
                    crows = (r for r in crows if r.get(column) in wanted)
                report = compare_table(
                    mapper,
                    _pg_rows(conn, config.debezium.schema, mapper.mapping.table, symbols),
                    crows,
                    limit=limit,
                )
                reports.append(report)
        finally:
            conn.close()
    finally:
        if own_sink:
            sink.close()
    return reports


def print_reports(reports: Sequence[TableReport], out: Callable[[str], None] = print) -> bool:
    equal = True
    for r in reports:
        status = "equal" if r.equal else "DIFFERENT"
        out(f"{r.table} -> {r.target}: {status}: "
            f"PostgreSQL {r.pg_rows} rows, Cassandra {r.cassandra_rows} rows"
            + ("" if r.equal else f"; missing {r.missing}, extra {r.extra}, different {r.different}"
               + (f", unmappable {r.unmappable}" if r.unmappable else "")))
        for line in r.samples:
            out(f"  {line}")
        shown = len(r.samples)
        total = r.missing + r.extra + r.different + r.unmappable
        if total > shown:
            out(f"  ... and {total - shown} more")
        equal = equal and r.equal
    return equal


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(parser)
    parser.add_argument("--table", action="append", help="only this PostgreSQL table (repeatable)")
    parser.add_argument("--symbol", action="append", help="only the rows of this symbol (repeatable)")
    parser.add_argument("--max-differences", type=int, metavar="N",
                        help="differences shown per table (default consumer.verify_max_differences)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="compare again until equal or SECONDS have passed (default: once)")
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    setup_logging("WARNING")
    deadline = time.monotonic() + args.wait
    while True:
        try:
            reports = verify(config, tables=args.table, symbols=args.symbol, limit=args.max_differences)
        except ConfigError as exc:
            print("the mappings do not match the tables:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_CONFIG
        if all(r.equal for r in reports) or time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    if not reports:
        print("no mappings to verify", file=sys.stderr)
        return EXIT_DIFFERENT
    return EXIT_EQUAL if print_reports(reports) else EXIT_DIFFERENT
