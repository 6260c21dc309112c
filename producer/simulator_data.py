"""The simulator's market: prices, trades, klines, depth and 24 h statistics as pure functions of time.

Nothing is stored. Every figure follows from (seed, symbol, time in ms), so a backfill over years costs
no memory, two simulators with one seed agree, and the same question always gets the same answer.

The model, per symbol:
- log-price is a seeded random walk: knots every 4096 s (a walk with a weak pull back to the starting
  price, so years of it stay plausible), refined down to 1 s by a Brownian bridge (each midpoint is the
  mean of its ends plus seeded noise), so the price at any second costs 12 hashes, not a walk from 2017;
- trade number i happens in the i-th slot of `trade_every_ms` after ORIGIN_MS, at a seeded offset within
  the slot; its price is the walk at that moment rounded to the tick. Ids therefore only grow with time;
- trade quantities are a sum of sines of the id, so the volume of any id range has a closed form: kline
  and 24 h volumes equal the sum of the trades' quantities (to rounding) without visiting each trade;
- a kline's open/close are its first/last trade prices; high/low come from those and the walk at the
  candle's quarters; quote and taker-buy volumes are model figures;
- depth is built around the last trade price from seeded gaps and sizes; lastUpdateId grows every 10 ms.

Stdlib only.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

__all__ = [
    "DEFAULT_SYMBOLS",
    "INTERVALS",
    "ORIGIN_MS",
    "Market",
    "SymbolSpec",
    "kline_open_time",
    "next_kline_open",
]

E8 = 100_000_000  # prices and quantities are integers of 1e-8 internally, formatted with 8 decimals
ORIGIN_MS = 1_502_928_000_000  # 2017-08-17 00:00 UTC: the first trade of every symbol; nothing before
ANCHOR_S = 1_704_067_200  # 2024-01-01 00:00 UTC: the walk starts from the symbol's base price here
SEGMENT_S = 4096  # seconds between random-walk knots; 2**12 so the bridge halves down to 1 s exactly
DAY_MS = 86_400_000
DEPTH_UPDATE_MS = 10

_MASK = (1 << 64) - 1
# Namespaces for the hash, so that no two uses of it ever share an input.
_KNOT, _BRIDGE, _JITTER, _MAKER, _DEPTH, _SHARE, _SPEC, _PHASE = range(1, 9)


@dataclass(frozen=True)
class SymbolSpec:
    name: str
    base_price: float  # price at ANCHOR_S
    tick_e8: int  # price step, in 1e-8
    trade_every_ms: int  # one trade per slot; divides 1000 so every second has trades
    mean_qty: float
    daily_volatility: float = 0.03


DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
_KNOWN_SPECS = {
    spec.name: spec
    for spec in (
        SymbolSpec("BTCUSDT", 42_000.0, 1_000_000, 100, 0.02),
        SymbolSpec("ETHUSDT", 2_300.0, 1_000_000, 200, 0.3),
        SymbolSpec("BNBUSDT", 310.0, 1_000_000, 250, 1.5),
        SymbolSpec("SOLUSDT", 100.0, 1_000_000, 250, 5.0),
        SymbolSpec("XRPUSDT", 0.62, 10_000, 500, 800.0, 0.04),
    )
}

# Kline intervals of a fixed length; 1w opens on Mondays, 1M on the first of the month (UTC).
_FIXED_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": DAY_MS, "3d": 3 * DAY_MS, "1w": 7 * DAY_MS,
}
INTERVALS = (*_FIXED_MS, "1M")
_MONDAY_OFFSET_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; 1970-01-05 a Monday


# --- hashing: the only source of randomness ------------------------------------------------------

def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _hash(key: int, *parts: int) -> int:
    h = key
    for part in parts:
        h = _mix(h ^ (part & _MASK))
    return h


def _uniform(h: int) -> float:
    """[0, 1) from a hash."""
    return (h >> 11) * (1.0 / (1 << 53))


def _gauss(h: int) -> float:
    """A standard normal from a hash (Box-Muller on its two 32-bit halves)."""
    u1 = ((h >> 32) + 1) / 4_294_967_296.0  # (0, 1]: log() never sees 0
    u2 = (h & 0xFFFFFFFF) / 4_294_967_296.0
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _name_hash(name: str) -> int:
    # Python's hash() of a str changes per process; this does not.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def spec_for(symbol: str, seed: int) -> SymbolSpec:
    """The known symbols' specs; any other symbol gets a seeded price between 0.1 and 10 000."""
    if symbol in _KNOWN_SPECS:
        return _KNOWN_SPECS[symbol]
    h = _hash(seed, _SPEC, _name_hash(symbol))
    price = 10 ** (-1 + 5 * _uniform(h))
    tick_e8 = max(1, 10 ** (math.floor(math.log10(price)) - 5 + 8))
    return SymbolSpec(symbol, price, tick_e8, 500, round(1_000.0 / price, 4) or 0.0001)


