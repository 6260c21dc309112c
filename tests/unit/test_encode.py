"""consumer.encode gives byte for byte what cassandra-driver's serialisers give, and its bind what the
driver's BoundStatement.bind gives."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.protocol import ColumnMetadata
from cassandra.query import BoundStatement, PreparedStatement
from hypothesis import given
from hypothesis import strategies as st

from consumer.encode import bind, encoder_for, encoders

EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def driver(cql_type: Any, v: Any) -> bytes:
    return cql_type.serialize(v, 5)  # type: ignore[no-any-return]


finite_decimals = st.decimals(allow_nan=False, allow_infinity=False) | st.builds(
    lambda n, e: Decimal(n).scaleb(e), st.integers(-(10**40), 10**40), st.integers(-40, 40)
)
datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@given(finite_decimals)
def test_decimal_matches_the_driver(v: Decimal) -> None:
    assert encoder_for(cqltypes.DecimalType)(v) == driver(cqltypes.DecimalType, v)


@pytest.mark.parametrize("v", ["0", "-0", "-128", "-129", "127", "128", "255", "-0.000", "1E+5", "-1E-30",
                               "12345678901234567890.123456789012345678", "-0.5"])
def test_decimal_edges(v: str) -> None:
    d = Decimal(v)
    assert encoder_for(cqltypes.DecimalType)(d) == driver(cqltypes.DecimalType, d)


def test_decimal_longer_than_pythons_int_string_limit() -> None:
    # The driver's serialiser goes through str -> int and refuses past 4,300 digits; an unconstrained
    # NUMERIC can be longer, and Debezium's precise mode carries it whole.
    d = Decimal("-" + "7" * 5000 + ".25")
    wire = encoder_for(cqltypes.DecimalType)(d)
    assert int.from_bytes(wire[:4], "big", signed=True) == 2
    assert Decimal(int.from_bytes(wire[4:], "big", signed=True)).scaleb(-2, EXACT) == d


@pytest.mark.parametrize("v", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_decimal_is_refused(v: Decimal) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        encoder_for(cqltypes.DecimalType)(v)


@given(datetimes)
def test_timestamp_matches_the_driver_in_milliseconds(v: datetime) -> None:
    # What the mapper binds: already truncated to Cassandra's milliseconds.
    v = v.replace(microsecond=v.microsecond - v.microsecond % 1000)
    assert encoder_for(cqltypes.DateType)(v) == driver(cqltypes.DateType, v)


@given(datetimes)
def test_timestamp_truncates_microseconds_toward_zero(v: datetime) -> None:
    # As the driver does (int() of a float), but exact: its float loses the microseconds of years far
    # from 1970, and the two can then differ by a millisecond.
    aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    micros = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    millis = int(Decimal(micros) / 1000)   # Decimal division is exact here; int() truncates toward zero
    assert encoder_for(cqltypes.DateType)(v) == millis.to_bytes(8, "big", signed=True)


@pytest.mark.parametrize("v", [datetime(1969, 12, 31, 23, 59, 59, 500, tzinfo=UTC),
                               datetime(1969, 12, 31, 23, 59, 59, 999_999),
                               datetime(1970, 1, 1, tzinfo=UTC), datetime(1, 1, 1, 0, 0, 0, 1000),
                               date(2024, 5, 1), 1714521600123])
def test_timestamp_edges_and_other_types(v: Any) -> None:
    assert encoder_for(cqltypes.DateType)(v) == driver(cqltypes.DateType, v)


@given(st.dates())
def test_date_matches_the_driver(v: date) -> None:
    assert encoder_for(cqltypes.SimpleDateType)(v) == driver(cqltypes.SimpleDateType, v)


@given(st.text())
def test_text_matches_the_driver(v: str) -> None:
    for t in (cqltypes.UTF8Type, cqltypes.VarcharType):
        assert encoder_for(t)(v) == driver(t, v)


@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1), st.booleans(),
       st.floats(allow_nan=False))
def test_numbers_match_the_driver(big: int, small: int, flag: bool, x: float) -> None:
    assert encoder_for(cqltypes.LongType)(big) == driver(cqltypes.LongType, big)
    assert encoder_for(cqltypes.Int32Type)(small) == driver(cqltypes.Int32Type, small)
    assert encoder_for(cqltypes.BooleanType)(flag) == driver(cqltypes.BooleanType, flag)
    assert encoder_for(cqltypes.DoubleType)(x) == driver(cqltypes.DoubleType, x)


def test_other_types_use_the_driver() -> None:
    assert encoder_for(cqltypes.ShortType)(7) == driver(cqltypes.ShortType, 7)


COLUMNS = [("symbol", cqltypes.UTF8Type), ("day", cqltypes.SimpleDateType), ("trade_id", cqltypes.LongType),
           ("price", cqltypes.DecimalType), ("trade_time", cqltypes.DateType),
           ("is_buyer_maker", cqltypes.BooleanType), ("[timestamp]", cqltypes.LongType),
           ("[ttl]", cqltypes.Int32Type)]


def prepared(protocol_version: int = 5) -> PreparedStatement:
    meta = [ColumnMetadata("ks", "trades", name, t) for name, t in COLUMNS]
    return PreparedStatement(meta, b"id", [0, 1], "INSERT ...", "ks", protocol_version, [], b"rid")


ROW = ["BTCUSDT", date(2024, 5, 1), 42, Decimal("67000.12000000"),
       datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC), None, 1714521600123456, 0]


def test_bind_equals_the_drivers_bind() -> None:
    stmt = prepared()
    encode = encoders(stmt)
    assert encode is not None
    ours = bind(stmt, encode, ROW)
    theirs = BoundStatement(stmt).bind(ROW)
    assert ours.values == theirs.values
    assert ours.routing_key == theirs.routing_key
    assert ours.raw_values == ROW


def test_bind_names_the_column_of_a_bad_value() -> None:
    stmt = prepared()
    encode = encoders(stmt)
    assert encode is not None
    with pytest.raises(ValueError, match=r"column trade_id \(bigint\): error: .*"):
        bind(stmt, encode, [*ROW[:2], "not a number", *ROW[3:]])
    with pytest.raises(ValueError, match=r"column price \(decimal\): ValueError: non-finite"):
        bind(stmt, encode, [*ROW[:3], Decimal("NaN"), *ROW[4:]])
    with pytest.raises(ValueError, match="7 values for 8 bind markers"):
        bind(stmt, encode, ROW[:7])


def test_older_protocols_are_left_to_the_driver() -> None:
    assert encoders(prepared(protocol_version=4)) is None
