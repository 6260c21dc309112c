"""consumer.decode's schema cache: a cached schema prefix changes how fast a message decodes, never what
it decodes to (or which PoisonMessageError it raises)."""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode import FIXTURE_RECORDS, fld, message, unscaled_b64, variant_hints

from consumer import decode as decode_module
from consumer.decode import (
    UNAVAILABLE_VALUE,
    ColumnHint,
    DecodeHints,
    TableHints,
    clear_schema_cache,
    configure_schema_cache,
    decode,
)
from consumer.errors import PoisonMessageError

Outcome = tuple[Any, ...]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    clear_schema_cache()
    configure_schema_cache()
    yield
    clear_schema_cache()
    configure_schema_cache()


def outcome(call: Callable[[], Any]) -> Outcome:
    """What a decode gives: the Change's repr (tells Decimal('1.0') from Decimal('1.00')), or the error."""
    try:
        return ("ok", repr(call()))
    except PoisonMessageError as exc:
        return ("poison", exc.reason, exc.where, exc.detail, str(exc))


def uncached(*args: Any) -> Outcome:
    configure_schema_cache(0)
    try:
        return outcome(lambda: decode(*args))
    finally:
        configure_schema_cache()


def cached(*args: Any) -> Outcome:
    return outcome(lambda: decode(*args))


def is_hit(data: bytes | None) -> bool:
    return data is not None and decode_module._cached_split(data) is not None


def compact(part: Any) -> bytes | None:
    """The bytes JsonConverter writes: compact, `schema` then `payload`, UTF-8."""
    if part is None:
        return None
    if isinstance(part, str):
        return part.encode()
    return json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode()


def spaced(part: Any) -> bytes | None:
    if part is None or isinstance(part, str):
        return compact(part)
    return json.dumps(part).encode()


# --- Every captured record -----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "record"), FIXTURE_RECORDS, ids=[n for n, _ in FIXTURE_RECORDS])
@pytest.mark.parametrize("encode", [compact, spaced], ids=["compact", "spaced"])
def test_cache_hit_decodes_every_fixture_exactly_as_uncached(
    name: str, record: dict[str, Any], encode: Callable[[Any], bytes | None]
) -> None:
    args = (
        record["topic"],
        record.get("partition", 0),
        record.get("offset", 0),
        encode(record.get("key")),
        encode(record.get("value")),
        variant_hints(name),
    )
    want = uncached(*args)
    assert cached(*args) == want      # a miss: full parse, the schema remembered
    assert cached(*args) == want      # a hit: the payload alone parsed
    value = args[4]
    if (
        encode is compact
        and value is not None
        and value.startswith(b'{"schema":{')
        and not record["topic"].startswith("__debezium-heartbeat")
    ):
        assert is_hit(value), "a JsonConverter value with a schema is served from the cache"
        key = args[3]
        transaction = record["topic"].endswith(".transaction")
        if key is not None and key.startswith(b'{"schema":{') and not transaction:
            assert is_hit(key)


def test_captured_schemas_split_where_the_payload_starts() -> None:
    """On the real captured bytes the cached prefix is exactly the schema (verified on every remember)."""
    n = 0
    for _, record in FIXTURE_RECORDS:
        for part in (record.get("key"), record.get("value")):
            data = compact(part)
            if data is None or not data.startswith(b'{"schema":{'):
                continue
            at = data.find(b',"payload":')
            doc = orjson.loads(data)
            assert orjson.loads(data[len(b'{"schema":') : at]) == doc["schema"]
            assert orjson.loads(data[at + len(b',"payload":') : -1]) == doc["payload"]
            n += 1
    assert n > 100


def test_cache_is_bounded() -> None:
    values = [message("c", {f"c{i}": 1}, fields=[fld(f"c{i}", "int32")], table=f"t{i}") for i in range(10)]
    wants = [uncached("binance.public.t", 0, i, None, v) for i, v in enumerate(values)]
    configure_schema_cache(3)
    for _ in range(2):
        for i, value in enumerate(values):
            assert cached("binance.public.t", 0, i, None, value) == wants[i]
    assert decode_module.schema_cache_size() == 3
    assert sum(len(v) for v in decode_module._index.values()) == 3


# --- Schema changes ------------------------------------------------------------------------------

