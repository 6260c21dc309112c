"""Parsed Binance JSON -> typed rows of the five PostgreSQL tables (see infra/init-db.sql).

Pure functions, no I/O. Prices and quantities become exact `Decimal`s built from Binance's JSON strings
(a JSON float is refused: it has already lost digits); times become timezone-aware UTC datetimes built
exactly from epoch milliseconds. Each row type's fields are its table's columns, in table order.

Every `transform_*` function returns `(rows, rejects)`: a malformed record (missing field, wrong type,
unparsable or out-of-range number) becomes one `MalformedRecordError` naming the field, and the rest of
the batch still goes through.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, TypeVar

from producer.errors import MalformedRecordError

__all__ = [
    "Kline",
    "LatestPrice",
    "OrderBookLevel",
    "Ticker24hr",
    "Trade",
    "Transformed",
    "from_epoch_ms",
    "parse_decimal",
    "to_epoch_ms",
    "transform_depth",
    "transform_klines",
    "transform_ticker_24hr",
    "transform_ticker_price",
    "transform_trades",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The largest millisecond time a Python datetime can hold (9999-12-31T23:59:59.999Z).
MAX_EPOCH_MS = 253_402_300_799_999
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# numeric(38, 18): at most 20 digits before the point and 18 after it.
NUMERIC_LIMIT = Decimal(10) ** 20
NUMERIC_QUANTUM = Decimal(1).scaleb(-18)
SMALLINT_MAX = 32767

# A plain decimal literal as Binance writes it ("3866.44000000", "-95.960"); an exponent is tolerated.
# Decimal() alone would also take " 1", "1_000", "NaN" and "Infinity".
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
# What Binance sends, and always fits numeric(38,18): checked by one regex, then Decimal().
_PLAIN_DECIMAL = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{0,18})?").fullmatch
# The fast path's test of a kline's eight decimal strings: only these characters, and at most 19 of them
# each. Whatever Decimal() then accepts (it refuses "1.2.3", "-" or "") fits numeric(38,18) exactly: at
# most 19 integer digits, at most 18 after a point. One bytes.translate over the joined strings costs a
# seventh of a regular expression doing the same.
_KLINE_DECIMAL_CHARS = b"-0123456789.\x00"
_KLINE_DECIMALS = operator.itemgetter(1, 2, 3, 4, 5, 7, 9, 10)
_SYMBOL = re.compile(r"[A-Z0-9_.\-]{1,40}")


# --- Row types: one per table, fields in column order ---------------------------------------------

class LatestPrice(NamedTuple):
    symbol: str
    price: Decimal
    updated_at: datetime


class OrderBookLevel(NamedTuple):
    symbol: str
    last_update_id: int
    side: str  # "bid" or "ask"
    level: int  # 0 = best price; the position in Binance's list
    price: Decimal
    quantity: Decimal
    snapshot_time: datetime


class Trade(NamedTuple):
    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    quote_quantity: Decimal
    trade_time: datetime
    is_buyer_maker: bool
    is_best_match: bool | None


class Kline(NamedTuple):
    symbol: str
    interval: str
    open_time: datetime
    close_time: datetime
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    close_price: Decimal
    volume: Decimal
    quote_volume: Decimal
    trade_count: int
    taker_buy_base_volume: Decimal
    taker_buy_quote_volume: Decimal


class Ticker24hr(NamedTuple):
    symbol: str
    price_change: Decimal
    price_change_percent: Decimal
    weighted_avg_price: Decimal
    prev_close_price: Decimal
    last_price: Decimal
    last_quantity: Decimal
    bid_price: Decimal
    bid_quantity: Decimal
    ask_price: Decimal
    ask_quantity: Decimal
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    volume: Decimal
    quote_volume: Decimal
    open_time: datetime
    close_time: datetime
    first_trade_id: int
    last_trade_id: int
    trade_count: int


_new_kline = functools.partial(tuple.__new__, Kline)  # Kline(*values) without the Python-level __new__

R = TypeVar("R")
Transformed = tuple[list[R], list[MalformedRecordError]]


# --- Field parsers: raise _Bad(problem); the record-level code adds endpoint, symbol and field -----

class _Bad(Exception):
    pass


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a JSON float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_decimal(value: Any) -> Decimal:
    """A decimal string or a JSON integer -> an exact Decimal that fits numeric(38,18) unchanged.

    Refuses JSON floats (already rounded), booleans, NaN, infinities, garbage, and values PostgreSQL
    would round or reject (more than 18 decimal places, 20 or more integer digits).
    """
    if type(value) is str and _PLAIN_DECIMAL(value):
        return Decimal(value)  # the common case, known to fit numeric(38,18)
    return _parse_decimal_checked(value)


def _parse_decimal_checked(value: Any) -> Decimal:
    if type(value) is str:
        if not _DECIMAL_TEXT.fullmatch(value):
            raise _Bad(f"expected a decimal number as a string, got {_show(value)}")
        number = Decimal(value)
    elif type(value) is int:
        number = Decimal(value)
    else:
        raise _Bad(f"expected a decimal number as a string, got {_kind(value)} {_show(value)}")
    if not -NUMERIC_LIMIT < number < NUMERIC_LIMIT:
        raise _Bad(f"{value} does not fit numeric(38,18)")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -18:
        try:
            exact = number.quantize(NUMERIC_QUANTUM) == number
        except InvalidOperation:
            exact = False
        if not exact:
            raise _Bad(f"{value} has more than 18 decimal places; numeric(38,18) would round it")
    return number


def _int(value: Any, lo: int = BIGINT_MIN, hi: int = BIGINT_MAX) -> int:
    if type(value) is not int:
        raise _Bad(f"expected an integer, got {_kind(value)} {_show(value)}")
    if not lo <= value <= hi:
        raise _Bad(f"{value} is out of range {lo}..{hi}")
    return value


def from_epoch_ms(ms: int) -> datetime:
    """Epoch milliseconds -> an exact, timezone-aware UTC datetime."""
    if 0 <= ms < _FLOAT_EXACT_MS:
        return _fromtimestamp(ms / 1000, UTC)
    return EPOCH + timedelta(milliseconds=ms)


# Below 2**33 s (year 2242) ms / 1000 is off by less than 0.5 us, and fromtimestamp() rounds to the
# nearest microsecond: the result is exact, and about twice as fast as adding a timedelta.
_FLOAT_EXACT_MS = 2**33 * 1000
_fromtimestamp = datetime.fromtimestamp


def to_epoch_ms(moment: datetime) -> int:
    """A timezone-aware datetime -> epoch milliseconds (truncated)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _time(value: Any) -> datetime:
    return from_epoch_ms(_int(value, 0, MAX_EPOCH_MS))


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Bad(f"expected true or false, got {_kind(value)} {_show(value)}")
    return value


