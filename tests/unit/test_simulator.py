"""The Binance simulator: response shapes as in the recorded samples, a coherent market, faults, stats."""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from producer.simulator import SimClock, SimulatorServer, start_simulator
from producer.simulator_data import ORIGIN_MS, Market, kline_open_time, next_kline_open

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"   # recorded Binance responses
REPO = Path(__file__).resolve().parents[2]
DECIMAL8 = re.compile(r"\d+\.\d{8}")
NOW_MS = 1_767_225_600_000 + 12_345_678  # a fixed moment (2026-01-01 03:25:45.678 UTC) for model tests


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server, _ = start_simulator(port=0, seed=5)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatorServer) -> None:
    sim.sim.reset()


def get(sim: SimulatorServer, path: str, **params: Any) -> requests.Response:
    return requests.get(sim.base_url + path, params=params, timeout=10)


def post(sim: SimulatorServer, path: str, payload: Any) -> Any:
    response = requests.post(sim.base_url + path, json=payload, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def json_types(value: Any) -> Any:
    """The JSON type of every field, recursively: what 'same shape' means here."""
    if isinstance(value, dict):
        return {k: json_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_types(v) for v in value]
    return type(value).__name__


# --- shapes match the samples ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("path", "params", "sample_file"),
    [
        ("/api/v3/ticker/price", {"symbol": "ETHUSDT"}, "ticker_price_single_ETHUSDT_real_2021-12-17.json"),
        ("/api/v3/ticker/24hr", {"symbol": "ETHUSDT"}, "docs_ticker_24hr_full_single.json"),
    ],
)
def test_object_shapes_match_the_samples(
    sim: SimulatorServer, path: str, params: dict[str, str], sample_file: str
) -> None:
    body = get(sim, path, **params).json()
    assert list(body) == list(sample(sample_file)), "same keys in the same order"
    assert json_types(body) == json_types(sample(sample_file))


def test_depth_shape_matches_the_sample(sim: SimulatorServer) -> None:
    body = get(sim, "/api/v3/depth", symbol="ETHUSDT", limit=5).json()
    real = sample("depth_ETHUSDT_limit5_real_2021-12-17.json")
    assert json_types(body) == json_types(real)
    for price, qty in body["bids"] + body["asks"]:
        assert DECIMAL8.fullmatch(price) and DECIMAL8.fullmatch(qty)


def test_trades_shape_matches_the_sample(sim: SimulatorServer) -> None:
    body = get(sim, "/api/v3/trades", symbol="ETHUSDT", limit=2).json()
    real = sample("trades_ETHUSDT_limit2_real_2021-12-17.json")
    assert [list(t) for t in body] == [list(t) for t in real]
    assert json_types(body) == json_types(real)
    for trade in body:
        assert DECIMAL8.fullmatch(trade["price"]) and DECIMAL8.fullmatch(trade["qty"])
        product = Decimal(trade["price"]) * Decimal(trade["qty"])
        assert abs(Decimal(trade["quoteQty"]) - product) <= Decimal("0.000000005")


def test_klines_shape_matches_the_sample(sim: SimulatorServer) -> None:
    body = get(sim, "/api/v3/klines", symbol="ETHUSDT", interval="1d", limit=1).json()
    real = sample("klines_ETHUSDT_1d_limit1_real_2021-12-17.json")
    assert json_types(body) == json_types(real)
    assert json_types(body) == json_types(sample("docs_klines.json"))


def test_unknown_symbol_is_binance_s_400(sim: SimulatorServer) -> None:
    response = get(sim, "/api/v3/depth", symbol="NOSUCHCOIN")
    assert response.status_code == 400
    assert response.json() == sample("docs_error_invalid_symbol_-1121.json")


@pytest.mark.parametrize(
    ("params", "code"),
    [({"symbol": "BTCUSDT", "interval": "7m"}, -1120), ({"symbol": "BTCUSDT"}, -1102),
     ({"interval": "1m"}, -1102), ({"symbol": "BTCUSDT", "interval": "1m", "limit": "ten"}, -1100)],
)
def test_bad_parameters_get_binance_error_codes(
    sim: SimulatorServer, params: dict[str, str], code: int
) -> None:
    response = get(sim, "/api/v3/klines", **params)
    assert response.status_code == 400 and response.json()["code"] == code


