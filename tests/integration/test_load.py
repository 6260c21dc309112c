"""producer.load against a real PostgreSQL with infra/init-db.sql: upserts that write only changes,
immutable inserts, retention, exact values, one transaction per load, errors and reconnection.

Every test writes rows of its own fresh symbols, so tests share the database without cleaning it."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from fake_secrets import fake_secret

from pipeline.config import PipelineConfig
from producer.errors import DatabaseError
from producer.load import TABLES, PostgresLoader, copy_text
from producer.transform import (
    Kline,
    LatestPrice,
    OrderBookLevel,
    Ticker24hr,
    Trade,
    transform_depth,
    transform_klines,
    transform_ticker_24hr,
    transform_ticker_price,
    transform_trades,
)

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"   # recorded Binance responses
NOW = datetime.now(UTC).replace(microsecond=123456)


def connect(config: PipelineConfig) -> Any:
    pg = config.postgres
    return psycopg2.connect(
        host=pg.host,
        port=pg.port,
        dbname=pg.dbname,
        user=pg.user,
        password=pg.password.reveal(),
        options="-c TimeZone=UTC",
    )


def fresh_symbol() -> str:
    return "T" + secrets.token_hex(5).upper() + "USDT"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def select(conn: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


@pytest.fixture
def loader(pg_config: PipelineConfig) -> Any:
    with PostgresLoader(pg_config.postgres, application_name="test-load") as loader:
        yield loader


def kline(symbol: str, open_time: datetime, close: str = "3820.87000000", interval: str = "1m") -> Kline:
    return Kline(
        symbol,
        interval,
        open_time,
        open_time + timedelta(seconds=59, microseconds=999000),
        Decimal("3959.11000000"),
        Decimal("3994.10000000"),
        Decimal("3796.00000000"),
        Decimal(close),
        Decimal("210422.85360000"),
        Decimal("819993474.31887900"),
        470771,
        Decimal("105358.22610000"),
        Decimal("411011816.12338600"),
    )


# --- each table, from the recorded samples ------------------------------------------------------------


def test_samples_round_trip_exactly(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    price = transform_ticker_price(
        {**sample("ticker_price_single_ETHUSDT_real_2021-12-17.json"), "symbol": sym},
        symbol=sym,
        observed_at=NOW,
    )[0]
    book = transform_depth(
        sample("depth_ETHUSDT_limit5_real_2021-12-17.json"), symbol=sym, snapshot_time=NOW
    )[0]
    trades = transform_trades(sample("trades_ETHUSDT_limit2_real_2021-12-17.json"), symbol=sym)[0]
    klines = transform_klines(
        sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json"), symbol=sym, interval="1d"
    )[0]
    ticker = transform_ticker_24hr(
        {**sample("docs_ticker_24hr_full_single.json"), "symbol": sym}, symbol=sym
    )[0]

    results = [
        loader.load_latest_prices(price),
        loader.load_order_book(book),
        loader.load_trades(trades),
        loader.load_klines(klines),
        loader.load_ticker_24hr(ticker),
    ]
    assert [(r.table, r.inserted, r.updated, r.deleted) for r in results] == [
        ("latest_prices", 1, 0, 0),
        ("order_book_levels", 10, 0, 0),
        ("trades", 2, 0, 0),
        ("klines", 1, 0, 0),
        ("ticker_24hr", 1, 0, 0),
    ]
    for table, rows in [
        ("latest_prices", price),
        ("order_book_levels", book),
        ("trades", trades),
        ("klines", klines),
        ("ticker_24hr", ticker),
    ]:
        columns = ", ".join(f'"{c}"' for c in TABLES[table].columns)
        stored = select(pg_conn, f"SELECT {columns} FROM {table} WHERE symbol = %s", sym)
        assert sorted(stored) == sorted(tuple(r) for r in rows), table  # the non-numeric columns too
    # Every numeric column, as PostgreSQL's own text, against the digits the samples carry: Decimal
    # equality would pass whatever the scale or a trailing digit lost beyond it.
    stored_text, expected_text = numeric_texts(pg_conn, sym), recorded_numeric_texts()
    assert stored_text == expected_text
    assert len(expected_text) == 1 + 20 + 6 + 8 + 15  # no column left out
    assert stored_text["latest_prices", "price"] == "3866.440000000000000000"
    [(close_time,)] = select(pg_conn, "SELECT close_time FROM klines WHERE symbol = %s", sym)
    assert close_time == datetime(2021, 12, 17, 23, 59, 59, 999000, tzinfo=UTC)
    [(updated_at,)] = select(pg_conn, "SELECT updated_at FROM latest_prices WHERE symbol = %s", sym)
    assert updated_at == NOW  # microseconds included


def at_scale_18(text: str) -> str:
    """A decimal string as numeric(38,18)::text writes it: the digits as sent, zeros to 18 places."""
    whole, _, fraction = text.partition(".")
    assert len(fraction) <= 18, text
    return f"{whole}.{fraction.ljust(18, '0')}"


NumericTexts = dict[tuple[str, ...], str]


def numeric_texts(conn: Any, symbol: str) -> NumericTexts:
    """(table, row key..., column) -> column::text for every numeric column of `symbol`'s rows."""
    out: NumericTexts = {}
    for table, key in [("latest_prices", ()), ("order_book_levels", ("side", "level")),
                       ("trades", ("trade_id",)), ("klines", ()), ("ticker_24hr", ())]:
        spec = TABLES[table]
        numeric = [c for c, t in zip(spec.columns, spec.types, strict=True) if t is Decimal]
        columns = ", ".join([*(f'"{c}"::text' for c in key), *(f'"{c}"::text' for c in numeric)])
        for row in select(conn, f"SELECT {columns} FROM {table} WHERE symbol = %s", symbol):
            for column, text in zip(numeric, row[len(key):], strict=True):
                out[(table, *row[:len(key)], column)] = text
    return out


