"""Binance request weight: what each call costs, a per-minute budget, and the pause a 429/418 imposes.

Binance counts REQUEST_WEIGHT per IP in one-minute windows and reports the figure in the
X-MBX-USED-WEIGHT-1M header of every response. We keep a *sliding* one-minute log of the weight we
sent: if no 60-second span holds more than the budget, no window the server counts can either,
whatever the skew between its clock and ours.

Stdlib only (the simulator and tests import the weight table without pulling in requests).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEPTH",
    "KLINES",
    "TICKER_24HR",
    "TICKER_PRICE",
    "TRADES",
    "Ban",
    "RateLimiter",
    "ban_seconds",
    "parse_retry_after",
    "request_weight",
]

Clock = Callable[[], float]
Sleep = Callable[[float], None]

TICKER_PRICE = "/api/v3/ticker/price"
DEPTH = "/api/v3/depth"
TRADES = "/api/v3/trades"
KLINES = "/api/v3/klines"
TICKER_24HR = "/api/v3/ticker/24hr"

# Weights of single-symbol calls, from Binance's spot API docs (see tests/fixtures/binance/SOURCES.md).
_FIXED_WEIGHTS = {TICKER_PRICE: 2, TRADES: 25, KLINES: 2, TICKER_24HR: 2}
# Depth costs more the deeper the book asked for: (largest limit of the band, weight), shallowest first.
_DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))
DEPTH_LIMITS = tuple(top for top, _ in _DEPTH_WEIGHTS)   # the limits at which the weight steps up
DEPTH_DEFAULT_LIMIT = 100  # what Binance uses when no limit is sent

# When a 429/418 comes without a usable Retry-After: a 429 clears by the next minute at the latest,
# and the shortest IP ban Binance hands out is two minutes.
_DEFAULT_PAUSE = {429: 60.0, 418: 120.0}
# Never less than this: answering a 429 straight away is exactly what turns it into a 418.
_MIN_PAUSE = 1.0
_BANNED_UNTIL = re.compile(r"banned until (\d{10,16})")


def request_weight(endpoint: str, limit: int | None = None) -> int:
    """The REQUEST_WEIGHT of one call for a single symbol; ValueError for an unknown endpoint or limit."""
    if endpoint == DEPTH:
        depth_limit = DEPTH_DEFAULT_LIMIT if limit is None else limit
        for top, weight in _DEPTH_WEIGHTS:
            if 1 <= depth_limit <= top:
                return weight
        raise ValueError(f"depth limit must be 1..5000, got {depth_limit}")
    try:
        return _FIXED_WEIGHTS[endpoint]
    except KeyError:
        raise ValueError(f"no known request weight for endpoint {endpoint!r}") from None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds; None when absent or not a non-negative number (Binance sends seconds)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def ban_seconds(status: int, retry_after: str | None, msg: str, now_wall: float) -> float:
    """How long to send nothing after a 429/418: the longer of Retry-After and a 'banned until <ms>' msg.

    `now_wall` is the epoch time in seconds (the msg carries an epoch time in milliseconds).
    """
    candidates = []
    header = parse_retry_after(retry_after)
    if header is not None:
        candidates.append(header)
    match = _BANNED_UNTIL.search(msg)
    if match:
        candidates.append(int(match.group(1)) / 1000.0 - now_wall)
    seconds = max(candidates) if candidates else _DEFAULT_PAUSE.get(status, 60.0)
    return max(seconds, _MIN_PAUSE)


@dataclass(frozen=True)
class Ban:
    """No request may go to the host before `until` (a value of the limiter's clock)."""

    status: int  # 429 (rate limited) or 418 (IP banned)
    until: float
    reason: str


class RateLimiter:
    """A per-host weight budget over a sliding minute, plus the host's current 429/418 pause.

    Thread-safe. Share one instance between every client that talks to the same host from this IP.
    `clock` must be monotonic; `clock` and `sleep` are injectable so tests can run minutes in no time.
    """

    def __init__(
        self,
        budget_per_minute: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        window_seconds: float = 60.0,
    ) -> None:
        if budget_per_minute < 1:
            raise ValueError(f"budget_per_minute must be >= 1, got {budget_per_minute}")
        self.budget = budget_per_minute
        self.clock = clock
        self.sleep = sleep
        self.window = window_seconds
        self._lock = threading.Lock()
        self._sent: deque[tuple[float, int]] = deque()  # (when, weight), oldest first
        self._total = 0
        self._ban: Ban | None = None

    @property
    def weight_used(self) -> int:
        """Weight counted in the last minute: ours, or the server's figure when that was higher."""
        with self._lock:
            self._expire(self.clock())
            return self._total

    def acquire(self, weight: int) -> float:
        """Block until `weight` fits the budget, then count it as sent; return the seconds waited."""
        if weight > self.budget:
            raise ValueError(f"request weight {weight} exceeds the budget of {self.budget} a minute")
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                self._expire(now)
                wait = self._wait_for(weight, now)
                if wait == 0.0:
                    self._sent.append((now, weight))
                    self._total += weight
                    return waited
            # Sleep outside the lock so other threads can still read weight_used or record a ban.
            self.sleep(wait)
            waited += wait

    def observe_server_weight(self, used: int) -> None:
        """Take in X-MBX-USED-WEIGHT-1M. Other clients on our IP count too, so a higher figure wins.

        The excess is booked as if sent now and ages out like our own weight: the server's window ends
        within a minute, so this over-counts a little and never under-counts.
        """
        with self._lock:
            now = self.clock()
            self._expire(now)
            if used > self._total:
                self._sent.append((now, used - self._total))
                self._total = used

    def ban(self, status: int, seconds: float, reason: str) -> Ban:
        """Record a 429/418 pause of `seconds`; a shorter pause never cuts a longer one short."""
        until = self.clock() + seconds
        with self._lock:
            if self._ban is None or until > self._ban.until:
                self._ban = Ban(status=status, until=until, reason=reason)
            return self._ban

    def active_ban(self) -> Ban | None:
        """The pause in force now, if any."""
        with self._lock:
            if self._ban is not None and self.clock() >= self._ban.until:
                self._ban = None
            return self._ban

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._sent and self._sent[0][0] <= horizon:
            self._total -= self._sent.popleft()[1]

    def _wait_for(self, weight: int, now: float) -> float:
        """0.0 if `weight` fits now, else the seconds until enough old weight has aged out."""
        excess = self._total + weight - self.budget
        if excess <= 0:
            return 0.0
        freed = 0
        for sent_at, sent_weight in self._sent:
            freed += sent_weight
            if freed >= excess:
                # A floor, so float rounding can never turn "almost expired" into "fits".
                return max(sent_at + self.window - now, 1e-3)
        return self.window  # unreachable while weight <= budget; kept as a safe answer