def test_weight_header_counts_per_minute(sim: SimulatorServer) -> None:
    assert get(sim, "/api/v3/depth", symbol="BTCUSDT", limit=20).headers["X-MBX-USED-WEIGHT-1M"] == "5"
    assert get(sim, "/api/v3/trades", symbol="BTCUSDT").headers["X-MBX-USED-WEIGHT-1M"] == "30"
    assert get(sim, "/api/v3/depth", symbol="BTCUSDT", limit=1000).headers["X-MBX-USED-WEIGHT-1M"] == "80"
    post(sim, "/_sim/time", {"advance": 60})
    assert get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m").headers["X-MBX-USED-WEIGHT-1M"] == "2"


# --- a coherent market --------------------------------------------------------------------------------

def test_same_seed_and_time_same_data_other_seed_other_data() -> None:
    a, b, c = Market(seed=1), Market(seed=1), Market(seed=2)
    assert a.trades("BTCUSDT", 50, NOW_MS) == b.trades("BTCUSDT", 50, NOW_MS)
    hours = ("ETHUSDT", "1h", 24, None, None, NOW_MS)
    assert a.klines(*hours) == b.klines(*hours)
    assert a.ticker_price("BTCUSDT", NOW_MS) != c.ticker_price("BTCUSDT", NOW_MS)


def test_trade_ids_only_grow_and_follow_time() -> None:
    market = Market(seed=3)
    earlier = market.trades("BTCUSDT", 100, NOW_MS)
    later = market.trades("BTCUSDT", 100, NOW_MS + 2_500)
    ids = [t["id"] for t in earlier]
    assert ids == list(range(ids[0], ids[0] + 100))
    assert [t["time"] for t in earlier] == sorted(t["time"] for t in earlier)
    assert all(t["time"] <= NOW_MS for t in earlier)
    assert later[-1]["id"] > earlier[-1]["id"]
    # A trade seen twice is the same trade.
    overlap = {t["id"]: t for t in later}
    assert all(overlap[t["id"]] == t for t in earlier if t["id"] in overlap)


def test_klines_roll_over_when_their_interval_passes(sim: SimulatorServer) -> None:
    before = get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=2).json()
    now = post(sim, "/_sim/time", {"advance": 60})["now_ms"]
    after = get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=2).json()
    assert after[-1][0] == before[-1][0] + 60_000, "a new candle opened"
    assert after[0][0] == before[-1][0] and after[0][6] < now, "the open one closed"
    assert after[0][1] == before[-1][1], "its open price did not change"
    assert after[0][8] >= before[-1][8], "its trades only accumulate"


def test_the_open_kline_keeps_changing_until_it_closes() -> None:
    market = Market(seed=4)
    open_ms = kline_open_time(NOW_MS, "1h")
    snapshots = [market.klines("BTCUSDT", "1h", 1, None, None, open_ms + m * 60_000 + 1)[0]
                 for m in (5, 30, 59)]
    assert {k[0] for k in snapshots} == {open_ms}
    counts = [k[8] for k in snapshots]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    highs = [Decimal(k[2]) for k in snapshots]
    lows = [Decimal(k[3]) for k in snapshots]
    assert highs == sorted(highs) and lows == sorted(lows, reverse=True), "an open candle only widens"
    final = market.klines("BTCUSDT", "1h", 1, open_ms, None, open_ms + 3 * 3_600_000)[0]
    assert final[2] >= snapshots[-1][2] and final[6] == open_ms + 3_600_000 - 1


def test_kline_fields_are_consistent() -> None:
    for interval in ("1s", "1m", "1h", "1d", "1w", "1M"):
        for k in Market(seed=6).klines("SOLUSDT", interval, 20, None, None, NOW_MS):
            o, h, low, c = (Decimal(x) for x in k[1:5])
            assert low <= min(o, c) <= max(o, c) <= h, (interval, k)
            assert k[6] == next_kline_open(k[0], interval) - 1
            assert k[8] >= 0 and Decimal(k[5]) >= Decimal(k[9]) >= 0


def test_weeks_open_on_monday_and_months_on_the_first() -> None:
    weeks = Market(seed=1).klines("BTCUSDT", "1w", 3, None, None, NOW_MS)
    assert all(datetime.fromtimestamp(k[0] / 1000, UTC).weekday() == 0 for k in weeks)
    months = Market(seed=1).klines("BTCUSDT", "1M", 14, None, None, NOW_MS)
    starts = [datetime.fromtimestamp(k[0] / 1000, UTC) for k in months]
    assert all(d.day == 1 and d.hour == 0 for d in starts)
    assert len({d.month for d in starts}) == 12