def recorded_numeric_texts() -> NumericTexts:
    """What numeric_texts must find after loading the samples: taken from the JSON strings themselves."""
    price = sample("ticker_price_single_ETHUSDT_real_2021-12-17.json")
    out: NumericTexts = {("latest_prices", "price"): price["price"]}
    book = sample("depth_ETHUSDT_limit5_real_2021-12-17.json")
    for side in ("bid", "ask"):
        for level, (price, qty) in enumerate(book[side + "s"]):
            out[("order_book_levels", side, str(level), "price")] = price
            out[("order_book_levels", side, str(level), "quantity")] = qty
    for trade in sample("trades_ETHUSDT_limit2_real_2021-12-17.json"):
        for column, field in (("price", "price"), ("quantity", "qty"), ("quote_quantity", "quoteQty")):
            out[("trades", str(trade["id"]), column)] = trade[field]
    [kline] = sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")
    for column, index in (("open_price", 1), ("high_price", 2), ("low_price", 3), ("close_price", 4),
                          ("volume", 5), ("quote_volume", 7), ("taker_buy_base_volume", 9),
                          ("taker_buy_quote_volume", 10)):
        out[("klines", column)] = kline[index]
    ticker = sample("docs_ticker_24hr_full_single.json")
    for column, field in (
        ("price_change", "priceChange"), ("price_change_percent", "priceChangePercent"),
        ("weighted_avg_price", "weightedAvgPrice"), ("prev_close_price", "prevClosePrice"),
        ("last_price", "lastPrice"), ("last_quantity", "lastQty"), ("bid_price", "bidPrice"),
        ("bid_quantity", "bidQty"), ("ask_price", "askPrice"), ("ask_quantity", "askQty"),
        ("open_price", "openPrice"), ("high_price", "highPrice"), ("low_price", "lowPrice"),
        ("volume", "volume"), ("quote_volume", "quoteVolume"),
    ):
        out[("ticker_24hr", column)] = ticker[field]
    assert all(isinstance(text, str) for text in out.values())
    return {key: at_scale_18(text) for key, text in out.items()}


