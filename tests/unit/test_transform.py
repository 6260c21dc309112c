"""producer.transform on Binance's recorded responses and on broken ones: exact decimals, UTC times,
one reject per bad record naming its field while the rest of the batch goes through."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.errors import MalformedRecordError
from producer.transform import (
    EPOCH,
    Kline,
    LatestPrice,
    OrderBookLevel,
    Ticker24hr,
    Trade,
    from_epoch_ms,
    parse_decimal,
    to_epoch_ms,
    transform_depth,
    transform_klines,
    transform_ticker_24hr,
    transform_ticker_price,
    transform_trades,
)

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"   # recorded Binance responses
SEEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def exact(value: Decimal, text: str) -> None:
    """Same value and same digits: nothing went through a float."""
    assert isinstance(value, Decimal)
    assert str(value) == text


# --- the recorded samples ---------------------------------------------------------------------------


def test_ticker_price_real_sample() -> None:
    rows, rejects = transform_ticker_price(
        sample("ticker_price_single_ETHUSDT_real_2021-12-17.json"), symbol="ETHUSDT", observed_at=SEEN
    )
    assert rejects == []
    assert rows == [LatestPrice("ETHUSDT", Decimal("3866.44000000"), SEEN)]
    exact(rows[0].price, "3866.44000000")


def test_ticker_price_multi_sample() -> None:
    rows, rejects = transform_ticker_price(
        sample("docs_ticker_price_multi.json"), symbol=None, observed_at=SEEN
    )
    assert rejects == []
    assert [(r.symbol, str(r.price)) for r in rows] == [("LTCBTC", "4.00000200"), ("ETHBTC", "0.07946600")]


def test_ticker_price_for_another_symbol_is_rejected() -> None:
    rows, rejects = transform_ticker_price(
        {"symbol": "BTCUSDT", "price": "1.0"}, symbol="ETHUSDT", observed_at=SEEN
    )
    assert rows == []
    assert [(e.endpoint, e.symbol, e.field) for e in rejects] == [("ticker_price", "ETHUSDT", "symbol")]
    assert "BTCUSDT" in rejects[0].problem


def test_naive_observed_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        transform_ticker_price({"symbol": "X", "price": "1"}, symbol=None, observed_at=datetime(2024, 1, 1))


def test_depth_real_sample() -> None:
    rows, rejects = transform_depth(
        sample("depth_ETHUSDT_limit5_real_2021-12-17.json"), symbol="ETHUSDT", snapshot_time=SEEN
    )
    assert rejects == []
    assert len(rows) == 10
    assert rows[0] == OrderBookLevel(
        "ETHUSDT", 13304569353, "bid", 0, Decimal("3880.79000000"), Decimal("0.44760000"), SEEN
    )
    assert rows[5] == OrderBookLevel(
        "ETHUSDT", 13304569353, "ask", 0, Decimal("3880.80000000"), Decimal("4.60140000"), SEEN
    )
    assert [(r.side, r.level) for r in rows] == [("bid", i) for i in range(5)] + [
        ("ask", i) for i in range(5)
    ]
    exact(rows[9].price, "3881.01000000")
    exact(rows[9].quantity, "0.19110000")


def test_depth_with_fewer_levels_than_asked() -> None:
    rows, rejects = transform_depth(sample("docs_depth.json"), symbol="BNBBTC", snapshot_time=SEEN)
    assert rejects == []
    assert [(r.side, r.level, str(r.price), str(r.quantity)) for r in rows] == [
        ("bid", 0, "4.00000000", "431.00000000"),
        ("ask", 0, "4.00000200", "12.00000000"),
    ]
    rows, rejects = transform_depth(
        {"lastUpdateId": 7, "bids": [], "asks": []}, symbol="X", snapshot_time=SEEN
    )
    assert rows == [] and rejects == []


def test_trades_real_sample() -> None:
    rows, rejects = transform_trades(sample("trades_ETHUSDT_limit2_real_2021-12-17.json"), symbol="ETHUSDT")
    assert rejects == []
    assert rows == [
        Trade(
            "ETHUSDT",
            710243051,
            Decimal("3907.21000000"),
            Decimal("0.49870000"),
            Decimal("1948.52562700"),
            utc(2021, 12, 17, 16, 59, 16, 308000),
            False,
            True,
        ),
        Trade(
            "ETHUSDT",
            710243052,
            Decimal("3907.20000000"),
            Decimal("0.01240000"),
            Decimal("48.44928000"),
            utc(2021, 12, 17, 16, 59, 16, 425000),
            True,
            True,
        ),
    ]
    exact(rows[0].quote_quantity, "1948.52562700")
    assert rows[0].trade_time.utcoffset() == timedelta(0)


def test_trades_docs_sample_and_missing_is_best_match() -> None:
    raw = sample("docs_trades.json")
    rows, _ = transform_trades(raw, symbol="BNBBTC")
    assert rows[0].trade_id == 28457 and str(rows[0].quote_quantity) == "48.000012"
    del raw[0]["isBestMatch"]
    rows, rejects = transform_trades(raw, symbol="BNBBTC")
    assert rejects == [] and rows[0].is_best_match is None


def test_klines_real_sample() -> None:
    rows, rejects = transform_klines(
        sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json"), symbol="ETHUSDT", interval="1d"
    )
    assert rejects == []
    assert rows == [
        Kline(
            "ETHUSDT",
            "1d",
            utc(2021, 12, 17),
            utc(2021, 12, 17, 23, 59, 59, 999000),
            Decimal("3959.11000000"),
            Decimal("3994.10000000"),
            Decimal("3796.00000000"),
            Decimal("3820.87000000"),
            Decimal("210422.85360000"),
            Decimal("819993474.31887900"),
            470771,
            Decimal("105358.22610000"),
            Decimal("411011816.12338600"),
        )
    ]
    k = rows[0]
    exact(k.quote_volume, "819993474.31887900")
    exact(k.taker_buy_quote_volume, "411011816.12338600")
    assert k.close_time.tzinfo is not None and k.close_time.utcoffset() == timedelta(0)


def test_klines_docs_sample() -> None:
    rows, rejects = transform_klines(sample("docs_klines.json"), symbol="BNBBTC", interval="1w")
    assert rejects == []
    assert rows[0].open_time == utc(2017, 7, 3) and rows[0].close_time == utc(2017, 7, 9, 23, 59, 59, 999000)
    assert (rows[0].trade_count, str(rows[0].open_price), str(rows[0].taker_buy_base_volume)) == (
        308,
        "0.01634790",
        "1756.87402397",
    )


def test_ticker_24hr_full_sample_every_field() -> None:
    rows, rejects = transform_ticker_24hr(sample("docs_ticker_24hr_full_single.json"), symbol="BNBBTC")
    assert rejects == []
    assert rows == [
        Ticker24hr(
            "BNBBTC",
            Decimal("-94.99999800"),
            Decimal("-95.960"),
            Decimal("0.29628482"),
            Decimal("0.10002000"),
            Decimal("4.00000200"),
            Decimal("200.00000000"),
            Decimal("4.00000000"),
            Decimal("100.00000000"),
            Decimal("4.00000200"),
            Decimal("100.00000000"),
            Decimal("99.00000000"),
            Decimal("100.00000000"),
            Decimal("0.10000000"),
            Decimal("8913.30000000"),
            Decimal("15.30000000"),
            utc(2017, 7, 11, 14, 31, 39, 40000),
            utc(2017, 7, 12, 14, 31, 39, 40000),
            28385,
            28460,
            76,
        )
    ]
    exact(rows[0].price_change_percent, "-95.960")
    multi, rejects = transform_ticker_24hr(sample("docs_ticker_24hr_full_multi.json"), symbol=None)
    assert multi == rows and rejects == []


def test_ticker_24hr_without_trades_has_ids_minus_one() -> None:
    raw = sample("docs_ticker_24hr_full_single.json")
    raw.update(firstId=-1, lastId=-1, count=0)
    rows, rejects = transform_ticker_24hr(raw, symbol="BNBBTC")
    assert rejects == [] and (rows[0].first_trade_id, rows[0].last_trade_id, rows[0].trade_count) == (
        -1,
        -1,
        0,
    )


def test_ticker_24hr_mini_is_rejected_naming_the_missing_field() -> None:
    rows, rejects = transform_ticker_24hr(sample("docs_ticker_24hr_mini_multi.json"), symbol=None)
    assert rows == []
    assert [(e.endpoint, e.field, e.problem) for e in rejects] == [
        ("ticker_24hr", "priceChange", "record 0: missing"),
        ("ticker_24hr", "priceChange", "record 1: missing"),
    ]


# --- malformed records: one reject each, the rest goes through ---------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (3907.21, "JSON float"),
        (float("nan"), "JSON float"),
        (float("inf"), "JSON float"),
        ("NaN", "decimal number"),
        ("Infinity", "decimal number"),
        ("-inf", "decimal number"),
        ("abc", "decimal number"),
        ("", "decimal number"),
        (" 1.5", "decimal number"),
        ("1_000.5", "decimal number"),
        ("1.2.3", "decimal number"),
        ("٣", "decimal number"),  # an Arabic-Indic digit, which Decimal() itself would take
        (True, "boolean"),
        (None, "null"),
        (["1.0"], "list"),
        ("100000000000000000000", "numeric(38,18)"),
        ("1e20", "numeric(38,18)"),
        ("0.0000000000000000001", "18 decimal places"),
    ],
)
def test_bad_decimal_rejects_only_its_trade(value: Any, problem: str) -> None:
    raw = sample("trades_ETHUSDT_limit2_real_2021-12-17.json")
    raw[0]["qty"] = value
    rows, rejects = transform_trades(raw, symbol="ETHUSDT")
    assert [r.trade_id for r in rows] == [710243052]
    assert len(rejects) == 1
    error = rejects[0]
    assert isinstance(error, MalformedRecordError)
    assert (error.endpoint, error.symbol, error.field) == ("trades", "ETHUSDT", "qty")
    assert problem in error.problem and error.problem.startswith("record 0:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3866.44000000", "3866.44000000"),
        ("-95.960", "-95.960"),
        ("0", "0"),
        ("+1.5", "1.5"),
        (".5", "0.5"),
        ("1.", "1"),
        ("1e-8", "1E-8"),
        ("99999999999999999999.999999999999999999", "99999999999999999999.999999999999999999"),
        ("1.0000000000000000000000", "1.0000000000000000000000"),  # more places, but all zeros: exact
    ],
)
def test_decimals_that_are_accepted(text: str, expected: str) -> None:
    assert str(parse_decimal(text)) == expected
    assert parse_decimal(text) == Decimal(text)


def test_integer_decimal_is_accepted_exactly() -> None:
    assert parse_decimal(12345678901234567890) == Decimal("12345678901234567890")
    raw = sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")
    raw[0][1] = 3959
    rows, rejects = transform_klines(raw, symbol="ETHUSDT", interval="1d")
    assert rejects == [] and rows[0].open_price == Decimal(3959)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("id", "710243051", "expected an integer"),
        ("id", 7.0, "JSON float"),
        ("id", -5, "out of range"),
        ("time", 1639760356308.0, "JSON float"),
        ("time", "1639760356308", "expected an integer"),
        ("time", -1, "out of range"),
        ("time", 10**16, "out of range"),
        ("isBuyerMaker", "false", "true or false"),
        ("isBuyerMaker", 0, "true or false"),
        ("isBestMatch", "yes", "true or false"),
    ],
)
def test_bad_non_decimal_fields(field: str, value: Any, problem: str) -> None:
    raw = sample("trades_ETHUSDT_limit2_real_2021-12-17.json")
    raw[1][field] = value
    rows, rejects = transform_trades(raw, symbol="ETHUSDT")
    assert [r.trade_id for r in rows] == [710243051]
    assert [e.field for e in rejects] == [field]
    assert problem in rejects[0].problem


def test_missing_field_and_non_object_record() -> None:
    raw = sample("trades_ETHUSDT_limit2_real_2021-12-17.json")
    good = copy.deepcopy(raw[0])
    del raw[0]["quoteQty"]
    raw.insert(1, "not a trade")
    raw.append(good)
    rows, rejects = transform_trades(raw, symbol="ETHUSDT")
    assert [r.trade_id for r in rows] == [710243052, 710243051]
    assert [(e.field, e.problem) for e in rejects] == [
        ("quoteQty", "record 0: missing"),
        ("record", "record 1: expected a JSON object, got a string 'not a trade'"),
    ]


def test_response_of_the_wrong_shape_is_one_reject() -> None:
    for transform in (
        lambda raw: transform_trades(raw, symbol="X"),
        lambda raw: transform_klines(raw, symbol="X", interval="1m"),
    ):
        rows, rejects = transform({"code": -1121, "msg": "Invalid symbol."})
        assert rows == [] and [e.field for e in rejects] == ["response"]
    rows, rejects = transform_ticker_price(["x"], symbol="X", observed_at=SEEN)
    assert rows == [] and [e.field for e in rejects] == ["record"]


@pytest.mark.parametrize(
    ("index", "value", "field"),
    [
        (0, 1639699200000.0, "open_time"),
        (0, None, "open_time"),
        (1, 3959.11, "open"),
        (2, "high", "high"),
        (3, "NaN", "low"),
        (4, "", "close"),
        (5, 1.5, "volume"),
        (6, "1639785599999", "close_time"),
        (7, "1e30", "quote_volume"),
        (8, 470771.0, "trade_count"),
        (8, -1, "trade_count"),
        (9, False, "taker_buy_base_volume"),
        (10, [], "taker_buy_quote_volume"),
    ],
)
def test_bad_kline_element_is_named(index: int, value: Any, field: str) -> None:
    good = sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")[0]
    bad = list(good)
    bad[index] = value
    later = list(good)
    later[0] += 86_400_000
    rows, rejects = transform_klines([good, bad, later], symbol="ETHUSDT", interval="1d")
    assert [r.open_time for r in rows] == [utc(2021, 12, 17), utc(2021, 12, 18)]
    assert [(e.endpoint, e.symbol, e.field) for e in rejects] == [("klines", "ETHUSDT", field)]
    assert rejects[0].problem.startswith(f"1d record 1 element {index}:")


def test_short_or_non_list_kline() -> None:
    good = sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")[0]
    rows, rejects = transform_klines([good[:10], "x", None, {"0": 1}, good], symbol="E", interval="1d")
    assert len(rows) == 1
    assert [(e.field, e.problem.split(":")[0]) for e in rejects] == [
        ("record", "1d record 0"),
        ("record", "1d record 1"),
        ("record", "1d record 2"),
        ("record", "1d record 3"),
    ]
    # The unused 12th element may be absent.
    rows, rejects = transform_klines([good[:11]], symbol="E", interval="1d")
    assert len(rows) == 1 and rejects == []


def test_far_future_kline_time_is_exact_off_the_fast_path() -> None:
    good = list(sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")[0])
    good[0], good[6] = 253_402_214_400_000, 253_402_300_799_999  # 9999-12-31
    rows, rejects = transform_klines([good], symbol="E", interval="1d")
    assert rejects == []
    assert rows[0].close_time == utc(9999, 12, 31, 23, 59, 59, 999000)


def test_depth_bad_level_rejected_alone_and_positions_kept() -> None:
    raw = sample("depth_ETHUSDT_limit5_real_2021-12-17.json")
    raw["bids"][1] = ["3880.69000000", 0.0258]
    raw["asks"][3] = ["3880.85000000"]
    rows, rejects = transform_depth(raw, symbol="ETHUSDT", snapshot_time=SEEN)
    assert [(r.side, r.level) for r in rows] == [
        ("bid", 0),
        ("bid", 2),
        ("bid", 3),
        ("bid", 4),
        ("ask", 0),
        ("ask", 1),
        ("ask", 2),
        ("ask", 4),
    ]
    assert [(e.endpoint, e.field) for e in rejects] == [("depth", "bids.quantity"), ("depth", "asks")]
    assert "bids[1]" in rejects[0].problem and "asks[3]" in rejects[1].problem


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("lastUpdateId"), "lastUpdateId"),
        (lambda d: d.update(lastUpdateId="13304569353"), "lastUpdateId"),
        (lambda d: d.update(bids=None), "bids"),
        (lambda d: d.pop("asks"), "asks"),
    ],
)
def test_depth_without_usable_snapshot_is_rejected_whole(change: Any, field: str) -> None:
    raw = sample("depth_ETHUSDT_limit5_real_2021-12-17.json")
    change(raw)
    rows, rejects = transform_depth(raw, symbol="ETHUSDT", snapshot_time=SEEN)
    assert rows == [] and [e.field for e in rejects] == [field]


def test_ticker_24hr_bad_field_rejects_that_symbol_only() -> None:
    raw = sample("docs_ticker_24hr_full_multi.json")
    other = dict(raw[0], symbol="ETHBTC", volume=8913.3)
    rows, rejects = transform_ticker_24hr([raw[0], other], symbol=None)
    assert [r.symbol for r in rows] == ["BNBBTC"]
    assert [(e.field, e.problem.split(":")[0]) for e in rejects] == [("volume", "record 1")]


# --- times -----------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
@settings(max_examples=500)
def test_from_epoch_ms_is_exact_utc(ms: int) -> None:
    moment = from_epoch_ms(ms)
    assert moment == EPOCH + timedelta(milliseconds=ms)
    assert moment.utcoffset() == timedelta(0)
    assert to_epoch_ms(moment) == ms


@pytest.mark.parametrize("ms", [0, 1, 999, 2**33 * 1000 - 1, 2**33 * 1000, 1_639_785_599_999])
def test_from_epoch_ms_edges(ms: int) -> None:
    assert from_epoch_ms(ms) == EPOCH + timedelta(milliseconds=ms)


# --- the kline fast path agrees with the checked path --------------------------------------------

_places = st.integers(min_value=0, max_value=18)
_decimal_text = st.builds(
    lambda digits, places, negative: (
        ("-" if negative else "")
        + (f"{digits[:-places] or '0'}.{digits[-places:].rjust(places, '0')}" if places else digits)
    ),
    st.text("0123456789", min_size=1, max_size=20),
    _places,
    st.booleans(),
)


@given(
    st.lists(st.one_of(_decimal_text, st.integers(-(10**19), 10**19)), min_size=8, max_size=8),
    st.integers(0, 253_402_300_799_999),
    st.integers(0, 2**63 - 1),
)
@settings(max_examples=300)
def test_kline_fast_path_matches_field_by_field_parse(numbers: list[Any], open_ms: int, count: int) -> None:
    o, h, lo, c, v, q, tb, tq = numbers
    raw = [open_ms, o, h, lo, c, v, open_ms, q, count, tb, tq, "0"]
    rows, rejects = transform_klines([raw], symbol="S", interval="1m")
    try:
        expected = [parse_decimal(x) for x in numbers]
    except Exception:
        assert rows == [] and len(rejects) == 1
        return
    assert rejects == []
    k = rows[0]
    assert type(k) is Kline
    assert [
        k.open_price,
        k.high_price,
        k.low_price,
        k.close_price,
        k.volume,
        k.quote_volume,
        k.taker_buy_base_volume,
        k.taker_buy_quote_volume,
    ] == expected
    assert [str(x) for x in (k.open_price, k.taker_buy_quote_volume)] == [
        str(Decimal(str(numbers[0]))),
        str(Decimal(str(numbers[7]))),
    ]
    assert k.open_time == k.close_time == EPOCH + timedelta(milliseconds=open_ms)
    assert k.trade_count == count