def test_backfill_pages_through_history_deterministically() -> None:
    market = Market(seed=7)
    start = 1_577_836_800_000  # 2020-01-01
    page1 = market.klines("BTCUSDT", "1h", 1000, start, None, NOW_MS)
    page2 = market.klines("BTCUSDT", "1h", 1000, page1[-1][0] + 1, None, NOW_MS)
    # Cheap whatever the candle's length: a few dozen seconds priced and blocks split per candle (an
    # hour of one price per second would be 3600), and no more for a day or a month.
    assert market.work() < 2000 * 60
    for interval, count in (("1d", 300), ("1M", 30)):
        before = market.work()
        assert len(market.klines("BTCUSDT", interval, count, start, None, NOW_MS)) == count
        assert market.work() - before < count * 150, interval
    opens = [k[0] for k in page1 + page2]
    assert opens[0] == start and opens == list(range(start, start + 2000 * 3_600_000, 3_600_000))
    assert Market(seed=7).klines("BTCUSDT", "1h", 1000, start, None, NOW_MS) == page1
    # endTime bounds the page; without startTime the newest candles up to endTime come back.
    assert market.klines("BTCUSDT", "1h", 1000, start, start + 5 * 3_600_000, NOW_MS) == page1[:6]
    assert market.klines("BTCUSDT", "1h", 3, None, start + 5 * 3_600_000, NOW_MS) == page1[3:6]


def test_nothing_before_the_first_trade_and_nothing_in_the_future() -> None:
    market = Market(seed=1)
    first = market.klines("ETHUSDT", "1d", 5, 0, None, NOW_MS)
    assert first[0][0] == ORIGIN_MS
    assert market.klines("ETHUSDT", "1m", 5, NOW_MS + 3_600_000, None, NOW_MS) == []


def _covered(times: list[int], prices: list[Decimal], first_ms: int, last_ms: int) -> list[Decimal]:
    """Prices of the trades (at `times`, ascending) at first_ms..last_ms."""
    return prices[bisect_left(times, first_ms):bisect_right(times, last_ms)]


@pytest.mark.parametrize("symbol", ["SOLUSDT", "XRPUSDT", "QX7USDT"])
def test_kline_high_and_low_are_those_of_its_trades(symbol: str) -> None:
    market = Market(symbols=[symbol], seed=12)
    trades = market.trades(symbol, 7200 * 4, NOW_MS)  # the last two hours (or more) of trades
    times, all_prices = [t["time"] for t in trades], [Decimal(t["price"]) for t in trades]
    checked = 0
    for interval, limit in (("1s", 1000), ("1m", 119), ("3m", 39), ("15m", 7), ("1h", 1)):
        klines = market.klines(symbol, interval, limit, None, None, NOW_MS)
        assert klines[0][0] >= trades[0]["time"], "every candle's trades are in the list"
        for k in klines:  # closed ones and the open one
            prices = _covered(times, all_prices, k[0], k[6])
            o, h, low, c = (Decimal(x) for x in k[1:5])
            if not prices:
                assert low == o == c == h, k
                continue
            assert (o, c, k[8]) == (prices[0], prices[-1], len(prices)), k
            assert (low, h) == (min(prices), max(prices)), (interval, k)
            checked += 1
    assert checked > 1100


def test_ticker_24hr_high_and_low_are_those_of_the_window_s_trades() -> None:
    market = Market(symbols=["XRPUSDT"], seed=13)
    for minutes in range(0, 24 * 60, 97):  # snapshots through a day, at odd moments
        now = NOW_MS + minutes * 60_000 + minutes * 7
        stats = market.ticker_24hr("XRPUSDT", now)
        low, high = Decimal(stats["lowPrice"]), Decimal(stats["highPrice"])
        recent = [Decimal(t["price"]) for t in market.trades("XRPUSDT", 1000, now)]
        assert low <= min(recent) and max(recent) <= high, minutes
        assert low <= Decimal(stats["weightedAvgPrice"]) <= high
    # One window in full: its 172,800 trades' extremes are the statistics'.
    stats = market.ticker_24hr("XRPUSDT", NOW_MS)
    prices = [Decimal(t["price"]) for t in market.trades("XRPUSDT", stats["count"], NOW_MS)]
    assert len(prices) == stats["count"] > 172_000
    assert (min(prices), max(prices)) == (Decimal(stats["lowPrice"]), Decimal(stats["highPrice"]))
    assert prices[0] == Decimal(stats["openPrice"]) and prices[-1] == Decimal(stats["lastPrice"])


