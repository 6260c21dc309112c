"""The weight table, the per-minute budget (on a fake clock) and the 429/418 pause."""

from __future__ import annotations

import threading
import time

import pytest
from fake_clock import FakeClock

from producer.ratelimit import (
    DEPTH,
    KLINES,
    TICKER_24HR,
    TICKER_PRICE,
    TRADES,
    RateLimiter,
    ban_seconds,
    parse_retry_after,
    request_weight,
)


class LimiterClock(FakeClock):
    """The shared fake clock, and the limiter never asks it to sleep for no time at all."""

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter asked to sleep for no time at all"
        super().sleep(seconds)


def make_limiter(budget: int, clock: LimiterClock) -> RateLimiter:
    return RateLimiter(budget, clock=clock, sleep=clock.sleep)


# --- the weight table (Binance spot docs, as in SOURCES.md) ----------------------------------------

@pytest.mark.parametrize(
    ("endpoint", "limit", "weight"),
    [
        (TICKER_PRICE, None, 2),
        (TRADES, 500, 25),
        (TRADES, 1000, 25),
        (KLINES, 1000, 2),
        (TICKER_24HR, None, 2),
        (DEPTH, None, 5),
        (DEPTH, 1, 5),
        (DEPTH, 100, 5),
        (DEPTH, 101, 25),
        (DEPTH, 500, 25),
        (DEPTH, 501, 50),
        (DEPTH, 1000, 50),
        (DEPTH, 1001, 250),
        (DEPTH, 5000, 250),
    ],
)
def test_weight_table(endpoint: str, limit: int | None, weight: int) -> None:
    assert request_weight(endpoint, limit) == weight


@pytest.mark.parametrize(("endpoint", "limit"), [(DEPTH, 0), (DEPTH, 5001), ("/api/v3/aggTrades", None)])
def test_weight_table_refuses_what_it_does_not_know(endpoint: str, limit: int | None) -> None:
    with pytest.raises(ValueError):
        request_weight(endpoint, limit)


# --- the budget ---------------------------------------------------------------------------------

def test_under_budget_nothing_waits() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    for _ in range(4):
        assert limiter.acquire(25) == 0.0
    assert clock.slept == []
    assert limiter.weight_used == 100


def test_waits_until_the_oldest_weight_ages_out() -> None:
    clock = LimiterClock()
    limiter = make_limiter(10, clock)
    limiter.acquire(6)
    clock.now += 10
    waited = limiter.acquire(6)  # 12 > 10: the first 6 must leave the window, 50 s from now
    assert waited == pytest.approx(50.0)
    assert limiter.weight_used == 6


def test_a_burst_never_exceeds_the_budget_in_any_minute() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    granted: list[tuple[float, int]] = []
    cycle = [request_weight(TICKER_PRICE), request_weight(DEPTH, 20), request_weight(TRADES),
             request_weight(KLINES), request_weight(TICKER_24HR)]
    for _ in range(20):
        for weight in cycle:
            limiter.acquire(weight)
            granted.append((clock.now, weight))
            assert limiter.weight_used <= 100
    total = sum(w for _, w in granted)
    assert total > 5 * 100, "the burst must be big enough to need the limiter"
    # Every 60-second span starting at a grant holds at most the budget (so any fixed minute does too).
    for start, _ in granted:
        in_window = sum(w for t, w in granted if start <= t < start + 60)
        assert in_window <= 100, f"{in_window} weight in the minute from {start}"
    # And the limiter did not dawdle: the whole burst took about total/budget minutes, not more.
    elapsed = clock.now - 1_000.0
    assert (total / 100 - 1) * 60 <= elapsed <= (total / 100 + 1) * 60


def test_a_higher_server_figure_is_trusted() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    limiter.acquire(5)
    limiter.observe_server_weight(95)  # other clients on our IP used 90
    assert limiter.weight_used == 95
    assert limiter.acquire(10) == pytest.approx(60.0)


def test_a_lower_server_figure_is_ignored() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    limiter.acquire(50)
    limiter.observe_server_weight(10)  # the server's minute rolled over before ours: keep our count
    assert limiter.weight_used == 50


def test_weight_used_drops_after_a_minute() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    limiter.acquire(30)
    limiter.observe_server_weight(70)
    clock.now += 59.9
    assert limiter.weight_used == 70
    clock.now += 0.2
    assert limiter.weight_used == 0


def test_a_request_heavier_than_the_budget_is_refused() -> None:
    limiter = make_limiter(100, LimiterClock())
    with pytest.raises(ValueError, match="exceeds the budget"):
        limiter.acquire(250)


def test_threads_share_the_budget() -> None:
    # Real clock, a 0.2 s window so the test is quick: 4 threads x 5 grants of 5 against 20 per window.
    # The grant time is the limiter's own last clock reading in that thread, so scheduling delays
    # between a grant and the test noting it cannot blur the check.
    last_reading = threading.local()

    def clock() -> float:
        last_reading.value = time.monotonic()
        return float(last_reading.value)

    limiter = RateLimiter(20, clock=clock, window_seconds=0.2)
    granted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            limiter.acquire(5)
            with lock:
                granted.append(last_reading.value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(granted) == 20
    granted.sort()
    for i, start in enumerate(granted):
        in_window = sum(1 for t in granted[i:] if t < start + 0.2)
        assert in_window * 5 <= 20, f"{in_window} grants of 5 within 0.2 s"


# --- 429 / 418 pauses -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "seconds"), [("2", 2.0), (" 1.5 ", 1.5), ("0", 0.0), ("", None), ("abc", None),
                           ("-3", None), ("inf", None), (None, None)],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_pause_follows_retry_after() -> None:
    assert ban_seconds(429, "7", "Too much request weight used", now_wall=1_000.0) == 7.0


def test_pause_takes_the_later_of_retry_after_and_banned_until() -> None:
    now = 1_660_090_000.0
    msg = "Way too much request weight used; IP banned until 1660090423228. Please use the websocket"
    assert ban_seconds(418, "120", msg, now_wall=now) == pytest.approx(423.228)
    assert ban_seconds(418, "900", msg, now_wall=now) == 900.0


def test_pause_without_headers_uses_safe_defaults() -> None:
    assert ban_seconds(429, None, "", now_wall=0.0) == 60.0
    assert ban_seconds(418, "soon", "", now_wall=0.0) == 120.0
    assert ban_seconds(429, "0", "", now_wall=0.0) == 1.0  # never straight back


def test_ban_lasts_until_its_end_and_is_never_shortened() -> None:
    clock = LimiterClock()
    limiter = make_limiter(100, clock)
    assert limiter.active_ban() is None
    first = limiter.ban(418, 120.0, "banned")
    limiter.ban(429, 5.0, "shorter")  # must not cut the 418 short
    ban = limiter.active_ban()
    assert ban is not None and ban.status == 418 and ban.until == first.until == 1_120.0
    clock.now = 1_119.9
    assert limiter.active_ban() is not None
    clock.now = 1_120.0
    assert limiter.active_ban() is None
