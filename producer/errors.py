"""The producer's exceptions: one root, transient (retry later) and permanent (skip, log) told apart."""

from __future__ import annotations


class ProducerError(Exception):
    """Root of every error the producer raises."""


class TransientError(ProducerError):
    """Worth retrying later: the network, a 5xx, a rate limit, a ban, PostgreSQL being away."""


class PermanentError(ProducerError):
    """Retrying the same request cannot help: a 4xx, an unknown symbol, a malformed record."""


class BinanceAPIError(PermanentError):
    """Binance answered with a 4xx error body `{"code": ..., "msg": ...}`."""

    def __init__(self, *, status: int, code: int | None, msg: str, host: str, endpoint: str,
                 symbol: str | None) -> None:
        self.status, self.code, self.msg = status, code, msg
        self.host, self.endpoint, self.symbol = host, endpoint, symbol
        super().__init__(
            f"Binance {host} {endpoint} symbol={symbol or '-'}: HTTP {status} code={code} {msg}"
        )


class InvalidSymbolError(BinanceAPIError):
    """Binance does not list this symbol (code -1121): skip it, the other symbols go on."""


class RestrictedLocationError(BinanceAPIError):
    """HTTP 451: this host refuses our location; use https://data-api.binance.vision or api.binance.us."""


class RateLimitedError(TransientError):
    """HTTP 429 or 418: no request may go to `host` before `until` (a time.monotonic() value)."""

    def __init__(self, *, status: int, host: str, until: float, retry_after: float, msg: str = "") -> None:
        self.status, self.host, self.until, self.retry_after = status, host, until, retry_after
        kind = "banned" if status == 418 else "rate limited"
        super().__init__(f"Binance {host} {kind} (HTTP {status}) for {retry_after:.0f}s: {msg}".rstrip(": "))


class BinanceUnavailableError(TransientError):
    """Connection error, timeout or 5xx after every retry."""


class MalformedRecordError(PermanentError):
    """One record of a response is unusable; the rest of the batch is still loaded."""

    def __init__(self, *, endpoint: str, symbol: str | None, field: str, problem: str) -> None:
        self.endpoint, self.symbol, self.field, self.problem = endpoint, symbol, field, problem
        super().__init__(f"{endpoint} symbol={symbol or '-'} field {field}: {problem}")


class DatabaseError(TransientError):
    """PostgreSQL refused or lost the connection; the cycle is retried on the next tick."""