def _check_symbol(value: Any, expected: str | None) -> str:
    if type(value) is not str or not _SYMBOL.fullmatch(value):
        raise _Bad(f"expected a symbol, got {_kind(value)} {_show(value)}")
    if expected is not None and value != expected:
        raise _Bad(f"response is for {value}, asked for {expected}")
    return value


# --- Record-level plumbing -------------------------------------------------------------------------

class _Record:
    """Reads fields of one JSON object, turning a parse failure into MalformedRecordError for it."""

    __slots__ = ("endpoint", "obj", "symbol", "where")

    def __init__(self, endpoint: str, symbol: str | None, obj: Any, where: str) -> None:
        self.endpoint, self.symbol, self.obj, self.where = endpoint, symbol, obj, where
        if not isinstance(obj, dict):
            raise self.error("record", f"expected a JSON object, got {_kind(obj)} {_show(obj)}")

    def error(self, field: str, problem: str) -> MalformedRecordError:
        return MalformedRecordError(
            endpoint=self.endpoint, symbol=self.symbol, field=field, problem=f"{self.where}: {problem}"
        )

    def get(self, field: str, parse: Callable[[Any], R]) -> R:
        try:
            value = self.obj[field]
        except KeyError:
            raise self.error(field, "missing") from None
        try:
            return parse(value)
        except _Bad as exc:
            raise self.error(field, str(exc)) from None

    def optional(self, field: str, parse: Callable[[Any], R]) -> R | None:
        if self.obj.get(field) is None:
            return None
        return self.get(field, parse)


def _items(endpoint: str, symbol: str | None, raw: Any, what: str) -> Sequence[Any]:
    """The list of records of a list-shaped response; a non-list is one reject for the whole response."""
    if not isinstance(raw, list):
        raise MalformedRecordError(
            endpoint=endpoint, symbol=symbol, field="response",
            problem=f"expected a JSON list of {what}, got {_kind(raw)} {_show(raw)}",
        )
    return raw


# --- ticker/price -> latest_prices ------------------------------------------------------------------