def test_identical_reload_changes_nothing(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    klines = [kline(sym, NOW.replace(second=0, microsecond=0) - timedelta(minutes=i)) for i in range(50)]
    ticker = transform_ticker_24hr(
        {**sample("docs_ticker_24hr_full_single.json"), "symbol": sym}, symbol=sym
    )[0]
    first = (loader.load_klines(klines), loader.load_ticker_24hr(ticker))
    assert [(r.inserted, r.updated) for r in first] == [(50, 0), (1, 0)]
    xmins = select(pg_conn, "SELECT xmin::text FROM klines WHERE symbol = %s ORDER BY open_time", sym)
    again = (loader.load_klines(klines), loader.load_ticker_24hr(ticker))
    assert [(r.rows, r.inserted, r.updated, r.deleted) for r in again] == [(50, 0, 0, 0), (1, 0, 0, 0)]
    # No row was rewritten: no new row version, so nothing reaches the WAL for Debezium.
    assert select(pg_conn, "SELECT xmin::text FROM klines WHERE symbol = %s ORDER BY open_time", sym) == xmins


def test_changed_rows_are_updated_and_counted(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    opens = [NOW.replace(second=0, microsecond=0) - timedelta(minutes=i) for i in range(3)]
    loader.load_klines([kline(sym, t) for t in opens])
    # The newest (still open) kline moved; a new one opened.
    newer = opens[0] + timedelta(minutes=1)
    result = loader.load_klines(
        [
            kline(sym, opens[2]),
            kline(sym, opens[1]),
            kline(sym, opens[0], "3821.5"),
            kline(sym, newer, "3822"),
        ]
    )
    assert (result.inserted, result.updated) == (1, 1)
    stored = dict(select(pg_conn, "SELECT open_time, close_price FROM klines WHERE symbol = %s", sym))
    assert stored[opens[0]] == Decimal("3821.5") and stored[newer] == Decimal("3822")

    ticker = transform_ticker_24hr(
        {**sample("docs_ticker_24hr_full_single.json"), "symbol": sym}, symbol=sym
    )[0]
    loader.load_ticker_24hr(ticker)
    changed = ticker[0]._replace(trade_count=77)
    assert (loader.load_ticker_24hr([changed]).updated, loader.load_ticker_24hr([changed]).updated) == (1, 0)


def test_latest_price_updates_only_when_the_price_moves(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    assert loader.load_latest_prices([LatestPrice(sym, Decimal("1.5"), NOW)]).inserted == 1
    later = NOW + timedelta(seconds=10)
    # Same price seen later: not a change (updated_at says since when the price holds).
    assert loader.load_latest_prices([LatestPrice(sym, Decimal("1.50000"), later)]).updated == 0
    assert select(pg_conn, "SELECT updated_at FROM latest_prices WHERE symbol = %s", sym) == [(NOW,)]
    result = loader.load_latest_prices([LatestPrice(sym, Decimal("1.6"), later)])
    assert (result.inserted, result.updated) == (0, 1)
    assert select(pg_conn, "SELECT price, updated_at FROM latest_prices WHERE symbol = %s", sym) == [
        (Decimal("1.6"), later)
    ]


def test_duplicate_keys_in_one_batch_keep_the_last(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    t = NOW.replace(second=0, microsecond=0)
    result = loader.load_klines([kline(sym, t, "1"), kline(sym, t, "2"), kline(sym, t, "3")])
    assert (result.rows, result.inserted) == (1, 1)
    assert select(pg_conn, "SELECT close_price FROM klines WHERE symbol = %s", sym) == [(Decimal(3),)]
    trade = Trade(sym, 1, Decimal(1), Decimal(2), Decimal(2), NOW, True, None)
    assert loader.load_trades([trade, trade._replace(price=Decimal(9))]).inserted == 1


def test_trades_are_immutable(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    trades = [
        Trade(sym, i, Decimal("1.1"), Decimal("2"), Decimal("2.2"), NOW, i % 2 == 0, None if i else True)
        for i in range(5)
    ]
    assert loader.load_trades(trades).inserted == 5
    result = loader.load_trades(
        [t._replace(price=Decimal(7)) for t in trades]
        + [Trade(sym, 5, Decimal(1), Decimal(1), Decimal(1), NOW, False, False)]
    )
    assert (result.inserted, result.updated) == (1, 0)
    stored = select(
        pg_conn,
        "SELECT trade_id, price, is_buyer_maker, is_best_match FROM trades "
        "WHERE symbol = %s ORDER BY trade_id",
        sym,
    )
    assert stored[:2] == [(0, Decimal("1.1"), True, True), (1, Decimal("1.1"), False, None)]
    assert len(stored) == 6


def test_order_book_retention(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    old, recent = NOW - timedelta(hours=3), NOW - timedelta(minutes=5)

    def book(update_id: int, at: datetime, levels: int = 3) -> list[OrderBookLevel]:
        return [
            OrderBookLevel(sym, update_id, side, i, Decimal(100 + i), Decimal(1), at)
            for side in ("bid", "ask")
            for i in range(levels)
        ]

    assert loader.load_order_book(book(1, old) + book(2, recent)).inserted == 12
    # Same snapshot again: nothing; the cut-off removes only what is older than it.
    result = loader.load_order_book(
        book(2, recent) + book(3, NOW, levels=2), delete_before=NOW - timedelta(hours=1)
    )
    # (Retention is for every symbol: other tests' old snapshots may go too.)
    assert (result.inserted, result.updated) == (4, 0) and result.deleted >= 6
    ids = select(
        pg_conn, "SELECT DISTINCT last_update_id FROM order_book_levels WHERE symbol = %s ORDER BY 1", sym
    )
    assert ids == [(2,), (3,)]
    # A retention pass with no new rows still deletes.
    result = loader.load_order_book([], delete_before=NOW)
    assert result.deleted >= 6 and result.inserted == 0
    assert select(pg_conn, "SELECT count(*) FROM order_book_levels WHERE symbol = %s", sym) == [(4,)]


def test_times_exact_over_the_whole_range(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    times = [
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2255, 6, 5, 23, 47, 34, 740993, tzinfo=UTC),  # past 2**53 microseconds
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        NOW,
        NOW.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata")) + timedelta(days=1),
    ]
    rows = [Trade(sym, i, Decimal(1), Decimal(1), Decimal(1), t, False, None) for i, t in enumerate(times)]
    loader.load_trades(rows)
    stored = select(pg_conn, "SELECT trade_time FROM trades WHERE symbol = %s ORDER BY trade_id", sym)
    assert [t for (t,) in stored] == times


def test_text_needing_copy_escapes(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    weird = sym + "\\N\t\n\r\\"
    loader.load_latest_prices([LatestPrice(weird, Decimal(1), NOW), LatestPrice(sym, Decimal(2), NOW)])
    assert select(
        pg_conn, "SELECT symbol, price FROM latest_prices WHERE symbol LIKE %s ORDER BY price", sym + "%"
    ) == [(weird, Decimal(1)), (sym, Decimal(2))]


def test_copy_text_format() -> None:
    t = datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
    text = copy_text(
        TABLES["trades"], [Trade("A\tB", 1, Decimal("1.50"), Decimal(2), Decimal("3E+2"), t, True, None)]
    )
    assert text == "A\\tB\t1\t1.50\t2\t3E+2\t1704067200000005\tTrue\t\\N\n"
    assert copy_text(TABLES["trades"], []) == ""


# --- concurrent writers -------------------------------------------------------------------------------


@pytest.mark.parametrize("appending", [True, False])
def test_a_concurrent_insert_of_the_same_key_falls_back_to_on_conflict(
    loader: PostgresLoader, pg_config: PipelineConfig, appending: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Another session inserts one of our keys after our snapshot: the plain INSERT meets a unique
    violation, and the load redoes its insert step with ON CONFLICT instead of failing."""
    sym = fresh_symbol()
    t = NOW.replace(second=0, microsecond=0)
    if not appending:  # a stored key inside the batch: the UPDATE + INSERT ... WHERE NOT EXISTS path
        loader.load_klines([kline(sym, t - timedelta(minutes=1))])
    other = connect(pg_config)
    try:
        with other.cursor() as cur:  # uncommitted: our INSERT will wait for it, then see it committed
            columns = TABLES["klines"].columns
            cur.execute(
                f"INSERT INTO klines ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                tuple(kline(sym, t, "99")),
            )
        results: list[Any] = []
        caplog.set_level(logging.INFO, logger="producer.load")
        batch = [kline(sym, t - timedelta(minutes=1)), kline(sym, t)]
        worker = threading.Thread(target=lambda: results.append(loader.load_klines(batch)))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting on the other session's row
        other.commit()
        worker.join(10)
    finally:
        other.close()
    (result,) = results
    assert any("concurrent insert" in r.getMessage() for r in caplog.records)
    # Our row for `t` differs from the other session's (close 3820.87 vs 99): it is updated.
    assert (result.inserted, result.updated) == ((1, 1) if appending else (0, 1))
    conn = connect(pg_config)
    try:
        assert select(conn, "SELECT count(*), max(close_price) FROM klines WHERE symbol = %s", sym) == [
            (2, Decimal("3820.87000000"))
        ]
    finally:
        conn.close()


def test_duplicates_reaching_the_database_are_handled(
    loader: PostgresLoader, pg_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the client-side de-duplication, a batch with a repeated trade id still loads."""
    import producer.load

    monkeypatch.setattr(producer.load, "_one_per_key", lambda spec, rows: rows)
    sym = fresh_symbol()
    trade = Trade(sym, 7, Decimal(1), Decimal(1), Decimal(1), NOW, True, None)
    result = loader.load_trades([trade, trade._replace(trade_id=8), trade._replace(price=Decimal(2))])
    assert (result.inserted, result.updated) == (2, 0)
    assert select(pg_conn, "SELECT trade_id, price FROM trades WHERE symbol = %s ORDER BY 1", sym) == [
        (7, Decimal(1)),
        (8, Decimal(1)),
    ]


def test_rows_of_several_groups_in_one_load(loader: PostgresLoader, pg_conn: Any) -> None:
    """Groups of one batch take the append path only if every group is past its stored keys."""
    a, b = fresh_symbol(), fresh_symbol()
    t = NOW.replace(second=0, microsecond=0)
    loader.load_klines([kline(a, t), kline(b, t - timedelta(minutes=5))])
    result = loader.load_klines(
        [
            kline(a, t + timedelta(minutes=1)),
            kline(b, t - timedelta(minutes=5), "1"),
            kline(b, t, interval="1h"),
        ]
    )
    assert (result.inserted, result.updated) == (2, 1)
    assert select(pg_conn, "SELECT count(*) FROM klines WHERE symbol IN (%s, %s)", a, b) == [(4,)]


# --- failures ---------------------------------------------------------------------------------------


def test_a_failing_load_rolls_back_everything(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    old = NOW - timedelta(days=2)
    loader.load_order_book([OrderBookLevel(sym, 1, "bid", 0, Decimal(1), Decimal(1), old)])
    too_big = OrderBookLevel(sym, 2, "ask", 0, Decimal("1e30"), Decimal(1), NOW)
    good = OrderBookLevel(sym, 2, "bid", 0, Decimal(1), Decimal(1), NOW)
    with pytest.raises(DatabaseError, match="numeric field overflow") as info:
        loader.load_order_book([good, too_big], delete_before=NOW - timedelta(days=1))
    assert isinstance(info.value.__cause__, psycopg2.Error)
    # Neither the insert nor the retention delete happened; the loader still works.
    assert select(pg_conn, "SELECT last_update_id FROM order_book_levels WHERE symbol = %s", sym) == [(1,)]
    assert loader.load_order_book([good]).inserted == 1


def test_reconnects_after_the_connection_is_lost(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    assert loader.load_latest_prices([LatestPrice(sym, Decimal(1), NOW)]).inserted == 1
    pid = loader.connection().get_backend_pid()
    select(pg_conn, "SELECT pg_terminate_backend(%s)", pid)
    result = loader.load_latest_prices([LatestPrice(sym, Decimal(2), NOW)])
    assert result.updated == 1
    assert loader.connection().get_backend_pid() != pid
    assert select(pg_conn, "SELECT price FROM latest_prices WHERE symbol = %s", sym) == [(Decimal(2),)]


def test_unreachable_database_is_a_database_error(pg_config: PipelineConfig) -> None:
    config = dataclasses.replace(pg_config.postgres, port=1, connect_timeout_seconds=2)
    with PostgresLoader(config) as loader, pytest.raises(DatabaseError, match="cannot connect") as info:
        loader.load_latest_prices([LatestPrice(fresh_symbol(), Decimal(1), NOW)])
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)
    assert "******" not in str(info.value) and pg_config.postgres.password.reveal() not in str(info.value)


def test_wrong_password_is_a_database_error(pg_config: PipelineConfig) -> None:
    from pipeline.config import Secret

    config = dataclasses.replace(pg_config.postgres, password=Secret(fake_secret("wrong")))
    with PostgresLoader(config) as loader, pytest.raises(DatabaseError, match="authentication failed"):
        loader.newest_kline_open_time("BTCUSDT", "1m")


def test_newest_kline_open_time(loader: PostgresLoader) -> None:
    sym = fresh_symbol()
    assert loader.newest_kline_open_time(sym, "1m") is None
    t = NOW.replace(second=0, microsecond=0)
    loader.load_klines(
        [kline(sym, t - timedelta(minutes=i)) for i in range(3)] + [kline(sym, t, interval="1h")]
    )
    assert loader.newest_kline_open_time(sym, "1m") == t
    assert loader.newest_kline_open_time(sym, "5m") is None


def test_ticker_24hr_every_column(loader: PostgresLoader, pg_conn: Any) -> None:
    sym = fresh_symbol()
    row = Ticker24hr(
        sym, *[Decimal(f"{i}.{i:08d}") for i in range(15)], NOW, NOW + timedelta(days=1), -1, -1, 0
    )
    loader.load_ticker_24hr([row])
    columns = ", ".join(TABLES["ticker_24hr"].columns)
    assert select(pg_conn, f"SELECT {columns} FROM ticker_24hr WHERE symbol = %s", sym) == [tuple(row)]
