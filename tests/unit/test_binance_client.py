"""BinanceClient against the simulator on 127.0.0.1: error mapping, retry policy, parsing, weight."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fake_clock import FakeClock

from pipeline.config import BinanceConfig
from producer.binance import BinanceClient
from producer.errors import (
    BinanceAPIError,
    BinanceUnavailableError,
    InvalidSymbolError,
    MalformedRecordError,
    PermanentError,
    RateLimitedError,
    RestrictedLocationError,
    TransientError,
)
from producer.ratelimit import RateLimiter
from producer.simulator import SimulatorServer, start_simulator


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    server, _ = start_simulator(port=0, seed=11)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatorServer) -> None:
    sim.sim.reset()


class Sleeps:
    """Records the waits asked for, and waits for real (they are small here)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def config(base_url: str, **overrides: Any) -> BinanceConfig:
    settings: dict[str, Any] = {
        "base_url": base_url,
        "symbols": ("BTCUSDT",),
        "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 2.0,
        "max_attempts": 3,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.03,
        "weight_budget_per_minute": 1200,
    }
    settings.update(overrides)
    return BinanceConfig(**settings)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sim: SimulatorServer, sleeps: Sleeps) -> Iterator[BinanceClient]:
    limiter = RateLimiter(1200, sleep=sleeps)
    with BinanceClient(config(sim.base_url), limiter=limiter) as c:
        yield c


def fault(sim: SimulatorServer, **spec: Any) -> None:
    response = requests.post(sim.base_url + "/_sim/faults", json=spec, timeout=5)
    assert response.status_code == 200, response.text


def sent(sim: SimulatorServer) -> int:
    return int(sim.sim.stats()["total"])


# --- parsing: JSON as Binance sent it ---------------------------------------------------------------

def test_numbers_stay_strings_and_ids_stay_ints(client: BinanceClient) -> None:
    price = client.ticker_price("BTCUSDT")
    assert set(price) == {"symbol", "price"} and isinstance(price["price"], str)
    trade = client.trades("BTCUSDT", 3)[-1]
    assert isinstance(trade["id"], int) and isinstance(trade["time"], int)
    assert isinstance(trade["price"], str) and isinstance(trade["isBuyerMaker"], bool)
    kline = client.klines("BTCUSDT", "1m", 2)[0]
    assert isinstance(kline[0], int) and isinstance(kline[1], str) and isinstance(kline[8], int)
    book = client.depth("BTCUSDT", 5)
    assert isinstance(book["lastUpdateId"], int) and isinstance(book["bids"][0][0], str)
    assert isinstance(client.ticker_24hr("BTCUSDT")["lastPrice"], str)


def test_klines_sends_start_and_end_time(client: BinanceClient) -> None:
    start = 1_704_067_200_000  # 2024-01-01
    klines = client.klines("BTCUSDT", "1h", 5, start_time_ms=start, end_time_ms=start + 2 * 3_600_000)
    assert [k[0] for k in klines] == [start, start + 3_600_000, start + 7_200_000]


def test_garbage_is_passed_through_untouched(sim: SimulatorServer, client: BinanceClient) -> None:
    # Converting (and rejecting) values is the producer's job; the client must not "fix" anything.
    fault(sim, mode="garbage_numbers", endpoint="/api/v3/ticker/price")
    assert client.ticker_price("BTCUSDT")["price"] == "abc"


def test_a_body_of_the_wrong_shape_is_a_malformed_record(sim: SimulatorServer, client: BinanceClient) -> None:
    # Without a symbol Binance answers every symbol as a list; a client expecting an object must say so.
    with pytest.raises(MalformedRecordError, match="expected a JSON object"):
        client._object("/api/v3/ticker/price", "-", {}, 4)