def test_ticker_24hr_agrees_with_the_trades() -> None:
    market = Market(seed=8)
    stats = market.ticker_24hr("ETHUSDT", NOW_MS)
    last = market.trades("ETHUSDT", 1, NOW_MS)[-1]
    assert (stats["lastId"], stats["lastPrice"], stats["lastQty"]) == (last["id"], last["price"], last["qty"])
    assert stats["count"] == stats["lastId"] - stats["firstId"] + 1
    assert stats["closeTime"] - stats["openTime"] == 86_400_000
    high, low = Decimal(stats["highPrice"]), Decimal(stats["lowPrice"])
    assert low <= Decimal(stats["lastPrice"]) <= high and low <= Decimal(stats["openPrice"]) <= high
    assert Decimal(stats["priceChange"]) == Decimal(stats["lastPrice"]) - Decimal(stats["openPrice"])
    assert Decimal(stats["bidPrice"]) < Decimal(stats["askPrice"])
    assert stats == market.ticker_24hr("ETHUSDT", NOW_MS)
    assert market.ticker_price("ETHUSDT", NOW_MS)["price"] == stats["lastPrice"]


def test_kline_volume_and_count_are_the_sum_of_its_trades() -> None:
    market = Market(seed=9)
    minute = kline_open_time(NOW_MS, "1m") - 60_000  # the last closed 1m candle
    kline = market.klines("ETHUSDT", "1m", 1, minute, None, NOW_MS)[0]
    trades = [t for t in market.trades("ETHUSDT", 1000, NOW_MS) if minute <= t["time"] <= kline[6]]
    assert trades[0]["time"] - minute < 1000, "all of the candle's trades are in the page"
    assert kline[8] == len(trades)
    assert (kline[1], kline[4]) == (trades[0]["price"], trades[-1]["price"])
    assert Decimal(kline[5]) == pytest.approx(sum(Decimal(t["qty"]) for t in trades), abs=Decimal("1e-6"))


def test_depth_is_ordered_with_bids_below_asks_and_update_ids_grow() -> None:
    market = Market(seed=10)
    book = market.depth("XRPUSDT", 50, NOW_MS)
    bids = [Decimal(p) for p, _ in book["bids"]]
    asks = [Decimal(p) for p, _ in book["asks"]]
    assert len(bids) == len(asks) == 50
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] < asks[0]
    assert market.depth("XRPUSDT", 5, NOW_MS + 1_000)["lastUpdateId"] > book["lastUpdateId"]


def test_sim_clock_speeds_up_and_only_moves_forward() -> None:
    base = [100.0]
    clock = SimClock(lambda: base[0], scale=60.0)
    base[0] += 1.0
    assert clock.now() == pytest.approx(160.0)
    clock.advance(40)
    assert clock.now() == pytest.approx(200.0)
    assert clock.to_base_seconds(120) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        clock.advance(-1)


# --- the simulator's own limit -------------------------------------------------------------------------

def test_over_the_limit_429_then_418_for_carrying_on() -> None:
    base = [1_767_225_600.0 + 10]  # 10 s into a minute
    server, url = start_simulator(port=0, weight_limit=30, clock=lambda: base[0])
    try:
        trades = {"symbol": "BTCUSDT"}
        assert requests.get(url + "/api/v3/trades", params=trades, timeout=5).status_code == 200
        over = requests.get(url + "/api/v3/trades", params=trades, timeout=5)
        assert over.status_code == 429 and over.json()["code"] == -1003
        assert over.headers["Retry-After"] == "50"  # to the next minute
        again = requests.get(url + "/api/v3/ticker/price", params={"symbol": "BTCUSDT"}, timeout=5)
        assert again.status_code == 418 and "banned until" in again.json()["msg"]
        stats = requests.get(url + "/_sim/stats", timeout=5).json()
        assert stats["violations"] == 1 and stats["statuses"] == {"200": 1, "429": 1, "418": 1}
    finally:
        server.stop()


# --- faults and the control API -----------------------------------------------------------------------