# --- formatting ----------------------------------------------------------------------------------

def fmt8(value_e8: int) -> str:
    """1e-8 units as Binance writes them: '3866.44000000', '-0.50000000'."""
    sign = "-" if value_e8 < 0 else ""
    whole, frac = divmod(abs(value_e8), E8)
    return f"{sign}{whole}.{frac:08d}"


def _e8(value: float) -> int:
    return round(value * E8)


# --- kline intervals -----------------------------------------------------------------------------

def kline_open_time(t_ms: int, interval: str) -> int:
    """Open time of the `interval` candle holding `t_ms`."""
    if interval == "1M":
        moment = datetime.fromtimestamp(t_ms // 1000, UTC)
        return calendar.timegm((moment.year, moment.month, 1, 0, 0, 0)) * 1000
    length = _FIXED_MS[interval]
    offset = _MONDAY_OFFSET_MS if interval == "1w" else 0
    return (t_ms - offset) // length * length + offset


def next_kline_open(open_ms: int, interval: str) -> int:
    """Open time of the candle after the one opening at `open_ms` (its close time is this minus 1)."""
    if interval == "1M":
        moment = datetime.fromtimestamp(open_ms // 1000, UTC)
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
    return open_ms + _FIXED_MS[interval]


# --- one symbol's price path and trades ----------------------------------------------------------

class _Walk:
    def __init__(self, spec: SymbolSpec, seed: int) -> None:
        self.spec = spec
        self.key = _hash(seed, _name_hash(spec.name))
        # One pre-mixed key per use, so the hot paths below hash just once per value.
        self._knot_key, self._bridge_key, self._jitter_key, self._maker_key = (
            _hash(self.key, ns) for ns in (_KNOT, _BRIDGE, _JITTER, _MAKER)
        )
        per_second = spec.daily_volatility / math.sqrt(86_400)
        self._sigma_s = per_second
        self._sigma_knot = per_second * math.sqrt(SEGMENT_S)
        self._log_base = math.log(spec.base_price)
        # Pull back toward the base price with a half-life of ~90 days, so prices stay plausible.
        self._pull = math.log(2) / (90 * 86_400 / SEGMENT_S)
        self._forward = [self._log_base]  # knots 0, 1, 2, ...
        self._backward = [self._log_base]  # knots 0, -1, -2, ...
        self._knots_lock = threading.Lock()
        self._nodes: dict[int, float] = {}  # bridge midpoints already drawn
        # A bridge midpoint over a span of s seconds deviates from the mean of its ends by sigma*sqrt(s)/2.
        self._spreads = {1 << n: per_second * math.sqrt(1 << n) / 2 for n in range(13)}
        self.log_price_at = lru_cache(maxsize=1 << 16)(self._log_price_at)
        # Quantity = mean * (1 + sum A sin(w i + phase)); sum A < 1 keeps it positive.
        self._waves = [
            (amp, freq, 2 * math.pi * _uniform(_hash(self.key, _PHASE, n)))
            for n, (amp, freq) in enumerate(((0.5, 0.7236067977), (0.3, 2.3999632297), (0.15, 0.0137)))
        ]

    # The walk's knots, computed on first use and kept (about 70 000 floats back to 2017).
    def _knot(self, k: int) -> float:
        side, index = (self._forward, k) if k >= 0 else (self._backward, -k)
        if index < len(side):
            return side[index]
        with self._knots_lock:
            step = 1 if k >= 0 else -1
            while len(side) <= index:
                prev = side[-1]
                n = len(side) * step
                noise = self._sigma_knot * _gauss(_mix(self._knot_key ^ (n & _MASK)))
                side.append(prev + noise - self._pull * (prev - self._log_base))
            return side[index]

    def _log_price_at(self, second: int) -> float:
        k, offset = divmod(second - ANCHOR_S, SEGMENT_S)
        lo, hi = 0, SEGMENT_S
        v_lo, v_hi = self._knot(k), self._knot(k + 1)
        nodes, spreads = self._nodes, self._spreads
        if len(nodes) > 1_000_000:  # a bound on memory; the values come back the same when recomputed
            nodes.clear()
        while offset != lo:
            mid = (lo + hi) // 2
            node = k * SEGMENT_S + mid  # every second is the midpoint of exactly one bridge step
            v_mid = nodes.get(node)
            if v_mid is None:
                v_mid = (v_lo + v_hi) / 2 + spreads[hi - lo] * _gauss(_mix(self._bridge_key ^ (node & _MASK)))
                nodes[node] = v_mid
            if offset < mid:
                hi, v_hi = mid, v_mid
            else:
                lo, v_lo = mid, v_mid
        return v_lo

    def price_e8(self, t_ms: int) -> int:
        """The walk at `t_ms` (straight line between whole seconds), rounded to the tick."""
        second, frac = divmod(t_ms, 1000)
        log_price = self.log_price_at(second)
        if frac:
            log_price += (self.log_price_at(second + 1) - log_price) * frac / 1000
        tick = self.spec.tick_e8
        return max(1, round(math.exp(log_price) * E8 / tick)) * tick

    # Trades -----------------------------------------------------------------------------------

    def trade_time(self, i: int) -> int:
        every = self.spec.trade_every_ms
        return ORIGIN_MS + i * every + _mix(self._jitter_key ^ i) % every

    def last_trade_at_or_before(self, t_ms: int) -> int:
        """Id of the last trade at or before `t_ms`; -1 if none."""
        if t_ms < ORIGIN_MS:
            return -1
        i = (t_ms - ORIGIN_MS) // self.spec.trade_every_ms
        return i if self.trade_time(i) <= t_ms else i - 1

    def first_trade_at_or_after(self, t_ms: int) -> int:
        if t_ms <= ORIGIN_MS:
            return 0
        i = (t_ms - ORIGIN_MS) // self.spec.trade_every_ms
        return i if self.trade_time(i) >= t_ms else i + 1

    def trade_price_e8(self, i: int) -> int:
        return self.price_e8(self.trade_time(i))

    def qty(self, i: int) -> float:
        return self.spec.mean_qty * (1 + sum(a * math.sin(w * i + p) for a, w, p in self._waves))

    def qty_e8(self, i: int) -> int:
        return _e8(self.qty(i))

    def qty_sum(self, first: int, last: int) -> float:
        """Sum of qty(i) for first <= i <= last, in closed form (sum of sines over an arithmetic run)."""
        if last < first:
            return 0.0
        n = last - first + 1
        total = float(n)
        for a, w, p in self._waves:
            total += a * math.sin(n * w / 2) * math.sin(p + w * first + (n - 1) * w / 2) / math.sin(w / 2)
        return self.spec.mean_qty * total

    def buyer_is_maker(self, i: int) -> bool:
        return bool(_mix(self._maker_key ^ i) & 1)


# --- the market ----------------------------------------------------------------------------------

class Market:
    """Market data for a set of symbols under one seed. Every method takes the time explicitly."""

    def __init__(self, symbols: Iterable[str] = DEFAULT_SYMBOLS, seed: int = 0) -> None:
        self.seed = seed
        self._walks = {s: _Walk(spec_for(s, seed), seed) for s in symbols}

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._walks)

    def has(self, symbol: str) -> bool:
        return symbol in self._walks

    def ticker_price(self, symbol: str, now_ms: int) -> dict[str, Any]:
        walk = self._walks[symbol]
        return {"symbol": symbol, "price": fmt8(self._last_price_e8(walk, now_ms))}

    def trades(self, symbol: str, limit: int, now_ms: int) -> list[dict[str, Any]]:
        """The `limit` most recent trades, oldest first."""
        walk = self._walks[symbol]
        last = walk.last_trade_at_or_before(now_ms)
        return [self._trade(walk, i) for i in range(max(0, last - limit + 1), last + 1)]

    def _trade(self, walk: _Walk, i: int) -> dict[str, Any]:
        price, qty = walk.trade_price_e8(i), walk.qty_e8(i)
        return {
            "id": i,
            "price": fmt8(price),
            "qty": fmt8(qty),
            "quoteQty": fmt8((price * qty + E8 // 2) // E8),
            "time": walk.trade_time(i),
            "isBuyerMaker": walk.buyer_is_maker(i),
            "isBestMatch": True,
        }

    def klines(
        self, symbol: str, interval: str, limit: int, start_ms: int | None, end_ms: int | None, now_ms: int
    ) -> list[list[Any]]:
        """Candles whose open time is >= start_ms and <= end_ms and not in the future, oldest first.

        Without start_ms they are the `limit` newest such candles (the last may still be open).
        """
        walk = self._walks[symbol]
        first_open = kline_open_time(ORIGIN_MS, interval)
        last_open = kline_open_time(now_ms if end_ms is None else min(end_ms, now_ms), interval)
        opens: list[int] = []
        if start_ms is not None:
            t = max(kline_open_time(start_ms, interval), first_open)
            if t < start_ms:
                t = next_kline_open(t, interval)
            while t <= last_open and len(opens) < limit:
                opens.append(t)
                t = next_kline_open(t, interval)
        else:
            t = last_open
            while t >= first_open and len(opens) < limit:
                opens.append(t)
                t = kline_open_time(t - 1, interval)
            opens.reverse()
        return [self._kline(walk, t, next_kline_open(t, interval), now_ms) for t in opens]

    def _kline(self, walk: _Walk, open_ms: int, next_open_ms: int, now_ms: int) -> list[Any]:
        close_ms = next_open_ms - 1
        upto = min(close_ms, now_ms)
        first = walk.first_trade_at_or_after(open_ms)
        last = walk.last_trade_at_or_before(upto)
        if last >= first:
            open_p, close_p = walk.trade_price_e8(first), walk.trade_price_e8(last)
        else:  # no trade yet: Binance repeats the previous close
            open_p = close_p = walk.trade_price_e8(first - 1) if first > 0 else walk.price_e8(open_ms)
        # Samples at fixed points of the candle (its quarters, on whole seconds), only those already
        # past: an open candle's high/low then only ever widen, and end where the closed candle's do.
        length = next_open_ms - open_ms
        samples = [
            walk.price_e8(point)
            for point in {open_ms + (length * j // 4) // 1000 * 1000 for j in range(1, 4)}
            if open_ms < point <= upto
        ]
        prices = [open_p, close_p, *samples]
        volume = walk.qty_sum(first, last)
        quote = volume * (sum(prices) / len(prices)) / E8
        taker_share = 0.35 + 0.3 * _uniform(_hash(walk.key, _SHARE, open_ms))
        return [
            open_ms,
            fmt8(open_p),
            fmt8(max(prices)),
            fmt8(min(prices)),
            fmt8(close_p),
            fmt8(_e8(volume)),
            close_ms,
            fmt8(_e8(quote)),
            max(0, last - first + 1),
            fmt8(_e8(volume * taker_share)),
            fmt8(_e8(quote * taker_share)),
            "0",
        ]

    def depth(self, symbol: str, limit: int, now_ms: int) -> dict[str, Any]:
        walk = self._walks[symbol]
        update_id = (now_ms - ORIGIN_MS) // DEPTH_UPDATE_MS
        tick = walk.spec.tick_e8
        h = _hash(walk.key, _DEPTH, update_id)
        best_bid = self._last_price_e8(walk, now_ms) - (h & 1) * tick
        best_ask = best_bid + (1 + (h >> 1) % 3) * tick
        return {
            "lastUpdateId": update_id,
            "bids": self._levels(walk, update_id, 0, best_bid, -tick, limit),
            "asks": self._levels(walk, update_id, 1, best_ask, tick, limit),
        }

    def _levels(self, walk: _Walk, update_id: int, side: int, best: int, step: int,
                limit: int) -> list[list[str]]:
        levels = []
        price = best
        for j in range(limit):
            if price <= 0:  # a thin book: fewer levels than asked for, as Binance may answer
                break
            h = _hash(walk.key, _DEPTH, update_id, side, j)
            qty = walk.spec.mean_qty * (0.05 + 4 * _uniform(h))
            levels.append([fmt8(price), fmt8(_e8(qty))])
            price += step * (1 + (h >> 60) % 3)
        return levels

    def ticker_24hr(self, symbol: str, now_ms: int) -> dict[str, Any]:
        walk = self._walks[symbol]
        open_ms = now_ms - DAY_MS
        first = walk.first_trade_at_or_after(open_ms)
        last = walk.last_trade_at_or_before(now_ms)
        if last >= first:
            open_p, last_p, last_q = walk.trade_price_e8(first), walk.trade_price_e8(last), walk.qty_e8(last)
        else:
            open_p = last_p = walk.price_e8(now_ms)
            last_q = 0
        prev_close = walk.trade_price_e8(first - 1) if first > 0 else open_p
        # High/low from the traded ends and the walk every 15 minutes in between.
        samples = [walk.price_e8(t) for t in range(open_ms - open_ms % 900_000 + 900_000, now_ms, 900_000)]
        prices = [open_p, last_p, *samples]
        volume = walk.qty_sum(first, last)
        average = sum(prices) / len(prices)
        book = self.depth(symbol, 1, now_ms)
        change = last_p - open_p
        return {
            "symbol": symbol,
            "priceChange": fmt8(change),
            "priceChangePercent": f"{change * 100 / open_p:.3f}",
            "weightedAvgPrice": fmt8(round(average)),
            "prevClosePrice": fmt8(prev_close),
            "lastPrice": fmt8(last_p),
            "lastQty": fmt8(last_q),
            "bidPrice": book["bids"][0][0],
            "bidQty": book["bids"][0][1],
            "askPrice": book["asks"][0][0],
            "askQty": book["asks"][0][1],
            "openPrice": fmt8(open_p),
            "highPrice": fmt8(max(prices)),
            "lowPrice": fmt8(min(prices)),
            "volume": fmt8(_e8(volume)),
            "quoteVolume": fmt8(_e8(volume * average / E8)),
            "openTime": open_ms,
            "closeTime": now_ms,
            "firstId": first,
            "lastId": last,
            "count": max(0, last - first + 1),
        }

    @staticmethod
    def _last_price_e8(walk: _Walk, now_ms: int) -> int:
        last = walk.last_trade_at_or_before(now_ms)
        return walk.trade_price_e8(last) if last >= 0 else walk.price_e8(now_ms)