# --- error mapping ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("spec", "error", "code"),
    [
        ({"mode": "error", "status": 400, "code": -1121, "msg": "Invalid symbol."}, InvalidSymbolError,
         -1121),
        ({"mode": "451"}, RestrictedLocationError, 0),
        ({"mode": "error", "status": 400, "code": -1100, "msg": "Illegal characters"}, BinanceAPIError,
         -1100),
        ({"mode": "error", "status": 403, "code": -2015, "msg": "Forbidden"}, BinanceAPIError, -2015),
        ({"mode": "error", "status": 404, "body": "<html>Not Found</html>"}, BinanceAPIError, None),
    ],
)
def test_4xx_maps_to_a_permanent_error_and_is_not_retried(
    sim: SimulatorServer, client: BinanceClient, spec: dict[str, Any], error: type[BinanceAPIError],
    code: int | None,
) -> None:
    fault(sim, **spec)
    with pytest.raises(error) as caught:
        client.depth("BTCUSDT", 10)
    exc = caught.value
    assert type(exc) is error
    assert isinstance(exc, PermanentError)
    assert (exc.status, exc.code) == (spec.get("status", 451), code)
    assert (exc.host, exc.endpoint, exc.symbol) == (client.host, "/api/v3/depth", "BTCUSDT")
    assert client.host in str(exc) and "/api/v3/depth" in str(exc) and "BTCUSDT" in str(exc)
    assert sent(sim) == 1


def test_an_unknown_symbol_names_itself(sim: SimulatorServer, client: BinanceClient) -> None:
    with pytest.raises(InvalidSymbolError) as caught:
        client.trades("NOSUCHCOIN", 10)
    assert caught.value.code == -1121 and caught.value.symbol == "NOSUCHCOIN"
    assert "NOSUCHCOIN" in str(caught.value) and "/api/v3/trades" in str(caught.value)


@pytest.mark.parametrize("status", [429, 418])
def test_429_and_418_raise_at_once_and_pause_the_host(
    sim: SimulatorServer, sleeps: Sleeps, status: int
) -> None:
    fault(sim, mode=str(status), retry_after=30)
    clock = FakeClock(1000.0)
    limiter = RateLimiter(1200, clock=clock, sleep=sleeps)
    with BinanceClient(config(sim.base_url), limiter=limiter) as client:
        with pytest.raises(RateLimitedError) as caught:
            client.klines("BTCUSDT", "1m", 5)
        # Every wait of the client goes through the limiter's sleep: none means it did not sleep through
        # the Retry-After (nor retry), it raised at once.
        assert sleeps.waits == []
        exc = caught.value
        assert isinstance(exc, TransientError)
        assert exc.status == status and exc.host == client.host
        assert exc.retry_after == 30 and exc.until == 1030.0
        assert "/api/v3/klines" in str(exc) and "BTCUSDT" in str(exc)
        # Another endpoint, another symbol: refused without a request, until the pause is over.
        clock.now = 1029.9
        with pytest.raises(RateLimitedError, match="not sent"):
            client.ticker_price("ETHUSDT")
        assert sent(sim) == 1
        clock.now = 1030.0
        sim.sim.reset()  # the simulator keeps its own pause, on its real clock
        assert client.ticker_price("ETHUSDT")["symbol"] == "ETHUSDT"
        assert sent(sim) == 1 and sleeps.waits == []


def test_418_banned_until_beyond_retry_after_wins(sim: SimulatorServer, sleeps: Sleeps) -> None:
    wall = 1_767_225_600.0  # the 418's 'banned until <ms>' is read against the wall clock
    fault(sim, mode="418", retry_after=2, banned_until_ms=int((wall + 300) * 1000))
    limiter = RateLimiter(1200, clock=FakeClock(50.0), sleep=sleeps)
    with BinanceClient(config(sim.base_url), limiter=limiter, wall_clock=lambda: wall) as client, \
            pytest.raises(RateLimitedError) as caught:
        client.ticker_price("BTCUSDT")
    assert caught.value.retry_after == 300
    assert caught.value.until == 350.0


# --- retry policy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["500", "502", "503", "504", "malformed", "disconnect"])
def test_retryable_failures_are_retried_then_succeed(
    sim: SimulatorServer, client: BinanceClient, sleeps: Sleeps, mode: str
) -> None:
    fault(sim, mode=mode, count=2)
    assert client.ticker_price("BTCUSDT")["symbol"] == "BTCUSDT"
    assert sent(sim) == 3
    assert len(sleeps.waits) == 2