def test_faults_are_scoped_counted_and_used_up(sim: SimulatorServer) -> None:
    post(sim, "/_sim/faults", {"mode": "503", "count": 2, "endpoint": "/api/v3/depth"})
    assert get(sim, "/api/v3/ticker/price", symbol="BTCUSDT").status_code == 200  # other endpoint
    assert [get(sim, "/api/v3/depth", symbol="BTCUSDT").status_code for _ in range(3)] == [503, 503, 200]
    assert requests.get(sim.base_url + "/_sim/faults", timeout=5).json() == {"faults": []}


def test_malformed_is_cut_json(sim: SimulatorServer) -> None:
    post(sim, "/_sim/faults", {"mode": "malformed"})
    response = get(sim, "/api/v3/trades", symbol="BTCUSDT", limit=5)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_garbage_numbers_and_missing_field_hit_the_first_record(sim: SimulatorServer) -> None:
    post(sim, "/_sim/faults", [{"mode": "garbage_numbers", "endpoint": "trades"},
                               {"mode": "missing_field", "endpoint": "klines"},
                               {"mode": "missing_field", "endpoint": "ticker/24hr", "field": "volume"}])
    trades = get(sim, "/api/v3/trades", symbol="BTCUSDT", limit=3).json()
    assert trades[0]["price"] == trades[0]["qty"] == "abc" and trades[0]["id"] > 0
    assert DECIMAL8.fullmatch(trades[1]["price"])
    klines = get(sim, "/api/v3/klines", symbol="BTCUSDT", interval="1m", limit=2).json()
    assert (len(klines[0]), len(klines[1])) == (11, 12)
    assert "volume" not in get(sim, "/api/v3/ticker/24hr", symbol="BTCUSDT").json()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [({"mode": "explode"}, "unknown mode"), ({"mode": "500", "count": 0}, "count"),
     ({"mode": "429", "retry_after": "soon"}, "soon"),
     ({"mode": "500", "colour": "red"}, "unknown fault keys")],
)
def test_bad_control_input_is_a_400(sim: SimulatorServer, spec: dict[str, Any], problem: str) -> None:
    response = requests.post(sim.base_url + "/_sim/faults", json=spec, timeout=5)
    assert response.status_code == 400 and problem in response.json()["error"]
    assert sim.sim.faults() == []


def test_stats_count_requests_per_endpoint_and_reset_clears_them(sim: SimulatorServer) -> None:
    get(sim, "/api/v3/depth", symbol="BTCUSDT")
    get(sim, "/api/v3/depth", symbol="ETHUSDT")
    get(sim, "/api/v3/klines", symbol="ETHUSDT", interval="1h")
    stats = requests.get(sim.base_url + "/_sim/stats", timeout=5).json()
    assert stats["requests"] == {"/api/v3/depth": 2, "/api/v3/klines": 1} and stats["total"] == 3
    assert stats["weight_used_1m"] == 12 and stats["max_weight_per_minute"] == 12
    assert [r["symbol"] for r in stats["recent"]] == ["BTCUSDT", "ETHUSDT", "ETHUSDT"]
    post(sim, "/_sim/reset", {})
    stats = requests.get(sim.base_url + "/_sim/stats", timeout=5).json()
    assert stats["total"] == 0 and stats["weight_used_1m"] == 0


# --- the command line ---------------------------------------------------------------------------------

def test_a_market_costs_nothing_until_asked() -> None:
    # Starting the simulator precomputes no history; a price is a dozen blocks, not a walk from 2017.
    market = Market(seed=3)
    assert market.work() == 0
    market.ticker_price("BTCUSDT", NOW_MS)
    assert 0 < market.work() <= 30


def test_cli_starts_with_the_stdlib_only() -> None:
    code = (
        "import sys, producer.simulator; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'requests', 'orjson', 'tenacity', 'yaml'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    proc = subprocess.Popen([sys.executable, "-m", "producer.simulator", "--port", "0", "--seed", "3",
                             "--symbols", "BTCUSDT,DOGEUSDT"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # A guard against a hang, not a measure of speed: the line comes as soon as it listens.
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the simulator printed no address"
        line = proc.stdout.readline()
        url = re.search(r"http://[\d.]+:\d+", line)
        assert url, line
        body = requests.get(url.group(0) + "/api/v3/ticker/price", params={"symbol": "DOGEUSDT"}, timeout=5)
        assert body.status_code == 200 and DECIMAL8.fullmatch(body.json()["price"])
    finally:
        proc.terminate()
        proc.wait(timeout=5)
