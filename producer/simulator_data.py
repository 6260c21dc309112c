"""The simulator's market: prices, trades, klines, depth and 24 h statistics as pure functions of time.

Nothing is stored. Every figure follows from (seed, symbol, time in ms), so a backfill over years costs
no memory, two simulators with one seed agree, and the same question always gets the same answer.

The model, per symbol:
- log-price is a seeded random walk: knots every 4096 s (a walk with a weak pull back to the starting
  price, so years of it stay plausible), refined down to 1 s by a Brownian bridge (each midpoint is the
  mean of its ends plus seeded noise), so the price at any second costs 12 hashes, not a walk from 2017;
- every block of the bridge (the seconds between two of its points, 4096 s down to 2 s) also carries its
  highest and lowest value and a second where each is reached. They are drawn top-down with the bridge:
  a 4096 s segment draws them (a Brownian bridge's maximum has a closed-form law), a half inherits the
  extremes that lie in it and draws its own, no further out than its parent's, for the others, and every
  midpoint is kept within its block's extremes (and is the extreme at the second chosen for it). So the
  highest and lowest price over any span of seconds costs a few dozen blocks whatever its length;
- trade number i happens in the i-th slot of `trade_every_ms` after ORIGIN_MS, at a seeded offset within
  the slot; its price is the walk at that second rounded to the tick (every trade of a second has one
  price). Ids therefore only grow with time. Every second has trades (`trade_every_ms` divides 1000);
- trade quantities are a sum of sines of the id, so the volume of any id range has a closed form: kline
  and 24 h volumes equal the sum of the trades' quantities (to rounding) without visiting each trade;
- a kline's open/close are its first/last trade prices and its high/low the highest and lowest trade
  price in it: the walk's extremes over the seconds from its first to its last trade (24 h statistics
  alike), so every trade lies within the [low, high] of each kline and 24 h window that covers it;
  quote and taker-buy volumes are model figures;
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
_KNOT, _BRIDGE, _JITTER, _MAKER, _DEPTH, _SHARE, _SPEC, _PHASE, _HIGH, _LOW = range(1, 11)
_CACHE_LIMIT = 100_000  # split blocks kept (~0.7 kB each); recomputed alike once dropped

# A block of the bridge: seconds l..r (r - l a power of two), the log prices at both ends, the highest
# value in it and a second where it is reached, the lowest and its second.
Block = tuple[int, int, float, float, float, int, float, int]


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
        self._variance_s = per_second * per_second
        self._sigma_knot = per_second * math.sqrt(SEGMENT_S)
        self._log_base = math.log(spec.base_price)
        self._high_key, self._low_key = _hash(self.key, _HIGH), _hash(self.key, _LOW)
        # Pull back toward the base price with a half-life of ~90 days, so prices stay plausible.
        self._pull = math.log(2) / (90 * 86_400 / SEGMENT_S)
        self._forward = [self._log_base]  # knots 0, 1, 2, ...
        self._backward = [self._log_base]  # knots 0, -1, -2, ...
        self._knots_lock = threading.Lock()
        self._roots: dict[int, Block] = {}  # segment -> its whole block
        self._splits: dict[int, tuple[float, Block, Block]] = {}  # midpoint -> (its value, halves)
        self.splits_computed = 0  # blocks split so far: the model's unit of work, for tests
        self._sigma_s = per_second
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

    # Blocks and their extremes ---------------------------------------------------------------------

    def _root(self, k: int) -> Block:
        """The block of segment k: from knot k to knot k + 1."""
        block = self._roots.get(k)
        if block is None:
            if len(self._roots) > _CACHE_LIMIT:
                self._roots.clear()
            left = ANCHOR_S + k * SEGMENT_S
            block = self._block(left, left + SEGMENT_S, self._knot(k), self._knot(k + 1), None)
            self._roots[k] = block
        return block

    def _block(self, left: int, right: int, v_left: float, v_right: float, parent: Block | None) -> Block:
        """A block with the given ends: the parent's extremes that lie in it, its own drawn for the rest."""
        high: tuple[float, int] | None = None
        low: tuple[float, int] | None = None
        if parent is not None:
            if left <= parent[5] <= right:
                high = parent[4], parent[5]
            if left <= parent[7] <= right:
                low = parent[6], parent[7]
        if high is None:
            cap = math.inf if parent is None else parent[4]
            high = self._extreme(left, right, v_left, v_right, 1, cap, None if low is None else low[1])
        if low is None:
            cap = -math.inf if parent is None else parent[6]
            low = self._extreme(left, right, v_left, v_right, -1, cap, high[1])
        return left, right, v_left, v_right, high[0], high[1], low[0], low[1]

    def _extreme(self, left: int, right: int, v_left: float, v_right: float, sign: int, cap: float,
                 taken: int | None) -> tuple[float, int]:
        """A seeded highest (sign 1) or lowest (-1) value of a bridge between the ends, and its second.

        Never beyond `cap` (the parent's extreme), and never at `taken` (the second of the other
        extreme: one second cannot be both). With no free second inside, the extreme is an end.
        """
        end = (v_left, left) if (v_left - v_right) * sign >= 0 else (v_right, right)
        free = right - left - 1 - (1 if taken is not None and left < taken < right else 0)
        if free <= 0:
            return end
        h = _mix((self._high_key if sign > 0 else self._low_key) ^ ((left + right) >> 1))
        # P(max > m) = exp(-2 (m - a)(m - b) / (variance * T)) for a bridge from a to b over T seconds.
        exponential = -math.log(((h >> 11) + 1) * (1.0 / (1 << 53)))
        half = (v_left - v_right) / 2
        reach = math.sqrt(half * half + self._variance_s * (right - left) * exponential / 2)
        value = (v_left + v_right) / 2 + sign * reach
        value = min(value, cap) if sign > 0 else max(value, cap)
        at = left + 1 + _mix(h) % free
        if taken is not None and left < taken <= at:
            at += 1
        return value, at

    def _split(self, block: Block) -> tuple[float, Block, Block]:
        """The block's midpoint value and its two halves."""
        left, right, v_left, v_right, high, high_at, low, low_at = block
        mid = (left + right) >> 1
        cached = self._splits.get(mid)  # a second is the midpoint of exactly one block
        if cached is not None:
            return cached
        if mid == high_at:
            v_mid = high
        elif mid == low_at:
            v_mid = low
        else:
            # A bridge between the nearest known points on either side: the ends, and the extremes
            # inside the block, so the path rises to its high and sinks to its low instead of spiking.
            a, v_a, b, v_b = left, v_left, right, v_right
            for at, value in ((high_at, high), (low_at, low)):
                if a < at < mid:
                    a, v_a = at, value
                elif mid < at < b:
                    b, v_b = at, value
            noise = _gauss(_mix(self._bridge_key ^ (mid & _MASK)))
            spread = self._sigma_s * math.sqrt((mid - a) * (b - mid) / (b - a))
            v_mid = min(max(v_a + (v_b - v_a) * (mid - a) / (b - a) + spread * noise, low), high)
        split = (v_mid, self._block(left, mid, v_left, v_mid, block), self._block(mid, right, v_mid, v_right,
                                                                                     block))
        if len(self._splits) > _CACHE_LIMIT:  # a bound on memory; the values come back the same
            self._splits.clear()
        self._splits[mid] = split
        self.splits_computed += 1
        return split

    def _log_price_at(self, second: int) -> float:
        k, offset = divmod(second - ANCHOR_S, SEGMENT_S)
        if offset == 0:
            return self._knot(k)
        block = self._root(k)
        while True:
            v_mid, lower, upper = self._split(block)
            mid = lower[1]
            if second == mid:
                return v_mid
            block = lower if second < mid else upper

    def log_extremes(self, first_second: int, last_second: int) -> tuple[float, float]:
        """(lowest, highest) log price over the whole seconds first_second..last_second."""
        low, high = math.inf, -math.inf
        k_first = (first_second - ANCHOR_S) // SEGMENT_S
        k_last = (last_second - ANCHOR_S) // SEGMENT_S
        stack = [self._root(k) for k in range(k_first, k_last + 1)]
        while stack:
            block = stack.pop()
            left, right = block[0], block[1]
            if last_second < left or right < first_second:
                continue
            if first_second <= left and right <= last_second:
                low, high = min(low, block[6]), max(high, block[4])
            elif right - left == 1:  # no second inside: the one end in the span
                value = block[2] if first_second <= left else block[3]
                low, high = min(low, value), max(high, value)
            else:
                _, lower, upper = self._split(block)
                stack += (lower, upper)
        return low, high

    def to_e8(self, log_price: float) -> int:
        """A log price as a price in 1e-8, rounded to the tick (monotonic: extremes stay extremes)."""
        tick = self.spec.tick_e8
        return max(1, round(math.exp(log_price) * E8 / tick)) * tick

    def price_e8(self, t_ms: int) -> int:
        """The walk at the second holding `t_ms`, rounded to the tick: the price of that second's trades."""
        return self.to_e8(self.log_price_at(t_ms // 1000))

    def price_range_e8(self, first: int, last: int) -> tuple[int, int]:
        """(low, high) of the prices of trades first..last (first <= last), exactly."""
        # Every second from the first trade's to the last one's has trades, each at the walk's price.
        low, high = self.log_extremes(self.trade_time(first) // 1000, self.trade_time(last) // 1000)
        return self.to_e8(low), self.to_e8(high)

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

    def work(self) -> int:
        """Seconds priced plus blocks split so far, over every symbol: the model's unit of work (tests)."""
        total = 0
        for walk in self._walks.values():
            info = walk.log_price_at.cache_info()
            total += walk.splits_computed + info.hits + info.misses
        return total

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
            # The extremes of the trades so far: an open candle's high/low only ever widen.
            low, high = walk.price_range_e8(first, last)
        else:  # no trade yet: Binance repeats the previous close
            open_p = close_p = walk.trade_price_e8(first - 1) if first > 0 else walk.price_e8(open_ms)
            low = high = open_p
        volume = walk.qty_sum(first, last)
        quote = volume * ((open_p + close_p + low + high) / 4) / E8
        taker_share = 0.35 + 0.3 * _uniform(_hash(walk.key, _SHARE, open_ms))
        return [
            open_ms,
            fmt8(open_p),
            fmt8(high),
            fmt8(low),
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
            low, high = walk.price_range_e8(first, last)
        else:
            open_p = last_p = low = high = walk.price_e8(now_ms)
            last_q = 0
        prev_close = walk.trade_price_e8(first - 1) if first > 0 else open_p
        # The average from the traded ends and the walk every 15 minutes in between, inside [low, high]
        # like any average of the window's trades.
        samples = [walk.price_e8(t) for t in range(open_ms - open_ms % 900_000 + 900_000, now_ms, 900_000)]
        prices = [open_p, last_p, *samples]
        volume = walk.qty_sum(first, last)
        average = min(max(sum(prices) / len(prices), low), high)
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
            "highPrice": fmt8(high),
            "lowPrice": fmt8(low),
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
