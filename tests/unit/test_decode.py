"""consumer.decode: every Debezium encoding the pipeline can meet, on real and hand-built messages.

Real messages: tests/fixtures/debezium-docs/ (two documentation samples) and tests/fixtures/debezium/
(Debezium 3.6.1 output captured from PostgreSQL 15: see its README). Adding a captured file there adds
it to `test_every_fixture_record_decodes` with nothing else to change.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_secrets import PIPELINE_ENV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from init_db_sql import INIT_DB_SQL, parse_pg

from consumer.decode import (
    UNAVAILABLE_VALUE,
    Change,
    ColumnHint,
    DecodeHints,
    TableHints,
    decode,
)
from consumer.errors import PoisonMessageError
from consumer.mapping import build_mappings, parse_cql
from pipeline.config import load

ROOT = Path(__file__).resolve().parents[2]
SHARED_SAMPLES = ROOT / "tests" / "fixtures" / "debezium-docs"
FIXTURES = ROOT / "tests" / "fixtures" / "debezium"
ENV = PIPELINE_ENV


# --- Building messages ---------------------------------------------------------------------------


def unscaled_b64(d: Decimal, scale: int) -> str:
    """What Debezium's precise mode sends: base64 of the big-endian two's-complement unscaled value."""
    n = int(d.scaleb(scale, context=Context(prec=1000)))  # the default 28 digits would round
    return base64.b64encode(n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)).decode()


def fld(name: str, typ: str, semantic: str | None = None, **params: str) -> dict[str, Any]:
    f: dict[str, Any] = {"type": typ, "optional": True, "field": name}
    if semantic:
        f["name"] = semantic
    if params:
        f["parameters"] = params
    return f


SOURCE_FIELDS = [fld("table", "string"), fld("schema", "string"), fld("lsn", "int64"), fld("ts_ms", "int64")]


def message(
    op: str,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    *,
    fields: list[dict[str, Any]] | None = None,
    table: str = "t",
    lsn: int | None = 1000,
    source: dict[str, Any] | None = None,
) -> bytes:
    """A Debezium value; with `fields` (the row's field schemas) a schemas-enabled envelope."""
    src = {
        "version": "3.6.1.Final",
        "connector": "postgresql",
        "name": "binance",
        "ts_ms": 1714737600000,
        "snapshot": "false",
        "db": "binance",
        "schema": "public",
        "table": table,
        "txId": 7,
        "lsn": lsn,
    }
    src.update(source or {})
    payload = {"before": before, "after": after, "source": src, "op": op, "ts_ms": 1714737600100}
    if fields is None:
        return orjson.dumps(payload)
    row = {"type": "struct", "fields": fields, "optional": True, "name": f"binance.public.{table}.Value"}
    schema = {
        "type": "struct",
        "name": f"binance.public.{table}.Envelope",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {"type": "struct", "fields": SOURCE_FIELDS, "field": "source"},
            {"type": "string", "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
    }
    return orjson.dumps({"schema": schema, "payload": payload})


def dec(
    value: bytes, key: bytes | None = None, hints: DecodeHints | None = None, topic: str = "binance.public.t"
) -> Change:
    change = decode(topic, 0, 42, key, value, hints)
    assert change is not None
    return change


def poison(
    value: bytes | None, key: bytes | None = None, hints: DecodeHints | None = None
) -> PoisonMessageError:
    with pytest.raises(PoisonMessageError) as info:
        decode("binance.public.t", 1, 7, key, value, hints)
    assert (info.value.topic, info.value.partition, info.value.offset) == ("binance.public.t", 1, 7)
    return info.value


def hints(mode: str = "precise", key: tuple[str, ...] = (), **columns: ColumnHint) -> DecodeHints:
    return DecodeHints(tables={"t": TableHints(columns=columns, key=key)}, decimal_mode=mode)  # type: ignore[arg-type]


# --- The shared samples --------------------------------------------------------------------------


def test_sample_schemas_false_purchaseorder() -> None:
    value = (SHARED_SAMPLES / "c_schemas-false_debezium-examples_purchaseorder.json").read_bytes()
    h = DecodeHints(
        tables={
            "purchaseorder": TableHints(
                columns={"orderdate": ColumnHint("timestamp", unit="us")}, key=("id",)
            )
        }
    )
    change = decode("dbserver1.inventory.purchaseorder", 0, 5, None, value, h)
    assert change is not None
    assert (change.op, change.table, change.schema, change.lsn, change.ts_ms, change.tx_id) == (
        "c",
        "purchaseorder",
        "inventory",
        34250896,
        1610716846989,
        608,
    )
    assert change.before is None and not change.snapshot
    assert change.after == {
        "id": 1,
        "customerid": 123,
        "orderdate": datetime(2019, 1, 31, 12, 13, 1, tzinfo=UTC),
    }
    assert change.key == {"id": 1}  # no Kafka key: taken from the row by the hinted primary key


def test_sample_schemas_false_without_hint_keeps_the_integer() -> None:
    value = (SHARED_SAMPLES / "c_schemas-false_debezium-examples_purchaseorder.json").read_bytes()
    change = decode("dbserver1.inventory.purchaseorder", 0, 5, None, value)
    assert change is not None and change.after is not None
    assert change.after["orderdate"] == 1548936781000000
    assert change.key == {}


def test_sample_schemas_true_customers() -> None:
    value = (SHARED_SAMPLES / "c_schemas-true_debezium-docs_customers.json").read_bytes()
    key = (
        b'{"schema": {"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}]}, '
        b'"payload": {"id": 1}}'
    )
    change = decode("PostgreSQL_server.inventory.customers", 2, 9, key, value)
    assert change is not None
    assert (change.topic, change.partition, change.offset) == ("PostgreSQL_server.inventory.customers", 2, 9)
    assert (change.op, change.table, change.lsn, change.ts_ms, change.snapshot) == (
        "c",
        "customers",
        24023128,
        1559033904863,
        True,
    )
    assert change.after == {
        "id": 1,
        "first_name": "Anne",
        "last_name": "Kretchmar",
        "email": "annek@noanswer.org",
    }
    assert change.key == {"id": 1}


# --- Decimals ------------------------------------------------------------------------------------

DECIMALS = [
    Decimal("65000.123456780000000000"),
    Decimal("-0.000000000000000001"),
    Decimal("0"),
    Decimal("99999999999999999999.999999999999999999"),
    Decimal("-99999999999999999999.999999999999999999"),
    Decimal("127"),
    Decimal("128"),
    Decimal("-128"),
    Decimal("-129"),
    Decimal("255.5"),
]


@pytest.mark.parametrize("value", DECIMALS, ids=str)
def test_precise_decimal_with_schema(value: Decimal) -> None:
    f = [
        fld(
            "price",
            "bytes",
            "org.apache.kafka.connect.data.Decimal",
            scale="18",
            **{"connect.decimal.precision": "38"},
        )
    ]
    change = dec(message("c", {"price": unscaled_b64(value, 18)}, fields=f))
    assert change.after == {"price": value}
    assert change.after["price"].as_tuple().exponent == -18  # scale kept, nothing rounded


@pytest.mark.parametrize("value", DECIMALS, ids=str)
def test_precise_decimal_without_schema_uses_the_hinted_scale(value: Decimal) -> None:
    change = dec(
        message("c", {"price": unscaled_b64(value, 18)}), hints=hints(price=ColumnHint("decimal", scale=18))
    )
    assert change.after == {"price": value}


@given(
    st.decimals(
        allow_nan=False,
        allow_infinity=False,
        places=18,
        min_value=Decimal("-1e20") + 1,
        max_value=Decimal("1e20") - 1,
    )
)
def test_precise_decimal_round_trips_exactly(value: Decimal) -> None:
    f = [fld("v", "bytes", "org.apache.kafka.connect.data.Decimal", scale="18")]
    assert dec(message("c", {"v": unscaled_b64(value, 18)}, fields=f)).after == {"v": value}


def test_variable_scale_decimal() -> None:
    f = [fld("n", "struct", "io.debezium.data.VariableScaleDecimal")]
    change = dec(message("c", {"n": {"scale": 6, "value": "B1vNFQ=="}}, fields=f))
    assert change.after == {"n": Decimal("123.456789")}
    # without schemas the struct is recognised by the column's decimal hint
    change = dec(message("c", {"n": {"scale": 20, "value": "/w=="}}), hints=hints(n=ColumnHint("decimal")))
    assert change.after == {"n": Decimal("-1E-20")}



def test_an_unconstrained_numeric_longer_than_python_prints_is_exact() -> None:
    """PostgreSQL's numeric holds up to 131,072 digits; Python refuses int -> str past 4,300 of them."""
    n = -(10**5000 + 7)
    raw = base64.b64encode(n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)).decode()
    f = [fld("n", "struct", "io.debezium.data.VariableScaleDecimal")]
    got = dec(message("c", {"n": {"scale": 3, "value": raw}}, fields=f)).after
    assert got is not None
    assert got["n"].as_tuple().exponent == -3
    assert got["n"].scaleb(3, Context(prec=6000)) == Decimal(n)

def test_string_mode_decimal() -> None:
    f = [fld("price", "string")]
    h = hints("string", price=ColumnHint("decimal", scale=18))
    assert dec(message("c", {"price": "-120.500000000000000000"}, fields=f), hints=h).after == {
        "price": Decimal("-120.5")
    }
    assert dec(message("c", {"price": "802345678.123456789012345678"}), hints=h).after == {
        "price": Decimal("802345678.123456789012345678")
    }


def test_double_mode_decimal_is_the_number_as_printed() -> None:
    h = hints("double", price=ColumnHint("decimal", scale=18))
    change = dec(message("c", {"price": 65000.12, "qty": 1e-18, "n": 3}), hints=h)
    assert change.after is not None
    assert change.after["price"] == Decimal("65000.12")  # not 65000.1199999999953433871269226074...
    assert change.after["qty"] == 1e-18  # unhinted columns stay as they are
    f = [fld("price", "double")]
    assert dec(message("c", {"price": 0.1}, fields=f), hints=h).after == {"price": Decimal("0.1")}


def test_decimal_written_as_a_json_number_is_read_exactly() -> None:
    # JsonConverter decimal.format=NUMERIC writes Decimal fields as JSON numbers: never go through a float.
    f = [fld("v", "bytes", "org.apache.kafka.connect.data.Decimal", scale="18"), fld("d", "double")]
    raw = message("c", {"v": 1, "d": 0.5}, fields=f).replace(b'"v":1', b'"v":12345.678901234567890123')
    change = dec(raw)
    assert change.after == {"v": Decimal("12345.678901234567890123"), "d": 0.5}
    assert type(change.after["d"]) is float
    raw = message("c", {"v": 1}).replace(b'"v":1', b'"v":0.100000000000000000000001')
    assert dec(raw, hints=hints(v=ColumnHint("decimal", scale=18))).after == {
        "v": Decimal("0.100000000000000000000001")
    }


@pytest.mark.parametrize(
    ("value", "hint", "reason"),
    [
        ("not base64!", ColumnHint("decimal", scale=2), "bad_value"),
        ("", ColumnHint("decimal", scale=2), "bad_value"),
        ("AQ==", ColumnHint("decimal"), "no_scale"),
        ([1], ColumnHint("decimal", scale=2), "bad_value"),
        ({"scale": "x", "value": "AQ=="}, ColumnHint("decimal"), "bad_value"),
    ],
)
def test_bad_decimals_are_poison(value: Any, hint: ColumnHint, reason: str) -> None:
    err = poison(message("c", {"v": value}), hints=hints(v=hint))
    assert (err.reason, err.where) == (reason, "value.payload.after.v")


def test_string_mode_rejects_what_is_not_a_decimal() -> None:
    for text in ("NaN", "1_000", " 1", "Infinity", "0x10", ""):
        err = poison(message("c", {"v": text}), hints=hints("string", v=ColumnHint("decimal")))
        assert err.reason == "bad_value", text


def test_decimal_schema_without_scale_is_poison() -> None:
    f = [fld("v", "bytes", "org.apache.kafka.connect.data.Decimal")]
    assert poison(message("c", {"v": "AQ=="}, fields=f)).reason == "bad_envelope"


# --- Times ---------------------------------------------------------------------------------------

T = datetime(2024, 5, 3, 12, 0, 0, 123456, tzinfo=UTC)
EPOCH_US = 1714737600123456


@pytest.mark.parametrize(
    ("semantic", "raw", "expected"),
    [
        ("io.debezium.time.Timestamp", EPOCH_US // 1000, T.replace(microsecond=123000)),
        ("org.apache.kafka.connect.data.Timestamp", EPOCH_US // 1000, T.replace(microsecond=123000)),
        ("io.debezium.time.MicroTimestamp", EPOCH_US, T),
        ("io.debezium.time.NanoTimestamp", EPOCH_US * 1000 + 999, T),
        ("io.debezium.time.Timestamp", -1, datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("io.debezium.time.ZonedTimestamp", "2024-05-03T12:00:00.123456Z", T),
        ("io.debezium.time.ZonedTimestamp", "2024-05-03T14:00:00.123456+02:00", T),
        ("io.debezium.time.ZonedTimestamp", "2024-05-03T12:00:00.123456789Z", T),
        ("io.debezium.time.ZonedTimestamp", "1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("io.debezium.time.Date", 19846, date(2024, 5, 3)),
        ("org.apache.kafka.connect.data.Date", -25567, date(1900, 1, 1)),
        ("io.debezium.time.MicroTime", 45296789012, time(12, 34, 56, 789012)),
        ("io.debezium.time.Time", 45296789, time(12, 34, 56, 789000)),
        ("io.debezium.time.NanoTime", 45296789012345, time(12, 34, 56, 789012)),
        ("io.debezium.time.ZonedTime", "12:34:56.789Z", time(12, 34, 56, 789000, tzinfo=UTC)),
    ],
)
def test_times_with_schema(semantic: str, raw: Any, expected: Any) -> None:
    typ = "string" if isinstance(raw, str) else "int64"
    change = dec(message("c", {"v": raw}, fields=[fld("v", typ, semantic)]))
    assert change.after == {"v": expected}
    if isinstance(expected, datetime):
        assert change.after["v"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("raw", "hint", "expected"),
    [
        ("2024-05-03T12:00:00.123456Z", ColumnHint("timestamp"), T),
        (EPOCH_US // 1000, ColumnHint("timestamp", unit="ms"), T.replace(microsecond=123000)),
        (EPOCH_US, ColumnHint("timestamp", unit="us"), T),
        (EPOCH_US * 1000, ColumnHint("timestamp", unit="ns"), T),
        (19846, ColumnHint("date"), date(2024, 5, 3)),
        ("2024-05-03", ColumnHint("date"), date(2024, 5, 3)),
        (45296789012, ColumnHint("time", unit="us"), time(12, 34, 56, 789012)),
        (45296789, ColumnHint("time", unit="ms"), time(12, 34, 56, 789000)),
        ("AP8=", ColumnHint("blob"), b"\x00\xff"),
    ],
)
def test_times_without_schema_follow_the_hint(raw: Any, hint: ColumnHint, expected: Any) -> None:
    assert dec(message("c", {"v": raw}), hints=hints(v=hint)).after == {"v": expected}


def test_integer_time_without_a_unit_is_poison_never_a_guess() -> None:
    assert poison(message("c", {"v": EPOCH_US}), hints=hints(v=ColumnHint("timestamp"))).reason == "no_unit"
    assert poison(message("c", {"v": 1}), hints=hints(v=ColumnHint("time"))).reason == "no_unit"


@pytest.mark.parametrize(
    ("semantic", "raw"),
    [
        ("io.debezium.time.ZonedTimestamp", "infinity"),
        ("io.debezium.time.ZonedTimestamp", "2024-05-03T12:00:00"),  # no offset
        ("io.debezium.time.ZonedTimestamp", 5),
        ("io.debezium.time.MicroTimestamp", 2**62),  # beyond year 9999
        ("io.debezium.time.MicroTimestamp", "5"),
        ("io.debezium.time.Date", 10**9),
        ("io.debezium.time.MicroTime", 86_400_000_000),  # 24:00:00
        ("io.debezium.time.MicroTimestamp", True),
    ],
)
def test_bad_times_are_poison(semantic: str, raw: Any) -> None:
    typ = "string" if isinstance(raw, str) else "int64"
    err = poison(message("c", {"v": raw}, fields=[fld("v", typ, semantic)]))
    assert (err.reason, err.where) == ("bad_value", "value.payload.after.v")


# --- Plain types and the envelope ----------------------------------------------------------------


def test_plain_types_with_schema() -> None:
    f = [
        fld("i", "int64"),
        fld("s", "string"),
        fld("b", "boolean"),
        fld("f", "double"),
        fld("raw", "bytes"),
        fld("a", "array"),
        fld("j", "string", "io.debezium.data.Json"),
        fld("n", "int16"),
    ]
    row = {"i": 2**62, "s": "x", "b": False, "f": 1.5, "raw": "AP8=", "a": ["x"], "j": '{"a": 1}', "n": None}
    assert dec(message("c", row, fields=f)).after == {**row, "raw": b"\x00\xff"}


@pytest.mark.parametrize(
    ("typ", "raw"),
    [
        ("int64", "1"),
        ("int32", 1.5),
        ("int64", True),
        ("string", 1),
        ("boolean", 0),
        ("bytes", 5),
        ("double", "x"),
        ("struct", []),
    ],
)
def test_a_value_that_contradicts_its_schema_is_poison(typ: str, raw: Any) -> None:
    assert poison(message("c", {"v": raw}, fields=[fld("v", typ)])).reason == "bad_value"


def test_a_column_missing_from_the_schema_is_poison() -> None:
    err = poison(message("c", {"v": 1, "w": 2}, fields=[fld("v", "int64")]))
    assert (err.reason, err.where) == ("bad_envelope", "value.payload.after.w")


def test_key_from_the_kafka_key_with_and_without_schema() -> None:
    zoned = fld("open_time", "string", "io.debezium.time.ZonedTimestamp")
    key = orjson.dumps(
        {
            "schema": {"type": "struct", "fields": [fld("symbol", "string"), zoned]},
            "payload": {"symbol": "BTCUSDT", "open_time": "2024-05-03T12:00:00.000000Z"},
        }
    )
    value = message(
        "c",
        {"symbol": "BTCUSDT", "open_time": "2024-05-03T12:00:00.000000Z"},
        fields=[fld("symbol", "string"), zoned],
    )
    expected = {"symbol": "BTCUSDT", "open_time": datetime(2024, 5, 3, 12, tzinfo=UTC)}
    assert dec(value, key).key == expected
    h = hints(open_time=ColumnHint("timestamp"))
    plain_key = b'{"symbol": "BTCUSDT", "open_time": "2024-05-03T12:00:00.000000Z"}'
    assert (
        dec(message("c", {"symbol": "BTCUSDT", "open_time": "2024-05-03T12:00:00Z"}), plain_key, h).key
        == expected
    )


def test_delete_without_kafka_key_takes_the_key_from_before() -> None:
    change = dec(
        message("d", None, {"symbol": "X", "trade_id": 5, "price": "AA=="}),
        hints=hints(key=("symbol", "trade_id")),
    )
    assert (change.op, change.key, change.after) == ("d", {"symbol": "X", "trade_id": 5}, None)


@pytest.mark.parametrize(
    "snapshot", ["true", "first", "last", "first_in_data_collection", "incremental", True]
)
def test_snapshot_flag(snapshot: Any) -> None:
    assert dec(message("r", {"a": 1}, source={"snapshot": snapshot})).snapshot is True
    assert dec(message("c", {"a": 1}, source={"snapshot": "false"})).snapshot is False


def test_table_falls_back_to_the_topic() -> None:
    change = decode("binance.public.klines", 0, 0, None, orjson.dumps({"op": "c", "after": {"a": 1}}))
    assert change is not None and (change.table, change.lsn, change.schema) == ("klines", None, None)


# --- TOAST ---------------------------------------------------------------------------------------


def test_unchanged_toast_placeholders_are_dropped_in_every_form() -> None:
    placeholder_b64 = base64.b64encode(UNAVAILABLE_VALUE.encode()).decode()
    after = {
        "id": 1,
        "big": UNAVAILABLE_VALUE,
        "bin": placeholder_b64,
        "tags": [UNAVAILABLE_VALUE],
        "ints": list(UNAVAILABLE_VALUE.encode()),
        "n": 3,
        "empty": [],
    }
    change = dec(message("u", after))
    assert change.after == {"id": 1, "n": 3, "empty": []}
    assert change.unavailable == {"big", "bin", "tags", "ints"}
    f = [fld("id", "int32"), fld("big", "string"), fld("bin", "bytes"), fld("n", "int32")]
    change = dec(message("u", {"id": 1, "big": UNAVAILABLE_VALUE, "bin": placeholder_b64, "n": 3}, fields=f))
    assert change.after == {"id": 1, "n": 3} and change.unavailable == {"big", "bin"}


# --- What is not a row change --------------------------------------------------------------------


def test_tombstones_heartbeats_transactions_and_messages_are_none() -> None:
    assert decode("binance.public.t", 0, 1, b'{"id": 1}', None) is None
    assert decode("binance.public.t", 0, 1, None, b"null") is None
    assert decode("binance.public.t", 0, 1, None, b'{"schema": null, "payload": null}') is None
    assert decode("__debezium-heartbeat.binance", 0, 1, b'{"serverName":"binance"}', b'{"ts_ms": 1}') is None
    assert decode("__debezium-heartbeat.binance", 0, 1, None, b"garbage: never even parsed") is None
    assert decode("binance.public.t", 0, 1, None, b'{"ts_ms": 1714737600000}') is None
    begin = (
        b'{"status": "BEGIN", "id": "764:26558624", "event_count": null, "data_collections": null, '
        b'"ts_ms": 1}'
    )
    assert decode("binance.transaction", 0, 1, b'{"id": "764:26558624"}', begin) is None
    end = b'{"status": "END", "id": "571:53195832", "event_count": 2, "data_collections": [], "ts_ms": 1}'
    assert decode("binance.transaction", 0, 2, None, end) is None
    msg = {"op": "m", "ts_ms": 1, "source": {"lsn": 5}, "message": {"prefix": "p", "content": "AQ=="}}
    assert decode("binance.message", 0, 3, None, orjson.dumps(msg)) is None


def test_truncate_is_a_change() -> None:
    change = dec(message("t", None, None, lsn=26565696))
    assert (change.op, change.key, change.before, change.after, change.lsn) == ("t", {}, None, None, 26565696)


# --- Poison --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "where"),
    [
        (b"", "not_json", "value"),
        (b"{not json", "not_json", "value"),
        (b"\xff\xfe", "not_json", "value"),
        (b"[1, 2]", "bad_envelope", "value.payload"),
        (b'{"a": 1}', "bad_envelope", "value.payload.op"),
        (b'{"op": "x", "after": {}}', "bad_op", "value.payload.op"),
        (b'{"op": 5, "after": {}}', "bad_op", "value.payload.op"),
        (b'{"op": "c"}', "bad_envelope", "value.payload.after"),
        (b'{"op": "u", "after": null}', "bad_envelope", "value.payload.after"),
        (b'{"op": "d", "before": null}', "bad_envelope", "value.payload.before"),
        (b'{"op": "c", "after": [1]}', "bad_envelope", "value.payload.after"),
        (b'{"op": "c", "after": {}, "source": 1}', "bad_envelope", "value.payload.source"),
        (b'{"op": "c", "after": {}, "source": {"lsn": -1}}', "bad_envelope", "value.payload.source.lsn"),
        (
            b'{"op": "c", "after": {}, "source": {"lsn": 9223372036854775808}}',
            "bad_envelope",
            "value.payload.source.lsn",
        ),
        (b'{"op": "c", "after": {}, "source": {"lsn": "5"}}', "bad_envelope", "value.payload.source.lsn"),
        (b'{"op": "c", "after": {}, "source": {"table": 5}}', "bad_envelope", "value.payload.source.table"),
        (b'{"schema": 5, "payload": {}}', "bad_envelope", "value.schema"),
        (
            b'{"schema": {"fields": 5}, "payload": {"op": "c", "after": {}}}',
            "bad_envelope",
            "value.schema.fields",
        ),
        (b'{"op": "c", "after": {"a": 1}, "x": 1e999}', "not_json", "value"),
    ],
)
def test_poison_names_reason_and_place(value: bytes, reason: str, where: str) -> None:
    err = poison(value)
    assert (err.reason, err.where) == (reason, where), str(err)
    assert "binance.public.t[1]@7" in str(err)


def test_huge_json_integers_never_become_silent_floats() -> None:
    # orjson reads integers beyond 64 bits as floats: a typed field refuses them, a decimal re-reads exactly
    huge = b"123456789012345678901234567890"
    err = poison(message("c", {"v": 1}, fields=[fld("v", "int64")]).replace(b'"v":1', b'"v":' + huge))
    assert err.reason == "bad_value"
    f = [fld("v", "bytes", "org.apache.kafka.connect.data.Decimal", scale="0")]
    raw = message("c", {"v": 1}, fields=f).replace(b'"v":1', b'"v":' + huge)
    assert dec(raw).after == {"v": Decimal(huge.decode())}


def test_bad_key_is_poison() -> None:
    err = poison(message("c", {"a": 1}), key=b"[1]")
    assert (err.reason, err.where) == ("bad_envelope", "key")
    assert poison(message("c", {"a": 1}), key=b"{").reason == "not_json"


def test_deep_nesting_is_poison_not_a_crash() -> None:
    assert poison(b"[" * 100_000 + b"]" * 100_000).reason == "not_json"


# --- Fuzzing: nothing but PoisonMessageError, ever -----------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([UNAVAILABLE_VALUE, "AQ==", "2024-05-03T12:00:00Z", "c", "u", "d", "r", "t", "m"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "op",
                    "before",
                    "after",
                    "source",
                    "schema",
                    "payload",
                    "fields",
                    "field",
                    "type",
                    "name",
                    "parameters",
                    "scale",
                    "value",
                    "lsn",
                    "table",
                    "a",
                    "v",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)
SEMANTICS = st.sampled_from(
    [
        None,
        "org.apache.kafka.connect.data.Decimal",
        "io.debezium.data.VariableScaleDecimal",
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
        "io.debezium.time.ZonedTimestamp",
        "io.debezium.time.Date",
        "io.debezium.time.MicroTime",
        "io.debezium.time.ZonedTime",
        "org.apache.kafka.connect.data.Timestamp",
        "unknown.Semantic",
    ]
)
TYPES = st.sampled_from(
    [
        "int8",
        "int16",
        "int32",
        "int64",
        "float64",
        "string",
        "boolean",
        "bytes",
        "struct",
        "array",
        "map",
        "nonsense",
    ]
)
FUZZ_HINTS = DecodeHints(
    tables={
        "t": TableHints(
            columns={
                "a": ColumnHint("decimal", scale=2),
                "v": ColumnHint("timestamp", unit="us"),
                "w": ColumnHint("date"),
                "x": ColumnHint("time"),
                "y": ColumnHint("blob"),
                "z": ColumnHint("decimal"),
            },
            key=("a",),
        )
    }
)


def check(key: bytes | None, value: bytes | None, hints: DecodeHints | None = None) -> None:
    try:
        result = decode("binance.public.t", 0, 0, key, value, hints)
    except PoisonMessageError as exc:
        assert exc.reason in PoisonMessageError.REASONS
        return
    assert result is None or isinstance(result, Change)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(FUZZ, max_examples=100)


@FUZZ
@given(st.binary(max_size=200), st.none() | st.binary(max_size=50))
def test_fuzz_arbitrary_bytes(value: bytes, key: bytes | None) -> None:
    check(key, value)
    check(key, value, FUZZ_HINTS)


@FUZZ_SLOW
@given(JSON, JSON)
def test_fuzz_arbitrary_json(value: Any, key: Any) -> None:
    check(json.dumps(key).encode(), json.dumps(value).encode())
    check(None, json.dumps(value).encode(), FUZZ_HINTS)


@FUZZ_SLOW
@given(
    op=st.sampled_from(["c", "u", "d", "r", "t", "m", "x"]),
    row=st.dictionaries(st.sampled_from(["a", "v", "w", "x", "y", "z", "q"]), JSON, max_size=5),
    source=st.dictionaries(
        st.sampled_from(["lsn", "table", "ts_ms", "txId", "snapshot", "schema"]), JSON, max_size=4
    ),
    field_types=st.dictionaries(
        st.sampled_from(["a", "v", "w", "x", "y", "z", "q"]), st.tuples(TYPES, SEMANTICS), max_size=7
    ),
    scale=st.one_of(st.none(), st.sampled_from(["2", "x", "-3", "99999"])),
    with_schema=st.booleans(),
    mode=st.sampled_from(["precise", "string", "double"]),
)
def test_fuzz_envelope_shaped(
    op: str,
    row: dict[str, Any],
    source: dict[str, Any],
    field_types: dict[str, tuple[str, str | None]],
    scale: str | None,
    with_schema: bool,
    mode: str,
) -> None:
    fields = []
    for name, (typ, semantic) in field_types.items():
        f = fld(name, typ, semantic)
        if scale is not None:
            f["parameters"] = {"scale": scale}
        fields.append(f)
    value = message(
        op, row, row if op in "ud" else None, fields=fields if with_schema else None, source=source
    )
    h = DecodeHints(tables=FUZZ_HINTS.tables, decimal_mode=mode)  # type: ignore[arg-type]
    check(json.dumps(row).encode(), value, h)
    check(None, value, None)


# --- Fixture files: captured and hand-built records ----------------------------------------------


def fixture_records() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record under tests/fixtures/debezium: *.jsonl (one record a line) or *.json (one record).

    A record is {"topic", "key", "value"[, "partition", "offset"]}; key and value are either the Kafka
    bytes as text (a JSON string) or the parsed JSON (object, or null for a tombstone / no key).
    """
    for path in sorted(FIXTURES.rglob("*.json*")):
        rel = str(path.relative_to(FIXTURES))
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    yield f"{rel}:{n}", json.loads(line)
        elif path.suffix == ".json":
            yield rel, json.loads(path.read_text())


def as_bytes(part: Any) -> bytes | None:
    if part is None:
        return None
    return part.encode() if isinstance(part, str) else json.dumps(part).encode()


@functools.cache
def pipeline_hints() -> DecodeHints:
    config = load(ROOT / "config" / "pipeline.yaml", ENV)
    return build_mappings(config, parse_cql((ROOT / "infra" / "cassandra-init.cql").read_text())).decode_hints


def variant_hints(name: str) -> DecodeHints:
    """The hints the pipeline would use, with the decimal mode the capture ran with."""
    base = pipeline_hints()
    mode = "double" if "_double" in name else "string" if "_string" in name else "precise"
    return DecodeHints(tables=base.tables, decimal_mode=mode)  # type: ignore[arg-type]


FIXTURE_RECORDS = list(fixture_records())


def test_there_are_fixture_records() -> None:
    assert len(FIXTURE_RECORDS) > 100


@pytest.mark.parametrize(("name", "record"), FIXTURE_RECORDS, ids=[n for n, _ in FIXTURE_RECORDS])
def test_every_fixture_record_decodes(name: str, record: dict[str, Any]) -> None:
    change = decode(
        record["topic"],
        record.get("partition", 0),
        record.get("offset", 0),
        as_bytes(record.get("key")),
        as_bytes(record.get("value")),
        variant_hints(name),
    )
    if (
        record.get("value") is None
        or record["topic"].startswith("__debezium-heartbeat")
        or record["topic"].endswith(".transaction")
    ):
        assert change is None
        return
    assert change is not None
    assert change.lsn is not None and change.ts_ms is not None
    if change.op != "t":
        assert change.key, "every captured table has a primary key"


def captured(variant: str) -> list[Change]:
    path = next(FIXTURES.glob(f"captured_{variant}*.jsonl"))
    h = variant_hints(path.name)
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        change = decode(r["topic"], r["partition"], r["offset"], as_bytes(r["key"]), as_bytes(r["value"]), h)
        if change is not None:
            out.append(change)
    return out


VARIANTS = [
    "schemas-true_precise",
    "schemas-false_precise",
    "schemas-true_string",
    "schemas-false_string",
    "schemas-false_double",
]
PIPELINE_TABLES = {"latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr"}


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_captured_variants_decode_to_the_same_rows(variant: str) -> None:
    """One database history captured five ways (schemas on/off x decimal modes) decodes the same."""

    def rows(v: str) -> list[tuple[str, str, Any, Any, Any]]:
        return [(c.table, c.op, c.key, c.before, c.after) for c in captured(v) if c.table in PIPELINE_TABLES]

    reference, other = rows(VARIANTS[0]), rows(variant)
    assert len(reference) == len(other) > 15
    for ref, got in zip(reference, other, strict=True):
        if "double" not in variant:
            assert ref == got
            continue
        assert ref[:3] == got[:3]
        for ref_row, got_row in zip(ref[3:], got[3:], strict=True):
            assert (ref_row is None) == (got_row is None)
            for col, v in (ref_row or {}).items():
                if isinstance(v, Decimal):  # double mode: Debezium itself rounded to 15-17 digits
                    assert abs(got_row[col] - v) <= abs(v) * Decimal("1e-15"), col
                else:
                    assert got_row[col] == v, col


def test_captured_values_are_exact() -> None:
    changes = captured("schemas-true_precise")
    first = {(c.table, c.op): c for c in reversed(changes)}
    lp = first[("latest_prices", "r")]
    assert lp.after == {
        "symbol": "BTCUSDT",
        "price": Decimal("65000.12345678"),
        "updated_at": datetime(2024, 5, 3, 12, 0, 0, 123456, tzinfo=UTC),
    }
    assert lp.snapshot and lp.key == {"symbol": "BTCUSDT"}
    t24 = first[("ticker_24hr", "r")].after
    assert t24 is not None
    assert t24["quote_volume"] == Decimal("802345678.123456789012345678")
    assert t24["volume"] == Decimal("12345.678901234567890123")
    assert t24["price_change"] == Decimal("-120.5")
    # REPLICA IDENTITY DEFAULT: a delete's before carries the key, and defaults for the rest
    d = next(
        c for c in changes if c.table == "latest_prices" and c.op == "d" and c.key == {"symbol": "ETHUSDT"}
    )
    assert d.before == {
        "symbol": "ETHUSDT",
        "price": Decimal(0),
        "updated_at": datetime(1970, 1, 1, tzinfo=UTC),
    }
    # REPLICA IDENTITY FULL: the whole old row
    u = next(c for c in changes if c.table == "trades" and c.op == "u")
    assert u.before is not None and u.after is not None
    assert u.before["trade_time"] == datetime(2024, 5, 3, 23, 59, 59, 999000, tzinfo=UTC)
    assert u.after["trade_time"] == datetime(2024, 5, 4, 0, 0, 0, 1000, tzinfo=UTC)
    # TOAST: the unchanged text and bytea columns are dropped
    toast = [c for c in changes if c.table == "toasty" and c.op == "u"]
    assert [(c.after, c.unavailable) for c in toast] == [({"id": 2, "n": 3}, {"big", "bin"})]


def test_captured_lsns_order_the_changes() -> None:
    changes = [c for c in captured("schemas-true_precise") if c.table in PIPELINE_TABLES]
    snapshot_lsns = {c.lsn for c in changes if c.op == "r"}
    assert len(snapshot_lsns) == 1  # a snapshot reads everything at one LSN
    streamed = [c for c in changes if c.op != "r"]
    assert min(c.lsn or 0 for c in streamed) > snapshot_lsns.pop()  # streaming starts after it
    # two updates of one row in one transaction: distinct, increasing LSNs
    btc = [c for c in streamed if c.table == "latest_prices" and c.key == {"symbol": "BTCUSDT"}]
    assert len(btc) == 2 and btc[0].tx_id == btc[1].tx_id and (btc[0].lsn or 0) < (btc[1].lsn or 0)
    # a primary-key update: delete of the old key + create of the new, sharing one LSN
    moved = [
        c
        for c in streamed
        if c.table == "latest_prices"
        and c.tx_id == next(x.tx_id for x in streamed if x.key == {"symbol": "BNBUSDC"})
    ]
    assert [(c.op, c.key["symbol"]) for c in moved] == [("d", "BNBUSDT"), ("c", "BNBUSDC")]
    assert moved[0].lsn == moved[1].lsn


def test_captured_type_sample() -> None:
    """Every column type of tests/fixtures/debezium/README.md's typesample table, in three time modes."""
    micro = next(c for c in captured("schemas-true_precise") if c.table == "typesample" and c.op == "r").after
    assert micro == {
        "id": 1,
        "ts3": datetime(2024, 5, 3, 12, 0, 0, 123000, tzinfo=UTC),
        "ts6": T,
        "tstz": datetime(2024, 5, 3, 10, 0, 0, 123456, tzinfo=UTC),
        "d": date(2024, 5, 3),
        "t": time(12, 34, 56, 789012),
        "t3": time(12, 34, 56, 789000),
        "nvar": Decimal("123.456789"),
        "n0": Decimal(42),
        "nneg": Decimal("-1E-18"),
        "f8": 1.5e300,
        "b": b"\x00\xff",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": '{"a": 1}',
        "arr": ["x", "y"],
        "iarr": [1, 2],
    }
    adaptive = next(
        c for c in captured("schemas-true_string") if c.table == "typesample" and c.op == "r"
    ).after
    assert adaptive is not None and adaptive["t3"] == time(12, 34, 56, 789000) and adaptive["ts6"] == T
    updated = next(
        c for c in captured("schemas-true_precise") if c.table == "typesample" and c.op == "u"
    ).after
    assert updated is not None
    assert updated["ts3"] == datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert (updated["d"], updated["nvar"], updated["f8"]) == (date(1900, 1, 1), Decimal("-1E-20"), 0.1)
    truncate = next(c for c in captured("schemas-true_precise") if c.op == "t")
    assert (truncate.table, truncate.key, truncate.before, truncate.after) == ("typesample", {}, None, None)


# --- Keys taken from the row -----------------------------------------------------------------------

def pg_primary_keys() -> dict[str, tuple[str, ...]]:
    """The primary keys infra/init-db.sql declares, as the consumer reads them from PostgreSQL."""
    return {name: table.primary_key for name, table in parse_pg(INIT_DB_SQL.read_text()).items()}


def primary_hints(base: DecodeHints, pks: dict[str, tuple[str, ...]]) -> DecodeHints:
    tables = {
        t: TableHints(columns=h.columns, key=pks[t], key_is_primary=True) for t, h in base.tables.items()
    }
    return DecodeHints(tables=tables, decimal_mode=base.decimal_mode)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("captured_*.jsonl")), ids=lambda p: p.stem)
def test_a_key_taken_from_after_is_the_record_key(path: Path) -> None:
    """Knowing the PostgreSQL primary key, creates, reads and updates take Change.key from `after`
    without parsing the record key: every captured change, in every captured encoding, decodes exactly
    as with the key parsed."""
    pks = pg_primary_keys()
    assert pks["order_book_levels"] == ("symbol", "last_update_id", "side", "level")
    assert pks["latest_prices"] == ("symbol",)
    parsed_hints = variant_hints(path.name)
    known = primary_hints(parsed_hints, pks)
    shortcut = 0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        args = (r["topic"], r["partition"], r["offset"], as_bytes(r["key"]), as_bytes(r["value"]))
        fast, full = decode(*args, known), decode(*args, parsed_hints)
        assert fast == full, (fast, full)
        shortcut += fast is not None and fast.op in ("c", "r", "u") and fast.table in pks
    assert shortcut >= 10


def test_the_record_key_is_not_parsed_when_after_holds_the_primary_key() -> None:
    path = next(FIXTURES.glob("captured_schemas-true_precise*.jsonl"))
    records = [json.loads(x) for x in path.read_text().splitlines()]
    r = next(r for r in records if r["topic"].endswith(".latest_prices")
             and r["value"] and json.loads(r["value"])["payload"]["op"] == "c")
    parsed_hints = variant_hints(path.name)
    known = primary_hints(parsed_hints, pg_primary_keys())
    change = decode(r["topic"], 0, 0, b"not json", as_bytes(r["value"]), known)
    assert change is not None and change.after is not None
    assert change.key == {"symbol": change.after["symbol"]}
    with pytest.raises(PoisonMessageError):   # a guessed key: the record key is read, and is poison
        decode(r["topic"], 0, 0, b"not json", as_bytes(r["value"]), parsed_hints)