def transform_ticker_price(
    raw: Any, *, symbol: str | None, observed_at: datetime
) -> Transformed[LatestPrice]:
    """`GET /api/v3/ticker/price` (one object, or a list of them) -> latest_prices rows.

    Binance gives no time with a price: `updated_at` is `observed_at`, when the producer fetched it.
    With `symbol` set, a record for another symbol is rejected.
    """
    _require_aware(observed_at)
    records = raw if isinstance(raw, list) else [raw]
    rows: list[LatestPrice] = []
    rejects: list[MalformedRecordError] = []
    for i, obj in enumerate(records):
        try:
            rec = _Record("ticker_price", symbol, obj, f"record {i}")
            sym = rec.get("symbol", lambda v: _check_symbol(v, symbol))
            rows.append(LatestPrice(sym, rec.get("price", parse_decimal), observed_at))
        except MalformedRecordError as exc:
            rejects.append(exc)
    return rows, rejects


# --- depth -> order_book_levels ------------------------------------------------------------------

def transform_depth(raw: Any, *, symbol: str, snapshot_time: datetime) -> Transformed[OrderBookLevel]:
    """`GET /api/v3/depth` -> one order_book_levels row per level and side.

    `level` is the level's position in Binance's list (0 = best). The book may hold fewer levels than
    asked for. A malformed level is rejected alone (its position stays unused); a snapshot without a
    usable lastUpdateId, or with a side that is not a list, is rejected whole.
    """
    _require_aware(snapshot_time)
    rows: list[OrderBookLevel] = []
    rejects: list[MalformedRecordError] = []
    try:
        rec = _Record("depth", symbol, raw, "snapshot")
        last_update_id = rec.get("lastUpdateId", lambda v: _int(v, 0))
        sides = [(side, rec.get(key, _list)) for side, key in (("bid", "bids"), ("ask", "asks"))]
    except MalformedRecordError as exc:
        return [], [exc]
    for side, levels in sides:
        key = side + "s"
        if len(levels) > SMALLINT_MAX + 1:
            rejects.append(rec.error(key, f"{len(levels)} levels; at most {SMALLINT_MAX + 1} fit"))
            levels = levels[: SMALLINT_MAX + 1]
        for position, level in enumerate(levels):
            where = f"snapshot {last_update_id} {key}[{position}]"
            if not isinstance(level, list) or len(level) < 2:
                rejects.append(MalformedRecordError(
                    endpoint="depth", symbol=symbol, field=key,
                    problem=f"{where}: expected [price, quantity], got {_kind(level)} {_show(level)}",
                ))
                continue
            try:
                price = _field(level[0], "depth", symbol, f"{key}.price", where)
                quantity = _field(level[1], "depth", symbol, f"{key}.quantity", where)
            except MalformedRecordError as exc:
                rejects.append(exc)
                continue
            rows.append(
                OrderBookLevel(symbol, last_update_id, side, position, price, quantity, snapshot_time)
            )
    return rows, rejects


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"expected a list, got {_kind(value)} {_show(value)}")
    return value


def _field(value: Any, endpoint: str, symbol: str | None, field: str, where: str) -> Decimal:
    try:
        return parse_decimal(value)
    except _Bad as exc:
        raise MalformedRecordError(endpoint=endpoint, symbol=symbol, field=field,
                                   problem=f"{where}: {exc}") from None


# --- trades -> trades ----------------------------------------------------------------------------

def transform_trades(raw: Any, *, symbol: str) -> Transformed[Trade]:
    """`GET /api/v3/trades` -> trades rows (isBestMatch may be absent: NULL)."""
    rows: list[Trade] = []
    rejects: list[MalformedRecordError] = []
    try:
        records = _items("trades", symbol, raw, "trades")
    except MalformedRecordError as exc:
        return [], [exc]
    for i, obj in enumerate(records):
        try:
            rec = _Record("trades", symbol, obj, f"record {i}")
            rows.append(Trade(
                symbol,
                rec.get("id", lambda v: _int(v, 0)),
                rec.get("price", parse_decimal),
                rec.get("qty", parse_decimal),
                rec.get("quoteQty", parse_decimal),
                rec.get("time", _time),
                rec.get("isBuyerMaker", _bool),
                rec.optional("isBestMatch", _bool),
            ))
        except MalformedRecordError as exc:
            rejects.append(exc)
    return rows, rejects


# --- klines -> klines ----------------------------------------------------------------------------

# Binance's kline array, in order; the 12th element is unused.
KLINE_FIELDS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume",
)