def test_backoff_grows_with_jitter_within_bounds(sim: SimulatorServer, sleeps: Sleeps) -> None:
    cfg = config(sim.base_url, max_attempts=5, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
    fault(sim, mode="503", count=-1)
    with BinanceClient(cfg, limiter=RateLimiter(1200, sleep=sleeps)) as c, \
            pytest.raises(BinanceUnavailableError):
        c.ticker_price("BTCUSDT")
    assert len(sleeps.waits) == 4
    for n, wait in enumerate(sleeps.waits):
        base = min(0.01 * 2**n, 0.05)
        assert base <= wait <= min(base * 1.5, 0.05) + 1e-9, (n, wait)


def test_after_the_last_attempt_unavailable_wraps_the_cause(
    sim: SimulatorServer, client: BinanceClient
) -> None:
    fault(sim, mode="500", count=-1)
    with pytest.raises(BinanceUnavailableError) as caught:
        client.trades("ETHUSDT", 5)
    assert sent(sim) == 3
    message = str(caught.value)
    assert "3 attempt" in message and "/api/v3/trades" in message and "ETHUSDT" in message
    assert "HTTP 500" in message
    assert caught.value.__cause__ is not None


def test_truncated_json_every_time_is_unavailable(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim, mode="malformed", count=-1)
    with pytest.raises(BinanceUnavailableError, match="not JSON"):
        client.depth("BTCUSDT", 5)
    assert sent(sim) == 3


class RecordingSession(requests.Session):
    """Records the timeout every GET was given and how it ended (a status, or the exception's type)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any]] = []

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        try:
            response = super().get(url, **kwargs)
        except Exception as exc:
            self.calls.append((kwargs.get("timeout"), type(exc)))
            raise
        self.calls.append((kwargs.get("timeout"), response.status_code))
        return response


def test_a_read_timeout_is_retried(sim: SimulatorServer, sleeps: Sleeps) -> None:
    cfg = config(sim.base_url, read_timeout_seconds=0.3)
    fault(sim, mode="slow", delay=2.0)
    session = RecordingSession()
    with BinanceClient(cfg, session=session, limiter=RateLimiter(1200, sleep=sleeps)) as c:
        assert c.ticker_price("BTCUSDT")["symbol"] == "BTCUSDT"
    # The first attempt gave up on the slow answer at the read timeout it was given (not waiting the
    # 2 s out); the second, after one backoff, got the answer.
    assert session.calls == [((1.0, 0.3), requests.exceptions.ReadTimeout), ((1.0, 0.3), 200)]
    assert len(sleeps.waits) == 1
    assert sent(sim) == 2


def test_connection_refused_is_unavailable(sleeps: Sleeps) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with BinanceClient(config(f"http://127.0.0.1:{port}"), limiter=RateLimiter(1200, sleep=sleeps)) as c, \
            pytest.raises(BinanceUnavailableError) as caught:
        c.ticker_price("BTCUSDT")
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert len(sleeps.waits) == 2


def test_4xx_inside_a_retry_run_stops_it(sim: SimulatorServer, client: BinanceClient) -> None:
    fault(sim, mode="503")
    fault(sim, mode="error", status=400, code=-1100, msg="Illegal characters")
    with pytest.raises(BinanceAPIError):
        client.ticker_price("BTCUSDT")
    assert sent(sim) == 2


# --- weight ----------------------------------------------------------------------------------------

def test_weight_used_counts_what_was_sent(client: BinanceClient) -> None:
    client.depth("BTCUSDT", 20)  # 5
    client.trades("BTCUSDT", 10)  # 25
    assert client.weight_used == 30


def test_weight_used_follows_a_higher_server_figure(sim: SimulatorServer, client: BinanceClient) -> None:
    sim.sim.add_weight(400)  # other clients on "our IP"
    client.ticker_price("BTCUSDT")
    assert client.weight_used == 402


def test_a_call_heavier_than_the_budget_is_refused_unsent(sim: SimulatorServer) -> None:
    with BinanceClient(config(sim.base_url, weight_budget_per_minute=100)) as c, \
            pytest.raises(PermanentError, match="exceeds"):
        c.depth("BTCUSDT", 5000)  # weight 250
    assert sent(sim) == 0