def test_new_column_between_messages_is_picked_up() -> None:
    old = [fld("id", "int64"), fld("name", "string")]
    new = [*old, fld("price", "bytes", "org.apache.kafka.connect.data.Decimal", scale="2")]
    v1 = message("c", {"id": 1, "name": "a"}, fields=old)
    v2 = message("u", {"id": 1, "name": "a", "price": unscaled_b64(Decimal("1.50"), 2)}, fields=new)
    for v in (v1, v1, v2, v2, v1):
        c = decode("binance.public.t", 0, 0, None, v)
        assert c is not None
        assert is_hit(v)
    c2 = decode("binance.public.t", 0, 0, None, v2)
    assert c2 is not None and c2.after == {"id": 1, "name": "a", "price": Decimal("1.50")}
    # the new column under the old schema is still an error, cached or not
    bad = message("u", {"id": 1, "name": "a", "price": "AJY="}, fields=old)
    assert cached("binance.public.t", 0, 0, None, bad) == uncached("binance.public.t", 0, 0, None, bad)
    assert cached("binance.public.t", 0, 0, None, bad)[:3] == (
        "poison", "bad_envelope", "value.payload.after.price"
    )


def test_same_length_schema_change_is_not_confused() -> None:
    """Scale 2 -> 3: the prefixes have the same length and the same last bytes; values must differ."""
    def value(scale: str) -> bytes:
        fields = [
            fld("price", "bytes", "org.apache.kafka.connect.data.Decimal", scale=scale),
            fld("padding_column_so_the_tail_is_equal", "string"),
        ]
        return message("c", {"price": "AJY="}, fields=fields)   # unscaled 150

    v2, v3 = value("2"), value("3")
    assert len(v2) == len(v3) and v2 != v3
    got = []
    for v in (v2, v3, v2, v3):
        c = decode("binance.public.t", 0, 0, None, v)
        assert c is not None and c.after is not None
        got.append(c.after["price"])
    assert got == [Decimal("1.50"), Decimal("0.150"), Decimal("1.50"), Decimal("0.150")]
    assert is_hit(v2) and is_hit(v3)


def test_column_named_payload_still_hits() -> None:
    fields = [fld("id", "int64"), fld("payload", "struct")]
    fields[1]["fields"] = [fld("payload", "string")]
    v = message("c", {"id": 1, "payload": {"payload": "x"}}, fields=fields)
    assert b'"payload":{"payload":' in v
    want = uncached("binance.public.t", 0, 0, None, v)
    assert cached("binance.public.t", 0, 0, None, v) == want == cached("binance.public.t", 0, 0, None, v)
    assert is_hit(v)


def test_payload_key_inside_schema_is_never_cached_but_decodes() -> None:
    fields = [fld("id", "int64", "x.Enum", a="0", payload="1")]   # parameters {"a":"0","payload":"1"}
    v = message("c", {"id": 1}, fields=fields)
    assert v.find(b',"payload":') < v.rfind(b',"payload":')
    want = uncached("binance.public.t", 0, 0, None, v)
    assert want[0] == "ok"
    assert cached("binance.public.t", 0, 0, None, v) == want == cached("binance.public.t", 0, 0, None, v)


# --- Malformed messages behind a cached prefix ---------------------------------------------------

GOOD = message("c", {"id": 1, "name": "a"}, fields=[fld("id", "int64"), fld("name", "string")])
PREFIX = GOOD[: GOOD.find(b',"payload":')]
PAYLOAD = GOOD[GOOD.find(b',"payload":') + len(b',"payload":') : -1]

MALFORMED = [
    PREFIX,
    PREFIX + b',"payload":',
    PREFIX + b',"payload":}',
    PREFIX + b',"payload":' + PAYLOAD,                     # no closing brace
    PREFIX + b',"payload":' + PAYLOAD[:-5] + b"}",        # truncated
    PREFIX + b',"payload":' + PAYLOAD + b"}}",
    PREFIX + b',"payload":' + PAYLOAD + b',"x":1}',        # a third key: the whole is a (bad) payload
    PREFIX + b',"payload":NaN}',
    PREFIX + b',"payload":[1,2]}',
    PREFIX + b',"payload":"c"}',
    PREFIX + b',"payload":{}}',
    PREFIX + b',"payload":{"op":"x"}}',
    PREFIX + b',"payload":{"op":"c","after":null}}',
    PREFIX + b',"payload":{"op":"c","after":{"id":"1"}}}',
    PREFIX + b',"payload":{"op":"c","after":{"id":1.5}}}',
    PREFIX + b',"payload":{"op":"c","after":[]}}',
    PREFIX + b',"payload":{"op":"c","after":{"id":1},"source":{"lsn":-1}}}',
    PREFIX + b',"payload":' + PAYLOAD.replace(b'"name":"a"', b'"name":"\xff"') + b"}",   # not UTF-8
    PREFIX + b',"payload":' + b"[" * 2000 + b"]" * 2000 + b"}",
    PREFIX + b',"payload":{"op":"c","after":{"id":1,"name":"a"}}}\x00',
]
# valid JSON, not what JsonConverter writes: whatever the full parse makes of it, the cache must agree
ODD = [
    PREFIX + b',"payload":' + PAYLOAD + b',"payload":null}',   # duplicate key: the last one wins
    PREFIX + b',"payload":' + PAYLOAD + b',"schema":null}',
    PREFIX + b',"payload":' + PAYLOAD + b"}\n",
    PREFIX + b' ,"payload":' + PAYLOAD + b"}",
    PREFIX + b',"payload": ' + PAYLOAD + b" }",
    PREFIX + b',"payload":null}',
]


