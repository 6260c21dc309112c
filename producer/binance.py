"""The Binance REST client: five public market-data calls, rate-limited, retried, errors mapped.

Responses come back as parsed JSON, untouched: prices and quantities stay the strings Binance sends
(the producer turns them into Decimal itself), ids and times are ints.

What happens to a failed call:
- connection error, timeout, 5xx, or a body that is not JSON (usually a cut connection): retried with
  exponential backoff and jitter, up to `max_attempts` in all, then BinanceUnavailableError;
- 429 / 418: RateLimitedError at once, and no request at all goes to the host until Retry-After
  (or the 'banned until' time of a 418) has passed; calls made meanwhile fail the same way unsent;
- 451: RestrictedLocationError; code -1121: InvalidSymbolError; any other 4xx: BinanceAPIError.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from pipeline.config import BinanceConfig
from producer.errors import (
    BinanceAPIError,
    BinanceUnavailableError,
    InvalidSymbolError,
    MalformedRecordError,
    PermanentError,
    RateLimitedError,
    RestrictedLocationError,
)
from producer.ratelimit import (
    DEPTH,
    KLINES,
    TICKER_24HR,
    TICKER_PRICE,
    TRADES,
    RateLimiter,
    ban_seconds,
    request_weight,
)

__all__ = ["BinanceClient"]

log = logging.getLogger(__name__)

USER_AGENT = "binance-cdc/0.1 (+market-data producer)"
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
INVALID_SYMBOL = -1121


class _BadResponse(Exception):
    """A 5xx, or a 2xx whose body is not JSON: worth another attempt."""


# What another attempt can cure. ChunkedEncodingError and ContentDecodingError are bodies cut short.
_RETRYABLE = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    _BadResponse,
)


class BinanceClient:
    """One HTTP session to one Binance host (api.binance.com, data-api.binance.vision or the simulator).

    `limiter` defaults to a fresh RateLimiter with the config's budget; pass a shared one when several
    clients use the same host from this IP. Its clock and sleep are also used for the retry backoff, so a
    test's fake clock covers everything. `wall_clock` (epoch seconds) reads a 418's 'banned until <ms>'.
    """

    def __init__(
        self,
        config: BinanceConfig,
        *,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.host = urlsplit(config.base_url).netloc
        self._base_url = config.base_url.rstrip("/")
        self.limiter = limiter if limiter is not None else RateLimiter(config.weight_budget_per_minute)
        self._wall_clock = wall_clock
        self._timeout = (config.connect_timeout_seconds, config.read_timeout_seconds)
        self._session = session if session is not None else requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        self._weight_sent = 0
        self._weight_lock = threading.Lock()

    # --- the five calls -------------------------------------------------------------------------

    def ticker_price(self, symbol: str) -> dict[str, Any]:
        """GET /api/v3/ticker/price for one symbol: {"symbol", "price"}."""
        return self._object(TICKER_PRICE, symbol, {"symbol": symbol}, request_weight(TICKER_PRICE))

    def depth(self, symbol: str, limit: int) -> dict[str, Any]:
        """GET /api/v3/depth: {"lastUpdateId", "bids": [[price, qty], ...], "asks": [...]}."""
        params = {"symbol": symbol, "limit": limit}
        return self._object(DEPTH, symbol, params, request_weight(DEPTH, limit))

    def trades(self, symbol: str, limit: int) -> list[Any]:
        """GET /api/v3/trades: the most recent trades, oldest first."""
        params = {"symbol": symbol, "limit": limit}
        return self._array(TRADES, symbol, params, request_weight(TRADES))

    def klines(
        self,
        symbol: str,
        interval: str,
        limit: int,
        start_time_ms: int | None = None,
        end_time_ms: int | None = None,
    ) -> list[Any]:
        """GET /api/v3/klines: arrays of [open time, open, high, low, close, volume, close time, ...]."""
        params: dict[str, str | int] = {"symbol": symbol, "interval": interval, "limit": limit}
        if start_time_ms is not None:
            params["startTime"] = start_time_ms
        if end_time_ms is not None:
            params["endTime"] = end_time_ms
        return self._array(KLINES, symbol, params, request_weight(KLINES))

    def ticker_24hr(self, symbol: str) -> dict[str, Any]:
        """GET /api/v3/ticker/24hr for one symbol (the FULL response)."""
        return self._object(TICKER_24HR, symbol, {"symbol": symbol}, request_weight(TICKER_24HR))

    # --- state for log lines and the scheduler --------------------------------------------------

    @property
    def weight_used(self) -> int:
        """Request weight used on this host in the last minute (ours, or the server's figure if higher)."""
        return self.limiter.weight_used

    @property
    def weight_sent(self) -> int:
        """Request weight of every request this client has sent (retries included), ever.

        The difference across a piece of work is that work's own weight, whatever else shares the minute.
        """
        return self._weight_sent

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- one call: retries around attempts ------------------------------------------------------

    def _object(self, endpoint: str, symbol: str, params: dict[str, Any], weight: int) -> dict[str, Any]:
        body = self._get(endpoint, symbol, params, weight)
        if not isinstance(body, dict):
            raise MalformedRecordError(endpoint=endpoint, symbol=symbol, field="<response>",
                                       problem=f"expected a JSON object, got {type(body).__name__}")
        return body

    def _array(self, endpoint: str, symbol: str, params: dict[str, Any], weight: int) -> list[Any]:
        body = self._get(endpoint, symbol, params, weight)
        if not isinstance(body, list):
            raise MalformedRecordError(endpoint=endpoint, symbol=symbol, field="<response>",
                                       problem=f"expected a JSON array, got {type(body).__name__}")
        return body

    def _get(self, endpoint: str, symbol: str, params: dict[str, Any], weight: int) -> Any:
        if weight > self.limiter.budget:
            raise PermanentError(
                f"Binance {self.host} {endpoint} symbol={symbol}: request weight {weight} exceeds "
                f"weight_budget_per_minute={self.limiter.budget}; it could never be sent"
            )
        attempts = self.config.max_attempts
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(_RETRYABLE),
            sleep=self.limiter.sleep,
            before_sleep=lambda state: self._log_retry(state, endpoint, symbol),
            reraise=True,
        )
        try:
            return retrying(self._attempt, endpoint, symbol, params, weight)
        except _RETRYABLE as exc:
            raise BinanceUnavailableError(
                f"Binance {self.host} {endpoint} symbol={symbol}: no usable answer after "
                f"{attempts} attempt(s): {_describe(exc)}"
            ) from exc

    def _backoff(self, state: RetryCallState) -> float:
        """initial * 2**(n-1) plus up to half as much again at random, capped at backoff_max_seconds.

        The jitter keeps producers that failed together from retrying in lockstep.
        """
        base = self.config.backoff_initial_seconds * 2.0 ** (state.attempt_number - 1)
        return min(base * (1.0 + random.random() / 2), self.config.backoff_max_seconds)

    def _log_retry(self, state: RetryCallState, endpoint: str, symbol: str) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "Binance %s %s symbol=%s: attempt %d/%d failed (%s); retrying in %.2fs",
            self.host, endpoint, symbol, state.attempt_number, self.config.max_attempts,
            _describe(exc), delay,
        )

    # --- one attempt ----------------------------------------------------------------------------

    def _attempt(self, endpoint: str, symbol: str, params: dict[str, Any], weight: int) -> Any:
        self._refuse_if_paused(endpoint, symbol)
        self.limiter.acquire(weight)
        # Checked again: another thread may have met a 429 while we waited for budget.
        self._refuse_if_paused(endpoint, symbol)
        with self._weight_lock:
            self._weight_sent += weight
        try:
            response = self._session.get(self._base_url + endpoint, params=params, timeout=self._timeout)
        except _RETRYABLE:
            raise
        except requests.RequestException as exc:  # a bad URL, too many redirects...: retrying won't help
            raise PermanentError(
                f"Binance {self.host} {endpoint} symbol={symbol}: request failed: {_describe(exc)}"
            ) from exc
        self._observe_weight(response)
        status = response.status_code
        if 200 <= status < 300:
            try:
                # orjson leaves JSON strings as str, so "3866.44000000" reaches the producer intact.
                return orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                raise _BadResponse(
                    f"HTTP {status} body is not JSON ({len(response.content)} bytes): {exc}"
                ) from exc
        if status in (429, 418):
            raise self._pause(response, endpoint, symbol)
        if status >= 500:
            raise _BadResponse(f"HTTP {status} {_snippet(response)}")
        raise self._api_error(response, endpoint, symbol)

    def _refuse_if_paused(self, endpoint: str, symbol: str) -> None:
        ban = self.limiter.active_ban()
        if ban is not None:
            raise RateLimitedError(
                status=ban.status, host=self.host, until=ban.until,
                retry_after=max(ban.until - self.limiter.clock(), 0.0),
                msg=f"{endpoint} symbol={symbol} not sent; earlier: {ban.reason}",
            )

    def _observe_weight(self, response: requests.Response) -> None:
        value = response.headers.get(WEIGHT_HEADER)
        if value is not None and value.strip().isdigit():
            self.limiter.observe_server_weight(int(value))

    def _pause(self, response: requests.Response, endpoint: str, symbol: str) -> RateLimitedError:
        """Record the 429/418 pause for the whole host and build the error for this call."""
        status = response.status_code
        _, msg = _error_body(response)
        seconds = ban_seconds(status, response.headers.get("Retry-After"), msg, self._wall_clock())
        ban = self.limiter.ban(status, seconds, msg or f"HTTP {status}")
        log.warning("Binance %s answered HTTP %d to %s symbol=%s: sending nothing for %.1fs",
                    self.host, status, endpoint, symbol, ban.until - self.limiter.clock())
        return RateLimitedError(status=status, host=self.host, until=ban.until, retry_after=seconds,
                                msg=f"{endpoint} symbol={symbol}: {msg}")

    def _api_error(self, response: requests.Response, endpoint: str, symbol: str) -> BinanceAPIError:
        status = response.status_code
        code, msg = _error_body(response)
        kind = BinanceAPIError
        if status == 451:
            kind = RestrictedLocationError
        elif code == INVALID_SYMBOL:
            kind = InvalidSymbolError
        return kind(status=status, code=code, msg=msg or response.reason or "", host=self.host,
                    endpoint=endpoint, symbol=symbol)


def _error_body(response: requests.Response) -> tuple[int | None, str]:
    """(code, msg) of a Binance error body; (None, the start of the text) for anything else."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None, _snippet(response)
    if not isinstance(body, dict):
        return None, _snippet(response)
    code = body.get("code")
    msg = body.get("msg")
    return (code if isinstance(code, int) else None), (msg if isinstance(msg, str) else _snippet(response))


def _snippet(response: requests.Response, size: int = 200) -> str:
    text = " ".join(response.content[:size].decode("utf-8", "replace").split())
    return text + ("..." if len(response.content) > size else "")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
