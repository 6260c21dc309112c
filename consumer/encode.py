"""CQL wire encoding of the values the sink binds, for the column types the mappings write most.

Why not cassandra-driver's `BoundStatement.bind`: profiling the consumer (py-spy, `make bench`) put a
third of its one core in it, most of that in two serialisers: `DecimalType.serialize` turns each digit into
a string and packs the varint a byte at a time in Python, and `DateType.serialize` goes through
`utctimetuple()` and `calendar.timegm`; `bind` also builds a `ColDesc` per value for column encryption.
The encoders here give the same bytes (tests/unit/test_encode.py checks them against the driver's
serialisers over generated values) with C-level operations; any other type, or an unexpected Python type
in a known one, goes to the driver's own serialiser, so they can only differ in speed.

`encoders(prepared)` returns one function per bind marker; `bind(prepared, encoders, values)` returns
the BoundStatement, raising ValueError (with the column's name) for a value its column cannot hold.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from cassandra import cqltypes
from cassandra.query import BoundStatement, PreparedStatement

from consumer.decode import EXACT

__all__ = ["Encoder", "bind", "encoders"]

Encoder = Callable[[Any], bytes]

_INT64: Final = struct.Struct(">q").pack
_INT32: Final = struct.Struct(">i").pack
_INT8: Final = struct.Struct(">b").pack
_UINT32: Final = struct.Struct(">I").pack
_DOUBLE: Final = struct.Struct(">d").pack
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DATE_CENTER: Final = 2**31      # CQL date: days since the epoch, offset to an unsigned 32-bit value
_ONE_US: Final = timedelta(microseconds=1)
_V5: Final = 5


def _driver(cql_type: Any) -> Encoder:
    serialize = cql_type.serialize

    def encode(v: Any) -> bytes:
        return serialize(v, _V5)  # type: ignore[no-any-return]

    return encode


def _varint(n: int) -> bytes:
    """Minimal big-endian two's complement, as the driver's varint_pack and Java's BigInteger write it."""
    return n.to_bytes((n if n >= 0 else ~n).bit_length() // 8 + 1, "big", signed=True)


def _decimal(v: Any) -> bytes:
    if type(v) is not Decimal:
        return cqltypes.DecimalType.serialize(v, _V5)  # type: ignore[no-any-return]
    exponent = v.as_tuple().exponent
    if type(exponent) is not int:
        raise ValueError(f"non-finite decimal {v}")
    # scaleb under an unbounded context only moves the exponent: the unscaled value, exactly.
    return _INT32(-exponent) + _varint(int(v.scaleb(-exponent, EXACT)))


def _timestamp(v: Any) -> bytes:
    if type(v) is not datetime:
        return cqltypes.DateType.serialize(v, _V5)  # type: ignore[no-any-return]
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)          # the driver reads a naive datetime as UTC too
    micros = (v - _EPOCH) // _ONE_US
    # Milliseconds truncated toward zero, as the driver's int(seconds * 1e3 + microsecond / 1e3) does.
    return _INT64(micros // 1000 if micros >= 0 else -(-micros // 1000))


def _text(v: Any) -> bytes:
    if type(v) is str:
        return v.encode("utf-8")
    return cqltypes.UTF8Type.serialize(v, _V5)  # type: ignore[no-any-return]


def _date(v: Any) -> bytes:
    if type(v) is date:
        return _UINT32(v.toordinal() - _EPOCH_ORDINAL + _DATE_CENTER)
    return cqltypes.SimpleDateType.serialize(v, _V5)  # type: ignore[no-any-return]


def _bigint(v: Any) -> bytes:
    return _INT64(v)


def _int(v: Any) -> bytes:
    return _INT32(v)


def _boolean(v: Any) -> bytes:
    return _INT8(v)


def _double(v: Any) -> bytes:
    return _DOUBLE(v)


_FAST: Final[dict[type, Encoder]] = {
    cqltypes.DecimalType: _decimal,
    cqltypes.DateType: _timestamp,
    cqltypes.UTF8Type: _text,
    cqltypes.VarcharType: _text,
    cqltypes.SimpleDateType: _date,
    cqltypes.LongType: _bigint,
    cqltypes.Int32Type: _int,
    cqltypes.BooleanType: _boolean,
    cqltypes.DoubleType: _double,
}


def encoder_for(cql_type: Any) -> Encoder:
    """The encoder of one column type: a fast one for the types above, else the driver's serialiser."""
    return _FAST.get(cql_type) or _driver(cql_type)


def encoders(prepared: PreparedStatement) -> tuple[Encoder, ...] | None:
    """One encoder per bind marker of `prepared`; None when the driver must bind it itself (protocol
    below v5, column encryption)."""
    if prepared.column_encryption_policy is not None or prepared.protocol_version < _V5:
        return None
    return tuple(encoder_for(col.type) for col in prepared.column_metadata)


def bind(prepared: PreparedStatement, encode: Sequence[Encoder], values: Sequence[Any]) -> BoundStatement:
    """`prepared` bound to `values` (one per marker; None is null). ValueError names the column of a value
    that its type cannot hold."""
    if len(values) != len(encode):
        raise ValueError(f"{len(values)} values for {len(encode)} bind markers")
    out: list[bytes | None] = []
    append = out.append
    try:
        for fn, v in zip(encode, values, strict=False):   # lengths checked above
            append(None if v is None else fn(v))
    except Exception as exc:   # TypeError, ValueError, OverflowError, struct.error, UnicodeError, ...
        col = prepared.column_metadata[len(out)]
        raise ValueError(f"column {col.name} ({col.type.typename}): {type(exc).__name__}: {exc}") from exc
    bound = BoundStatement(prepared)
    bound.raw_values = values
    bound.values = out
    return bound