@pytest.mark.parametrize(
    ("value", "poison"),
    [(v, True) for v in MALFORMED] + [(v, False) for v in ODD],
    ids=[f"malformed{i}" for i in range(len(MALFORMED))] + [f"odd{i}" for i in range(len(ODD))],
)
def test_malformed_value_with_cached_prefix_is_poison(value: bytes, poison: bool) -> None:
    assert cached("binance.public.t", 0, 0, None, GOOD)[0] == "ok"
    assert is_hit(GOOD)
    want = uncached("binance.public.t", 3, 9, None, value)
    got = cached("binance.public.t", 3, 9, None, value)
    assert got == want
    assert cached("binance.public.t", 3, 9, None, value) == want
    if poison:
        assert got[0] == "poison"


def test_malformed_key_with_cached_prefix_is_poison() -> None:
    key = b'{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}]},' \
          b'"payload":{"id":1}}'
    assert cached("binance.public.t", 0, 0, key, GOOD)[0] == "ok"
    assert is_hit(key)
    for bad in (key[:-1], key[:-2] + b"}", key.replace(b'{"id":1}', b'{"id":"1"}'), key[:-1] + b"}}"):
        want = uncached("binance.public.t", 0, 0, bad, GOOD)
        assert want[0] == "poison"
        assert cached("binance.public.t", 0, 0, bad, GOOD) == want
    odd = key[:-1] + b',"x":1}'   # three keys: not an envelope, the whole is the key row
    assert cached("binance.public.t", 0, 0, odd, GOOD) == uncached("binance.public.t", 0, 0, odd, GOOD)


# --- Hypothesis: payloads under one cached schema -----------------------------------------------