def transform_klines(raw: Any, *, symbol: str, interval: str) -> Transformed[Kline]:
    """`GET /api/v3/klines` (a list of 12-element arrays) -> klines rows.

    The hot path of the backfill and of the load benchmark: a record is parsed in one go, and only a
    record that fails is walked again, field by field, to name the culprit.
    """
    rows: list[Kline] = []
    rejects: list[MalformedRecordError] = []
    try:
        records = _items("klines", symbol, raw, "klines")
    except MalformedRecordError as exc:
        return [], [exc]
    append = rows.append
    new_kline, from_ts, decimal, numbers_of = _new_kline, _fromtimestamp, Decimal, _KLINE_DECIMALS
    exact_ms, chars = _FLOAT_EXACT_MS, _KLINE_DECIMAL_CHARS
    for i, k in enumerate(records):
        try:
            o, c, t = k[0], k[6], k[8]
            numbers = numbers_of(k)
            if not (type(k) is list and type(o) is int and type(c) is int and type(t) is int
                    and 0 <= o < exact_ms and 0 <= c < exact_ms and 0 <= t <= BIGINT_MAX
                    and not "\x00".join(numbers).encode().translate(None, chars)
                    and max(map(len, numbers)) < 20):
                raise _Bad
            open_, high, low, close, volume, quote, taker_base, taker_quote = map(decimal, numbers)
            append(new_kline((symbol, interval, from_ts(o / 1000, UTC), from_ts(c / 1000, UTC),
                              open_, high, low, close, volume, quote, t, taker_base, taker_quote)))
        except (_Bad, TypeError, IndexError, KeyError, InvalidOperation):
            # Off the fast path: not a list, too short, an integer decimal, a far-future time, garbage.
            try:
                append(_kline_checked(symbol, interval, i, k))
            except MalformedRecordError as exc:
                rejects.append(exc)
    return rows, rejects


def _kline_checked(symbol: str, interval: str, i: int, k: Any) -> Kline:
    """A kline off the fast path, field by field; MalformedRecordError names its first bad element."""
    where = f"{interval} record {i}"
    if type(k) is not list or len(k) < 11:
        raise MalformedRecordError(
            endpoint="klines", symbol=symbol, field="record",
            problem=f"{where}: expected an array of 12 elements, got {_kind(k)} {_show(k)}",
        )
    values: list[Any] = [symbol, interval]
    for index, field in enumerate(KLINE_FIELDS):
        try:
            if field in ("open_time", "close_time"):
                values.append(_time(k[index]))
            elif field == "trade_count":
                values.append(_int(k[index], 0))
            else:
                values.append(parse_decimal(k[index]))
        except _Bad as exc:
            raise MalformedRecordError(endpoint="klines", symbol=symbol, field=field,
                                       problem=f"{where} element {index}: {exc}") from None
    # Binance's order is open_time, open, high, low, close, volume, close_time, ...; the table's differs.
    symbol_, interval_, open_time, o, h, lo, c, v, close_time, q, n, tb, tq = values
    return Kline(symbol_, interval_, open_time, close_time, o, h, lo, c, v, q, n, tb, tq)


# --- ticker/24hr -> ticker_24hr --------------------------------------------------------------------

_TICKER_24HR_DECIMALS = (
    "priceChange", "priceChangePercent", "weightedAvgPrice", "prevClosePrice", "lastPrice", "lastQty",
    "bidPrice", "bidQty", "askPrice", "askQty", "openPrice", "highPrice", "lowPrice", "volume", "quoteVolume",
)


def transform_ticker_24hr(raw: Any, *, symbol: str | None) -> Transformed[Ticker24hr]:
    """`GET /api/v3/ticker/24hr` (type FULL; one object or a list) -> ticker_24hr rows.

    firstId and lastId are -1 when the symbol had no trade in 24 hours, so they may be negative.
    A MINI response lacks the price-change and order-book fields, and is rejected naming the first.
    """
    records = raw if isinstance(raw, list) else [raw]
    rows: list[Ticker24hr] = []
    rejects: list[MalformedRecordError] = []
    for i, obj in enumerate(records):
        try:
            rec = _Record("ticker_24hr", symbol, obj, f"record {i}")
            sym = rec.get("symbol", lambda v: _check_symbol(v, symbol))
            decimals = [rec.get(name, parse_decimal) for name in _TICKER_24HR_DECIMALS]
            rows.append(Ticker24hr._make([
                sym,
                *decimals,
                rec.get("openTime", _time),
                rec.get("closeTime", _time),
                rec.get("firstId", lambda v: _int(v, -1)),
                rec.get("lastId", lambda v: _int(v, -1)),
                rec.get("count", lambda v: _int(v, 0)),
            ]))
        except MalformedRecordError as exc:
            rejects.append(exc)
    return rows, rejects


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {moment!r}")
