"""consumer.mapping: Change -> Cassandra writes, the write timestamps, and the start-up checks.

The project's own files are checked against each other: config/pipeline.yaml's mappings,
infra/cassandra-init.cql and infra/init-db.sql must agree (`test_project_files_agree`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fake_secrets import PIPELINE_ENV
from init_db_sql import INIT_DB_SQL, parse_pg

from consumer.decode import Change, decode
from consumer.errors import PoisonMessageError
from consumer.mapping import (
    CqlTable,
    Mappings,
    PgTable,
    TableMapper,
    Write,
    build_mappings,
    cql_table_from_metadata,
    parse_cql,
    write_timestamp,
)
from pipeline.config import MappingConfig, PipelineConfig, load
from pipeline.schema import ConfigError, build

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"
ENV = PIPELINE_ENV
CQL = parse_cql((ROOT / "infra" / "cassandra-init.cql").read_text())


PG = parse_pg(INIT_DB_SQL.read_text())


def project_config() -> PipelineConfig:
    return load(ROOT / "config" / "pipeline.yaml", ENV)


def mappings() -> Mappings:
    return build_mappings(project_config(), CQL, pg_tables=PG)


def mapper(table: str, offset: int = 0) -> TableMapper:
    config = project_config()
    mp = build_mappings(config, CQL, pg_tables=PG, timestamp_offset=offset)
    found = next(m for m in mp.mappers if m.mapping.table == table)
    return found


def change(
    op: str,
    table: str,
    *,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
    lsn: int | None = 5000,
    unavailable: frozenset[str] = frozenset(),
) -> Change:
    return Change(
        topic=f"binance.public.{table}",
        partition=0,
        offset=1,
        table=table,
        op=op,  # type: ignore[arg-type]
        key=key or {},
        before=before,
        after=after,
        lsn=lsn,
        ts_ms=1,
        schema="public",
        unavailable=unavailable,
    )


TS = datetime(2024, 5, 3, 23, 59, 59, 999999, tzinfo=UTC)
TRADE = {
    "symbol": "BTCUSDT",
    "trade_id": 42,
    "price": Decimal("65000.1"),
    "quantity": Decimal("0.001"),
    "quote_quantity": Decimal("65.0001"),
    "trade_time": TS,
    "is_buyer_maker": True,
    "is_best_match": None,
}


# --- The project's files agree ---------------------------------------------------------------------


def test_project_files_agree() -> None:
    mp = mappings()  # raises ConfigError listing every disagreement
    assert {m.mapping.table for m in mp.mappers} == {
        "latest_prices",
        "order_book_levels",
        "trades",
        "klines",
        "ticker_24hr",
    }
    assert set(mp.topics) == {f"binance.public.{t}" for t in PG if t != "debezium_heartbeat"}


def test_the_cql_file_is_applicable_by_splitting_on_semicolons() -> None:
    text = (ROOT / "infra" / "cassandra-init.cql").read_text()
    for line in text.splitlines():
        if line.strip().startswith("--"):
            assert ";" not in line, f"a ';' in a comment breaks the naive split: {line}"
    statements = [s.strip() for s in text.split(";") if s.strip()]
    code = [
        s for s in statements if any(ln.strip() and not ln.strip().startswith("--") for ln in s.splitlines())
    ]
    assert len(code) == 6
    assert all(re.search(r"CREATE (KEYSPACE|TABLE) IF NOT EXISTS", s) for s in code)
    assert "'class': 'SimpleStrategy', 'replication_factor': 1" in text


def test_parse_cql_reads_keys_and_types() -> None:
    klines = CQL["klines"]
    assert klines.partition_key == ("symbol", "interval", "bucket")
    assert klines.primary_key == ("symbol", "interval", "bucket", "open_time")
    assert (klines.columns["bucket"], klines.columns["open_price"], klines.keyspace) == (
        "date",
        "decimal",
        "binance",
    )
    assert CQL["order_book_levels"].primary_key == (
        "symbol",
        "day",
        "snapshot_time",
        "last_update_id",
        "side",
        "level",
    )
    other = parse_cql(
        "CREATE TABLE ks.x (a int PRIMARY KEY, m frozen<map<text, int>>, /* c */ b text) WITH x = 1;"
    )
    assert other["x"].columns == {"a": "int", "m": "frozen<map<text,int>>", "b": "text"}
    assert other["x"].primary_key == ("a",)


def test_cql_table_from_driver_metadata() -> None:
    def col(name: str, t: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, cql_type=t)

    meta = SimpleNamespace(
        name="trades",
        keyspace_name="binance",
        columns={
            "symbol": col("symbol", "text"),
            "day": col("day", "date"),
            "trade_id": col("trade_id", "bigint"),
            "price": col("price", "decimal"),
        },
        partition_key=[col("symbol", "text"), col("day", "date")],
        clustering_key=[col("trade_id", "bigint")],
    )
    table = cql_table_from_metadata(meta)
    assert table.primary_key == ("symbol", "day", "trade_id") and table.columns["price"] == "decimal"


# --- Writes ----------------------------------------------------------------------------------------


def test_trade_insert() -> None:
    (w,) = mapper("trades").map(change("c", "trades", after=TRADE, key={"symbol": "BTCUSDT", "trade_id": 42}))
    assert w == Write(
        "binance",
        "trades",
        "upsert",
        {"symbol": "BTCUSDT", "day": date(2024, 5, 3), "trade_id": 42},
        {
            "price": Decimal("65000.1"),
            "quantity": Decimal("0.001"),
            "quote_quantity": Decimal("65.0001"),
            "trade_time": TS.replace(microsecond=999000),
            "is_buyer_maker": True,
            "is_best_match": None,
        },
        5000,
        0,
    )


def test_trade_delete_finds_its_day_in_the_full_before_row() -> None:
    (w,) = mapper("trades").map(
        change("d", "trades", before=TRADE, key={"symbol": "BTCUSDT", "trade_id": 42})
    )
    assert (w.kind, w.key, w.values, w.timestamp_us) == (
        "delete",
        {"symbol": "BTCUSDT", "day": date(2024, 5, 3), "trade_id": 42},
        {},
        5000,
    )


def test_update_that_moves_a_row_to_another_partition_deletes_the_old_one() -> None:
    moved = {**TRADE, "trade_time": datetime(2024, 5, 4, 0, 0, 0, 1000, tzinfo=UTC)}
    delete, upsert = mapper("trades").map(change("u", "trades", before=TRADE, after=moved))
    assert (delete.kind, delete.key["day"], upsert.kind, upsert.key["day"]) == (
        "delete",
        date(2024, 5, 3),
        "upsert",
        date(2024, 5, 4),
    )
    assert delete.timestamp_us == upsert.timestamp_us == 5000
    (only,) = mapper("trades").map(change("u", "trades", before=TRADE, after={**TRADE, "price": Decimal(1)}))
    assert only.kind == "upsert"


def test_default_identity_delete_uses_only_the_key() -> None:
    # a REPLICA IDENTITY DEFAULT delete: before has the key and type defaults for the other columns
    before = {"symbol": "ETHUSDT", "price": Decimal(0), "updated_at": datetime(1970, 1, 1, tzinfo=UTC)}
    (w,) = mapper("latest_prices").map(change("d", "latest_prices", before=before, key={"symbol": "ETHUSDT"}))
    assert (w.kind, w.key, w.values) == ("delete", {"symbol": "ETHUSDT"}, {})


@pytest.mark.parametrize(
    ("interval", "bucket"),
    [
        ("1s", date(2024, 5, 3)),
        ("1m", date(2024, 5, 1)),
        ("30m", date(2024, 5, 1)),
        ("1h", date(2024, 1, 1)),
        ("1d", date(2024, 1, 1)),
        ("1M", date(2024, 1, 1)),
    ],
)
def test_kline_bucket_depends_on_the_interval(interval: str, bucket: date) -> None:
    row = {
        "symbol": "BTCUSDT",
        "interval": interval,
        "open_time": datetime(2024, 5, 3, 12, tzinfo=UTC),
        "close_time": datetime(2024, 5, 3, 12, 0, 59, 999000, tzinfo=UTC),
        "trade_count": 42,
        **{
            c: Decimal("1.5")
            for c in (
                "open_price",
                "high_price",
                "low_price",
                "close_price",
                "volume",
                "quote_volume",
                "taker_buy_base_volume",
                "taker_buy_quote_volume",
            )
        },
    }
    (w,) = mapper("klines").map(change("r", "klines", after=row))
    assert w.key == {
        "symbol": "BTCUSDT",
        "interval": interval,
        "bucket": bucket,
        "open_time": datetime(2024, 5, 3, 12, tzinfo=UTC),
    }
    assert w.values["trade_count"] == 42 and w.timestamp_us == 4999  # a snapshot read: LSN - 1


def test_order_book_level() -> None:
    row = {
        "symbol": "BTCUSDT",
        "last_update_id": 1000,
        "side": "bid",
        "level": 0,
        "price": Decimal("64999.99"),
        "quantity": Decimal("1.25"),
        "snapshot_time": datetime(2024, 5, 3, 12, tzinfo=UTC),
    }
    (w,) = mapper("order_book_levels").map(change("c", "order_book_levels", after=row))
    assert w.key == {
        "symbol": "BTCUSDT",
        "day": date(2024, 5, 3),
        "snapshot_time": row["snapshot_time"],
        "last_update_id": 1000,
        "side": "bid",
        "level": 0,
    }
    assert w.values == {"price": Decimal("64999.99"), "quantity": Decimal("1.25")}


def test_unchanged_toast_columns_stay_unset() -> None:
    after = {"symbol": "BTCUSDT", "price": Decimal("1")}  # updated_at dropped by decode
    (w,) = mapper("latest_prices").map(
        change("u", "latest_prices", after=after, unavailable=frozenset({"updated_at"}))
    )
    assert w.values == {"price": Decimal("1")}  # not {"updated_at": None}: that would erase it


def test_truncate() -> None:
    (w,) = mapper("klines").map(change("t", "klines"))
    assert (w.kind, w.key, w.values, w.table, w.timestamp_us) == ("truncate", {}, {}, "klines", 5000)


def test_ttl_applies_to_upserts_only() -> None:
    m = TableMapper(
        MappingConfig(table="latest_prices", target="latest_prices", key=("symbol",), ttl_seconds=60),
        CQL["latest_prices"],
    )
    row = {"symbol": "X", "price": Decimal(1), "updated_at": TS}
    assert m.map(change("c", "latest_prices", after=row))[0].ttl == 60
    assert m.map(change("d", "latest_prices", before=row))[0].ttl == 0


def test_renames_and_ignored_columns() -> None:
    cfg = MappingConfig(
        table="latest_prices",
        target="prices",
        key=("sym",),
        rename={"symbol": "sym"},
        ignore_columns=("updated_at",),
    )
    m = TableMapper(cfg, {"sym": "text", "price": "decimal"})
    (w,) = m.map(change("c", "latest_prices", after={"symbol": "X", "price": Decimal(2), "updated_at": TS}))
    assert (w.table, w.key, w.values) == ("prices", {"sym": "X"}, {"price": Decimal(2)})


# --- Poison ----------------------------------------------------------------------------------------


def poison(fn: Callable[..., Any], *args: Any) -> PoisonMessageError:
    with pytest.raises(PoisonMessageError) as info:
        fn(*args)
    return info.value


def test_unknown_column_is_poison() -> None:
    err = poison(
        mapper("latest_prices").map,
        change("c", "latest_prices", after={"symbol": "X", "price": Decimal(1), "new_col": 1}),
    )
    assert (err.reason, err.where) == ("unknown_column", "new_col")
    assert "mappings[0].ignore_columns" in err.detail


@pytest.mark.parametrize(
    ("row", "reason", "where"),
    [
        ({"price": Decimal(1)}, "missing_value", "after.symbol"),
        ({"symbol": None, "price": Decimal(1)}, "missing_value", "after.symbol"),
        ({"symbol": "X", "price": "1.5"}, "bad_value", "price"),
        ({"symbol": "X", "price": Decimal("NaN")}, "bad_value", "price"),
        ({"symbol": 5, "price": Decimal(1)}, "bad_value", "symbol"),
        ({"symbol": "X", "updated_at": datetime(2024, 1, 1)}, "bad_value", "updated_at"),  # naive
        ({"symbol": "X", "updated_at": date(2024, 1, 1)}, "bad_value", "updated_at"),
    ],
)
def test_values_that_do_not_fit_are_poison(row: dict[str, Any], reason: str, where: str) -> None:
    err = poison(mapper("latest_prices").map, change("c", "latest_prices", after=row))
    assert (err.reason, err.where) == (reason, where)


def test_delete_without_the_bucket_source_is_poison() -> None:
    err = poison(
        mapper("trades").map,
        change("d", "trades", before={"symbol": "X", "trade_id": 1}, key={"symbol": "X", "trade_id": 1}),
    )
    assert (err.reason, err.where) == ("missing_value", "before.trade_time")


def test_integer_overflow_is_poison() -> None:
    row = {
        "symbol": "X",
        "last_update_id": 2**63,
        "side": "bid",
        "level": 0,
        "price": Decimal(1),
        "quantity": Decimal(1),
        "snapshot_time": TS,
    }
    assert (
        poison(mapper("order_book_levels").map, change("c", "order_book_levels", after=row)).where
        == "last_update_id"
    )
    row = {**row, "last_update_id": 1, "level": 40000}  # smallint
    assert (
        poison(mapper("order_book_levels").map, change("c", "order_book_levels", after=row)).where == "level"
    )


# --- Write timestamps ------------------------------------------------------------------------------


def test_write_timestamps() -> None:
    c = change("c", "latest_prices", lsn=26558624)
    assert write_timestamp(c) == 26558624
    assert write_timestamp(change("u", "t", lsn=7)) == 7 and write_timestamp(change("d", "t", lsn=7)) == 7
    assert write_timestamp(change("r", "t", lsn=7)) == 6  # a snapshot read loses to a change at its LSN
    assert write_timestamp(c, offset=10**15) == 10**15 + 26558624  # consumer.timestamp_offset
    assert (
        mapper("latest_prices", offset=100)
        .map(change("c", "latest_prices", after={"symbol": "X", "price": Decimal(1)}, lsn=5))[0]
        .timestamp_us
        == 105
    )
    for bad in (change("c", "t", lsn=None), change("r", "t", lsn=0)):
        assert poison(write_timestamp, bad).reason == "no_position"
    assert poison(write_timestamp, change("c", "t", lsn=2**63 - 10), 100).reason == "no_position"


# --- Start-up checks -------------------------------------------------------------------------------


def problems_of(mapping_yaml: list[dict[str, Any]], *, pg: bool = True, **debezium: Any) -> list[str]:
    config = build(PipelineConfig, {"mappings": mapping_yaml, "debezium": debezium})
    with pytest.raises(ConfigError) as info:
        build_mappings(config, CQL, pg_tables=PG if pg else None)
    return info.value.problems


def project_yaml() -> list[dict[str, Any]]:
    import yaml

    data = yaml.safe_load((ROOT / "config" / "pipeline.yaml").read_text())
    return list(data["mappings"])


def test_delete_that_cannot_supply_the_key_is_refused_at_start() -> None:
    yaml_ = project_yaml()
    assert yaml_[2]["table"] == "trades"
    yaml_[2]["replica_identity"] = "default"
    found = problems_of(yaml_, pg=False)
    assert any(
        p.startswith(
            "mappings[2].key[1]: a delete under REPLICA IDENTITY DEFAULT carries only the primary "
            "key, so it cannot supply day (bucket of trade_time)"
        )
        for p in found
    ), found
    # with PostgreSQL's own metadata the mismatch with the database is reported too
    found = problems_of(yaml_)
    assert any(
        p.startswith(
            "mappings[2].replica_identity: default but PostgreSQL table trades has REPLICA IDENTITY FULL"
        )
        for p in found
    ), found


def test_klines_bucket_from_the_primary_key_needs_no_full_identity() -> None:
    yaml_ = project_yaml()
    assert yaml_[3]["table"] == "klines" and yaml_[3].get("replica_identity", "default") == "default"
    build_mappings(build(PipelineConfig, {"mappings": yaml_}), CQL, pg_tables=PG)


@pytest.mark.parametrize(
    ("change_", "expected"),
    [
        (
            lambda m: m[0].update(key=["symbol", "nope"]),
            "mappings[0].key[1]: Cassandra binance.latest_prices has no column nope",
        ),
        (
            lambda m: m[0].update(key=["price"]),
            "mappings[0].key: [price], but the primary key of Cassandra binance.latest_prices is (symbol)",
        ),
        (
            lambda m: m[0].update(rename={"price": "cost"}),
            "mappings[0].rename.price: Cassandra binance.latest_prices has no column cost",
        ),
        (
            lambda m: m[0].update(rename={"prize": "price"}),
            "mappings[0].rename.prize: PostgreSQL table latest_prices has no column prize",
        ),
        (lambda m: m[0].update(target="nope"), "mappings[0].target: no table binance.nope in Cassandra"),
        (
            lambda m: m[4].update(table="debezium_heartbeat"),
            "mappings[4].table: debezium_heartbeat is not captured",
        ),
        (lambda m: m[3].update(bucket_unit_by=None), "mappings[3].bucket_units: needs bucket_unit_by"),
        (
            lambda m: m[3].update(bucket_unit="hour"),
            "mappings[3].day_buckets.bucket: hour buckets need a timestamp column",
        ),
        (
            lambda m: m[2].update(day_buckets={"day": "symbol"}),
            "mappings[2].day_buckets.day: symbol is text, not a timestamp",
        ),
        (
            lambda m: m[1].update(decimal_scales={"price": 8}),
            "mappings[1].decimal_scales.price: 8, but order_book_levels.price is numeric(38, 18)",
        ),
        (
            lambda m: m[1].update(ignore_columns=["nope"]),
            "mappings[1].ignore_columns.nope: PostgreSQL table order_book_levels has no column nope",
        ),
        (
            lambda m: m[1].update(target="trades", key=["symbol", "day", "trade_id"]),
            "mappings[1].key: lacks PostgreSQL primary key column(s) last_update_id, side, level",
        ),
        (lambda m: m.append(dict(m[0])), "mappings: table mapped more than once: latest_prices"),
    ],
)
def test_bad_mappings_name_their_yaml_path(change_: Any, expected: str) -> None:
    yaml_ = project_yaml()
    change_(yaml_)
    try:
        config = build(PipelineConfig, {"mappings": yaml_})
    except ConfigError as exc:  # caught by the config schema itself
        found = exc.problems
    else:
        with pytest.raises(ConfigError) as info:
            build_mappings(config, CQL, pg_tables=PG)
        found = info.value.problems
    assert any(p.removeprefix("<root>: ").startswith(expected) for p in found), found


def test_type_mismatch_between_postgresql_and_cassandra() -> None:
    cql = {
        **CQL,
        "latest_prices": CqlTable(
            "latest_prices", {"symbol": "text", "price": "text", "updated_at": "date"}, ("symbol",)
        ),
    }
    config = build(PipelineConfig, {"mappings": project_yaml()})
    with pytest.raises(ConfigError) as info:
        build_mappings(config, cql, pg_tables=PG)
    assert [p for p in info.value.problems if p.startswith("mappings[0].target: column")] == [
        "mappings[0].target: column price is PostgreSQL numeric(38, 18), which does not fit Cassandra text "
        "(latest_prices.price)",
        "mappings[0].target: column updated_at is PostgreSQL timestamptz, which does not fit Cassandra date "
        "(latest_prices.updated_at)",
    ]


def test_postgresql_column_missing_in_cassandra() -> None:
    cql = {
        **CQL,
        "latest_prices": CqlTable("latest_prices", {"symbol": "text", "price": "decimal"}, ("symbol",)),
    }
    with pytest.raises(ConfigError) as info:
        build_mappings(build(PipelineConfig, {"mappings": project_yaml()}), cql, pg_tables=PG)
    assert info.value.problems == [
        "mappings[0].ignore_columns: PostgreSQL column latest_prices.updated_at has none in Cassandra "
        "binance.latest_prices: add one, or list updated_at in ignore_columns"
    ]


def test_schemaless_messages_need_scales_and_units() -> None:
    yaml_ = [{k: v for k, v in m.items() if k != "decimal_scale"} for m in project_yaml()]
    found = problems_of(yaml_, pg=False, schemas_enable=False)
    assert (
        "mappings[0].decimal_scale: messages carry no schema (debezium.schemas_enable false) "
        "and decimals are "
        "precise, so the scale of price must be configured" in found
    )
    assert len(found) == 5
    # string/double modes carry the digits themselves
    build_mappings(
        build(
            PipelineConfig,
            {"mappings": yaml_, "debezium": {"schemas_enable": False, "decimal_handling_mode": "string"}},
        ),
        CQL,
    )
    # a timestamp without time zone arrives as an integer without schemas: its unit must be configured
    pg = {
        **PG,
        "latest_prices": PgTable(
            "latest_prices",
            {"symbol": "text", "price": "numeric(38,18)", "updated_at": "timestamp(3)"},
            ("symbol",),
        ),
    }
    config = build(PipelineConfig, {"mappings": project_yaml(), "debezium": {"schemas_enable": False}})
    with pytest.raises(ConfigError) as info:
        build_mappings(config, CQL, pg_tables=pg)
    assert info.value.problems == [
        "mappings[0].timestamp_units.updated_at: latest_prices.updated_at is timestamp(3), "
        "sent as an integer "
        "when messages carry no schema: set its unit (ms for precision 0-3, us for 4-6)"
    ]


def test_yaml_types_are_checked_by_the_config_loader(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "mappings:\n  - {table: klines, target: klines, key: [symbol], bucket_units: {1s: week},"
        " decimal_scales: {price: x}, replica_identity: partial}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert sorted(info.value.problems) == [
        'mappings[0].bucket_units.1s: expected one of "hour", "day", "month", "year", got "week"',
        'mappings[0].decimal_scales.price: expected an integer -1000..1000, got "x"',
        'mappings[0].replica_identity: expected one of "default", "full", got "partial"',
    ]


def test_cassandra_tables_read_live() -> None:
    def table_schema(keyspace: str, table: str) -> CqlTable:
        if table == "ticker_24hr":
            from consumer.errors import PermanentError

            raise PermanentError("no such table")
        assert keyspace == "binance"
        return CQL[table]

    with pytest.raises(ConfigError) as info:
        build_mappings(project_config(), table_schema)
    assert info.value.problems == ["mappings[4].target: no table binance.ticker_24hr in Cassandra"]


def test_mappings_route_by_topic_then_table() -> None:
    mp = mappings()
    c = change("c", "latest_prices", after={"symbol": "X", "price": Decimal(1)})
    assert mp.for_change(c) is mp.mappers[0]
    assert mp.map(change("c", "typesample", after={"id": 1})) == ()
    assert mp.decode_hints.tables["trades"].key == ("symbol", "trade_id")


# --- Captured messages map ---------------------------------------------------------------------------


def fixture_records() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(FIXTURES.rglob("*.json*")):
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        out += [(f"{path.name}:{n}", json.loads(line)) for n, line in enumerate(lines, 1) if line.strip()]
    return out


def test_every_captured_change_of_a_mapped_table_maps() -> None:
    mp = mappings()
    mapped = 0
    for name, r in fixture_records():
        raw = {
            part: None
            if r.get(part) is None
            else r[part].encode()
            if isinstance(r[part], str)
            else json.dumps(r[part]).encode()
            for part in ("key", "value")
        }
        mode = "double" if "_double" in name else "string" if "_string" in name else "precise"
        hints = type(mp.decode_hints)(tables=mp.decode_hints.tables, decimal_mode=mode)  # type: ignore[arg-type]
        c = decode(r["topic"], r.get("partition", 0), r.get("offset", 0), raw["key"], raw["value"], hints)
        if c is None or c.table not in {m.mapping.table for m in mp.mappers}:
            continue
        writes = mp.map(c)
        assert writes, name
        for w in writes:
            assert w.timestamp_us == (c.lsn or 0) - (c.op == "r"), name
            if w.kind != "truncate":
                assert set(w.key) == set(
                    next(m for m in mp.mappers if m.mapping.table == c.table).mapping.key
                )
        mapped += 1
    assert mapped > 80


def test_a_change_of_another_table_on_a_mapped_topic_is_poison() -> None:
    """Routing by topic alone would write a row of `no_such_table` into latest_prices."""
    mp = mappings()
    c = change("c", "latest_prices", after={"symbol": "X", "price": Decimal(1)})
    stray = c._replace(table="no_such_table")
    with pytest.raises(PoisonMessageError) as info:
        mp.for_change(stray)
    assert (info.value.reason, info.value.where) == ("wrong_table", "value.payload.source.table")