TYPED_FIELDS = [
    fld("i", "int64"),
    fld("s", "string"),
    fld("b", "boolean"),
    fld("f", "double"),
    fld("raw", "bytes"),
    fld("d", "bytes", "org.apache.kafka.connect.data.Decimal", scale="4"),
    fld("dbad", "bytes", "org.apache.kafka.connect.data.Decimal", scale="x"),
    fld("vd", "struct", "io.debezium.data.VariableScaleDecimal"),
    fld("ts", "int64", "io.debezium.time.MicroTimestamp"),
    fld("tms", "int64", "io.debezium.time.Timestamp"),
    fld("zts", "string", "io.debezium.time.ZonedTimestamp"),
    fld("day", "int32", "io.debezium.time.Date"),
    fld("tod", "int64", "io.debezium.time.MicroTime"),
    fld("js", "string", "io.debezium.data.Json"),
    fld("arr", "array"),
    fld("hinted", "string"),
]
COLUMNS = [f["field"] for f in TYPED_FIELDS]
HINTS = [
    None,
    DecodeHints(tables={"t": TableHints(columns={
        "hinted": ColumnHint("decimal"), "s": ColumnHint("timestamp"),
        "i": ColumnHint("timestamp", unit="ms"),
        "f": ColumnHint("decimal"), "js": ColumnHint("blob"), "raw": ColumnHint("raw"),
    })}),
]

ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
B64 = st.binary(min_size=0, max_size=20).map(lambda b: base64.b64encode(b).decode())
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "i": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "s": st.text(max_size=20) | st.sampled_from(["2024-05-03T12:00:00Z", "1.5", "nope"]),
    "b": st.booleans(),
    "f": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6),
    "raw": B64,
    "d": B64 | st.integers(-(10**30), 10**30),
    "dbad": B64,
    "vd": st.fixed_dictionaries({"scale": st.integers(-5, 30), "value": B64}),
    "ts": st.integers(-(2**62), 2**62),
    "tms": st.integers(-(2**50), 2**50),
    "zts": st.sampled_from(["2024-05-03T12:00:00.123456Z", "2024-05-03T12:00:00+02:00", "x", "2024-05-03"]),
    "day": st.integers(-(10**6), 10**6),
    "tod": st.integers(-1, 86_400_000_001),
    "js": st.text(max_size=10),
    "arr": st.lists(st.integers(), max_size=3),
    "hinted": st.sampled_from(["1.25", "-0", "1e3", "abc"]) | st.text(max_size=5),
}
VALUE_OR_ODD = {   # mostly well-typed values, so that whole rows decode; sometimes anything at all
    c: st.one_of(*[s] * 12, st.none(), st.just(UNAVAILABLE_VALUE), ANY_JSON) for c, s in VALUES.items()
}
VALUE_OR_ODD["dbad"] = st.one_of(*[st.none()] * 8, B64)   # any value is an error: seldom
ROWS = st.fixed_dictionaries({}, optional={c: VALUE_OR_ODD[c] for c in COLUMNS}) | st.none()
SOURCE = st.fixed_dictionaries(
    {"table": st.just("t")},
    optional={
        "lsn": st.integers(-1, 2**63), "ts_ms": st.integers(-(2**40), 2**40), "txId": st.integers(0, 9),
        "snapshot": st.sampled_from(["true", "false", "last", ""]), "schema": st.just("public"),
    },
)
CHANGES = st.fixed_dictionaries(
    {"op": st.sampled_from(["c", "u", "d", "r"]), "before": ROWS, "after": ROWS, "source": SOURCE},
    optional={"ts_ms": st.integers(0, 2**41)},
)
OTHERS = st.fixed_dictionaries(
    {"op": st.sampled_from(["t", "m", "x"])},
    optional={"before": ROWS, "after": ROWS, "source": SOURCE, "ts_ms": st.integers(0, 2**41)},
)


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """Mostly change events (rows of well-typed values, a few odd ones), sometimes anything."""
    pick = draw(st.integers(0, 9))
    return draw(CHANGES if pick < 7 else OTHERS if pick < 9 else ANY_JSON)

SCHEMA_VALUE = orjson.loads(message("c", {}, fields=TYPED_FIELDS))["schema"]
SCHEMA_PREFIX = b'{"schema":' + orjson.dumps(SCHEMA_VALUE)
KEY_PREFIX = b'{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"i"},' \
             b'{"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"4"},' \
             b'"field":"d"}]}'


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()   # also integers beyond 64 bits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=payloads(),
    key=st.none() | st.fixed_dictionaries({}, optional={"i": VALUE_OR_ODD["i"], "d": VALUE_OR_ODD["d"]}),
    hints=st.sampled_from(HINTS),
)
def test_generated_payloads_under_a_cached_schema_decode_as_uncached(
    payload: Any, key: dict[str, Any] | None, hints: DecodeHints | None
) -> None:
    value = SCHEMA_PREFIX + b',"payload":' + dumps(payload) + b"}"
    key_bytes = KEY_PREFIX + b',"payload":' + dumps(key) + b"}" if key is not None else None
    args = ("binance.public.t", 1, 2, key_bytes, value, hints)
    want = uncached(*args)
    # prime the cache with a well-formed message of the same schemas, then decode through the hit path
    decode("binance.public.t", 0, 0, KEY_PREFIX + b',"payload":{"i":1}}',
           SCHEMA_PREFIX + b',"payload":{"op":"c","after":{"i":1}}}')
    assert is_hit(value)
    if key_bytes is not None:
        assert is_hit(key_bytes)
    assert cached(*args) == want


def test_generated_payloads_are_mostly_changes() -> None:
    """The property test above is only as good as its inputs: they must decode to real changes often,
    not only to errors."""
    outcomes: collections.Counter[str] = collections.Counter()

    # derandomize: the same 200 inputs every run, so this check of the generator cannot flake
    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(payload=payloads(), hints=st.sampled_from(HINTS))
    def collect(payload: Any, hints: DecodeHints | None) -> None:
        value = SCHEMA_PREFIX + b',"payload":' + dumps(payload) + b"}"
        want = uncached("binance.public.t", 1, 2, None, value, hints)
        outcomes["poison" if want[0] == "poison" else "none" if want[1] == "None" else "change"] += 1

    collect()
    assert sum(outcomes.values()) >= 100, outcomes
    assert outcomes["change"] >= 0.15 * sum(outcomes.values()), outcomes
