"""The Cassandra sink against the real Cassandra of the stack (a scratch keyspace, dropped afterwards)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cassandra.query import BatchStatement

from consumer.errors import PermanentError, TransientError
from consumer.sink import CassandraSink, Request
from pipeline.config import CassandraConfig

pytestmark = pytest.mark.integration

KS = "cdc_sink_test"


@dataclasses.dataclass(frozen=True)
class W:
    """Shaped like consumer.mapping.Write."""

    keyspace: str
    table: str
    kind: str
    key: Mapping[str, Any]
    values: Mapping[str, Any]
    timestamp_us: int
    ttl: int | None = None


@pytest.fixture(scope="module")
def sink(cassandra_config: CassandraConfig) -> Iterator[CassandraSink[str]]:
    s: CassandraSink[str] = CassandraSink(cassandra_config, max_in_flight=8, batch_max_rows=10)
    deadline = time.monotonic() + 120
    while True:
        try:
            s.connect()
            break
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    s.execute(f"CREATE KEYSPACE IF NOT EXISTS {KS} WITH replication = "
              "{'class': 'SimpleStrategy', 'replication_factor': 1}", timeout=60)
    s.execute(
        f"CREATE TABLE IF NOT EXISTS {KS}.trades (symbol text, day date, trade_id bigint, price decimal, "
        "quantity decimal, trade_time timestamp, is_buyer_maker boolean, "
        "PRIMARY KEY ((symbol, day), trade_id))",
        timeout=60,
    )
    yield s
    s.execute(f"DROP KEYSPACE IF EXISTS {KS}", timeout=60)
    s.close()


def _symbol() -> str:
    return "T" + uuid.uuid4().hex[:10].upper()


def _trade(symbol: str, trade_id: int, ts_us: int, *, kind: str = "upsert", price: str = "1.5",
           ttl: int | None = None, day: date = date(2024, 5, 1)) -> W:
    key = {"symbol": symbol, "day": day, "trade_id": trade_id}
    values: dict[str, Any] = {} if kind == "delete" else {
        "price": Decimal(price),
        "quantity": Decimal("0.000000010000000000"),
        "trade_time": datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        "is_buyer_maker": True,
    }
    return W(KS, "trades", kind, key, values, ts_us, ttl)


def _write(sink: CassandraSink[str], writes: list[W]) -> list[Request[str]]:
    requests, rejected = sink.build((w, f"o{i}") for i, w in enumerate(writes))
    assert not rejected
    for r in requests:
        assert sink.submit(r, timeout=30)
    assert sink.wait_idle(30)
    done = []
    while sink.completed:
        done.append(sink.completed.popleft())
    assert all(r.error is None for r in done), [r.error for r in done]
    return done


def _row(sink: CassandraSink[str], symbol: str, trade_id: int, day: date = date(2024, 5, 1)) -> Any:
    return sink.execute(
        f"SELECT * FROM {KS}.trades WHERE symbol = %s AND day = %s AND trade_id = %s", (symbol, day, trade_id)
    ).one()


def test_table_schema_from_the_live_cluster(sink: CassandraSink[str]) -> None:
    schema = sink.table_schema(KS, "trades", refresh=True)
    assert schema.partition_key == ("symbol", "day")
    assert schema.clustering_key == ("trade_id",)
    assert schema.columns["price"] == "decimal"
    assert schema.columns["trade_time"] == "timestamp"
    with pytest.raises(PermanentError):
        sink.table_schema(KS, "no_such_table")


def test_upsert_keeps_values(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    _write(sink, [_trade(sym, 1, 1_000_000, price="123.450000000000000000")])
    row = _row(sink, sym, 1)
    assert row.price == Decimal("123.45")
    assert row.quantity == Decimal("1E-8")
    assert row.trade_time == datetime(2024, 5, 1, 12, 0, 0, 123000)
    assert row.is_buyer_maker is True


def test_values_reach_cassandra_exactly(sink: CassandraSink[str]) -> None:
    """consumer.encode's own encoding of decimals and timestamps, read back by Cassandra itself: scale
    kept, negative and long values, a timestamp before 1970, and a decimal longer than the 4,300 digits
    the driver's own serialiser (str -> int) can take."""
    sym = _symbol()
    long_value = "-" + "9" * 5000 + ".000000000000000001"
    cases = {1: ("-0.000000000000000001", datetime(1969, 7, 20, 20, 17, 40, 7000, tzinfo=UTC)),
             2: ("12345678901234567890.123456789012345678",
                 datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=UTC)),
             3: (long_value, datetime(1970, 1, 1, tzinfo=UTC))}
    _write(sink, [dataclasses.replace(_trade(sym, i, 1_000), values={
        "price": Decimal(price), "quantity": Decimal("1.000"), "trade_time": ts, "is_buyer_maker": False,
    }) for i, (price, ts) in cases.items()])
    for i, (price, ts) in cases.items():
        # As text, computed by Cassandra: the driver's decimal reader cannot build one of 5,000 digits.
        row = sink.execute(
            f"SELECT CAST(price AS text) AS price, CAST(quantity AS text) AS quantity, "
            f"toUnixTimestamp(trade_time) AS ms FROM {KS}.trades WHERE symbol = %s AND day = %s "
            "AND trade_id = %s", (sym, date(2024, 5, 1), i)).one()
        assert Decimal(row.price) == Decimal(price) and row.quantity == "1.000", (i, row.price[:50])
        assert row.ms == (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def test_replayed_older_upsert_does_not_resurrect_a_deleted_row(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    _write(sink, [_trade(sym, 7, 1_000)])
    _write(sink, [_trade(sym, 7, 2_000, kind="delete")])
    assert _row(sink, sym, 7) is None
    # Kafka redelivers the insert after a restart: its older timestamp loses against the delete.
    _write(sink, [_trade(sym, 7, 1_000)])
    assert _row(sink, sym, 7) is None
    # A genuinely newer insert brings it back.
    _write(sink, [_trade(sym, 7, 3_000, price="9")])
    assert _row(sink, sym, 7).price == Decimal(9)


def test_older_update_arriving_late_does_not_overwrite_newer(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    # Both in flight at once, newest first: the order requests complete in does not matter.
    _write(sink, [_trade(sym, 1, 5_000, price="2"), _trade(sym, 1, 4_000, price="1")])
    assert _row(sink, sym, 1).price == Decimal(2)


def test_rows_of_one_partition_share_unlogged_batches(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    writes = [_trade(sym, i, 10_000 + i) for i in range(25)]  # one partition
    writes += [_trade(sym, 100 + i, 10_000, day=date(2024, 5, 2 + i)) for i in range(3)]  # 3 more
    done = _write(sink, writes)
    batches = [r for r in done if isinstance(r.statement, BatchStatement)]
    assert sorted(r.rows for r in batches) == [5, 10, 10]
    assert sum(r.rows for r in done) == 28
    assert len(done) == 6
    count = sink.execute(
        f"SELECT count(*) FROM {KS}.trades WHERE symbol = %s AND day = %s", (sym, date(2024, 5, 1))
    ).one()[0]
    assert count == 25
    for i in range(3):
        assert _row(sink, sym, 100 + i, date(2024, 5, 2 + i)) is not None


def test_in_flight_is_bounded(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    seen: list[int] = []
    bounded: CassandraSink[str] = CassandraSink(sink.config, max_in_flight=4, batch_max_rows=1,
                                                on_submit=seen.append)
    bounded.connect()
    try:
        writes = [_trade(sym, i, 1) for i in range(200)]
        requests, _ = bounded.build((w, str(i)) for i, w in enumerate(writes))
        assert len(requests) == 200
        for r in requests:
            assert bounded.submit(r, timeout=30)
        assert bounded.wait_idle(30)
        assert max(seen) <= 4
        assert len(bounded.completed) == 200
        assert all(r.error is None for r in bounded.completed)
    finally:
        bounded.close()


def test_ttl_is_applied(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    _write(sink, [_trade(sym, 1, 1_000, ttl=3600), _trade(sym, 2, 1_000)])
    ttl1 = sink.execute(
        f"SELECT TTL(price) FROM {KS}.trades WHERE symbol = %s AND day = %s AND trade_id = 1",
        (sym, date(2024, 5, 1)),
    ).one()[0]
    ttl2 = sink.execute(
        f"SELECT TTL(price) FROM {KS}.trades WHERE symbol = %s AND day = %s AND trade_id = 2",
        (sym, date(2024, 5, 1)),
    ).one()[0]
    assert 3500 < ttl1 <= 3600
    assert ttl2 is None


def test_a_value_that_cannot_be_bound_is_rejected_alone(sink: CassandraSink[str]) -> None:
    sym = _symbol()
    good = _trade(sym, 1, 1_000)
    bad = dataclasses.replace(good, key={**good.key, "trade_id": "not a number"})
    requests, rejected = sink.build([(good, "good"), (bad, "bad")])
    assert [o for o, _, _ in rejected] == ["bad"]
    assert [r.origins for r in requests] == [["good"]]


def test_unreachable_cassandra_is_a_transient_error(cassandra_config: CassandraConfig) -> None:
    dead = dataclasses.replace(cassandra_config, port=1, request_timeout_seconds=2)
    s: CassandraSink[str] = CassandraSink(dead)
    with pytest.raises(TransientError):
        s.connect()
