"""A local stand-in for Binance's public market-data REST API, for tests and demos. Stdlib only.

    python -m producer.simulator --port 8090 [--host 127.0.0.1] [--seed N] [--symbols BTCUSDT,ETHUSDT]
                                 [--weight-limit 6000] [--time-scale 1.0] [--ban-seconds 120]

Market endpoints (paths, parameters, shapes and JSON types as on api.binance.com; data from
`producer.simulator_data`, deterministic per seed and time):

    GET /api/v3/ticker/price   symbol (omitted: every symbol, as a list)
    GET /api/v3/depth          symbol, limit (default 100, at most 5000)
    GET /api/v3/trades         symbol, limit (default 500, at most 1000)
    GET /api/v3/klines         symbol, interval, limit (default 500, at most 1000), startTime, endTime
                               (candles with startTime <= open time <= endTime, oldest first; without
                               startTime, the newest `limit` of them; history back to 2017-08-17)
    GET /api/v3/ticker/24hr    symbol (omitted: every symbol, as a list)

Every answer carries X-MBX-USED-WEIGHT-1M (and X-MBX-USED-WEIGHT): the weight counted in the current
minute of simulated time, with Binance's weights. Over `--weight-limit` in a minute: HTTP 429 with
Retry-After (seconds to the next minute). A request that arrives while a 429's or 418's Retry-After is
still running is a *violation*: it is counted, and answered 418 (an IP ban of `--ban-seconds`), as
Binance escalates. Errors use Binance's bodies: unknown symbol -> 400 {"code":-1121,"msg":"Invalid symbol."},
bad interval -> -1120, missing parameter -> -1102, bad number -> -1100.

Time: real time, sped up by `--time-scale` (60 = a simulated minute per real second), plus whatever was
added through /_sim/time. A test can instead inject the base clock (`start_simulator(clock=...)`).
Retry-After and 418's 'banned until <ms>' are given in base-clock time, i.e. what a client waits.

Control API (JSON in, JSON out; never rate-limited, never counted in the stats):

    POST /_sim/faults   one fault or a list, queued in order; each request takes the first fault whose
                        scope matches it, and uses it up after `count` requests:
                        {"mode": "429", "count": 3, "retry_after": 2, "endpoint": "/api/v3/depth"}
        mode            "429" | "418" (with Retry-After `retry_after`, default 1 s; a 418's msg says
                        'banned until <ms>', `banned_until_ms` to choose it)
                        "500" | "502" | "503" | "504"   an HTTP error with a short HTML body
                        "451"                           restricted location, body code 0
                        "error"        any status/code/msg: {"status": 400, "code": -1100, "msg": "..."}
                                       or a raw text body with {"status": 404, "body": "Not Found"}
                        "slow"         answer normally after `delay` seconds (default 1)
                        "malformed"    a 200 whose JSON body is cut in half
                        "disconnect"   close the connection without answering
                        "garbage_numbers"  decimal strings become `value` (default "abc")
                        "missing_field"    drop `field` (a key, or for kline arrays an index; default: the
                                           price field / the 5th kline item / lastUpdateId)
        count           requests affected (default 1; -1: until reset)
        endpoint        only requests to this path (e.g. "/api/v3/depth"); symbol: only this symbol
        all_records     garbage_numbers / missing_field: every record, not just the first
    GET  /_sim/faults   the faults still queued
    POST /_sim/reset    drop faults, counters, weight and any ban (simulated time keeps going)
    GET  /_sim/stats    {"total", "requests": {path: n}, "statuses": {"200": n}, "violations",
                        "weight_limit", "weight_used_1m", "max_weight_per_minute",
                        "weight_by_minute": {minute start ms: weight} (the last 2 h),
                        "blocked_until_ms", "now_ms", "recent": [{"t", "sim_ms", "path", "symbol",
                        "status", "weight"}, ...] (the last 2000)}
                        ("t" is time.monotonic() when the request arrived: in-process tests compare it)
    GET  /_sim/time     {"now_ms"}
    POST /_sim/time     {"advance": seconds}: jump simulated time forward (klines roll over at once)
    POST /_sim/weight   {"add": n}: weight used by "other clients on the same IP" this minute

In a test process:

    server, base_url = start_simulator(port=0, seed=1)
    ...
    server.stop()
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from producer.simulator_data import DEFAULT_SYMBOLS, INTERVALS, Market

__all__ = ["SimClock", "Simulator", "SimulatorServer", "main", "start_simulator", "stop_simulator"]

TICKER_PRICE = "/api/v3/ticker/price"
DEPTH = "/api/v3/depth"
TRADES = "/api/v3/trades"
KLINES = "/api/v3/klines"
TICKER_24HR = "/api/v3/ticker/24hr"
ENDPOINTS = (TICKER_PRICE, DEPTH, TRADES, KLINES, TICKER_24HR)

# The simulator's own copy of Binance's weights: it plays the server, so it must not share the client's
# table (a wrong table would then fool both sides alike).
_DEPTH_BANDS = ((100, 5), (500, 25), (1000, 50), (5000, 250))
_ALL_SYMBOLS_WEIGHT = {TICKER_PRICE: 4, TICKER_24HR: 80}
_WEIGHT = {TICKER_PRICE: 2, TRADES: 25, KLINES: 2, TICKER_24HR: 2}
_MAX_LIMIT = {DEPTH: 5000, TRADES: 1000, KLINES: 1000}
_DEFAULT_LIMIT = {DEPTH: 100, TRADES: 500, KLINES: 500}

_DECIMAL = re.compile(r"-?\d+\.\d+")
_DEFAULT_MISSING: dict[str, str | int] = {
    TICKER_PRICE: "price", DEPTH: "lastUpdateId", TRADES: "price", KLINES: 4, TICKER_24HR: "lastPrice"
}
_MANDATORY = "Mandatory parameter '{}' was not sent, was empty/null, or malformed."
_MODES = {"429", "418", "451", "500", "502", "503", "504", "error", "slow", "malformed", "disconnect",
          "garbage_numbers", "missing_field"}


def _weight(path: str, params: dict[str, str]) -> int:
    if path in _ALL_SYMBOLS_WEIGHT and "symbol" not in params:
        return _ALL_SYMBOLS_WEIGHT[path]
    if path == DEPTH:
        limit = _int_or(params.get("limit"), _DEFAULT_LIMIT[DEPTH])
        return next((w for top, w in _DEPTH_BANDS if limit <= top), _DEPTH_BANDS[-1][1])
    return _WEIGHT[path]


def _int_or(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


class SimClock:
    """Simulated epoch seconds: base clock, sped up by `scale` from the start, plus manual advances."""

    def __init__(self, base: Callable[[], float] = time.time, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("time scale must be > 0")
        self.base, self.scale = base, scale
        self._start = base()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._start + (self.base() - self._start) * self.scale + self._offset

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward (trade ids must only grow)")
        with self._lock:
            self._offset += seconds

    def to_base_seconds(self, sim_seconds: float) -> float:
        """How long a client (on the base clock) waits for `sim_seconds` of simulated time to pass."""
        return sim_seconds / self.scale


@dataclass
class Fault:
    mode: str
    count: int = 1
    endpoint: str | None = None
    symbol: str | None = None
    retry_after: float = 1.0
    banned_until_ms: int | None = None
    delay: float = 1.0
    status: int = 400
    code: int | None = None
    msg: str = ""
    body: str | None = None
    value: str = "abc"
    field: str | int | None = None
    all_records: bool = False

    @classmethod
    def parse(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("a fault is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        fault = cls(**data)
        fault.mode = str(fault.mode)
        if fault.mode not in _MODES:
            raise ValueError(f"unknown mode {fault.mode!r}; known: {sorted(_MODES)}")
        # Coerce here, so a bad value is the control call's 400 and not a crash mid-request later.
        fault.count, fault.status = int(fault.count), int(fault.status)
        fault.retry_after, fault.delay = float(fault.retry_after), float(fault.delay)
        if fault.count < 1 and fault.count != -1:
            raise ValueError("count must be >= 1, or -1 for 'until reset'")
        if fault.retry_after < 0 or fault.delay < 0:
            raise ValueError("retry_after and delay must be >= 0")
        if fault.code is not None:
            fault.code = int(fault.code)
        if fault.banned_until_ms is not None:
            fault.banned_until_ms = int(fault.banned_until_ms)
        if fault.endpoint is not None and not fault.endpoint.startswith("/"):
            fault.endpoint = "/api/v3/" + fault.endpoint
        return fault

    def matches(self, path: str, symbol: str | None) -> bool:
        return (self.endpoint in (None, path)) and (self.symbol in (None, symbol))


@dataclass
class _Block:
    """A running 429/418 pause: requests before `until` (simulated seconds) are violations."""

    status: int
    until: float


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False


class Simulator:
    """The state behind the HTTP server: market, clock, weight counters, faults, stats. Thread-safe."""

    def __init__(
        self,
        *,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        seed: int = 0,
        weight_limit: int = 6000,
        clock: SimClock | None = None,
        ban_seconds: float = 120.0,
    ) -> None:
        self.market = Market(symbols, seed)
        self.clock = clock or SimClock()
        self.weight_limit = weight_limit
        self.ban_seconds = ban_seconds
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._faults: list[Fault] = []
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[str] = Counter()
            self._violations = 0
            self._weight_by_minute: dict[int, int] = {}  # the last two hours, by minute number
            self._max_weight = 0
            self._block: _Block | None = None
            self._recent: deque[dict[str, Any]] = deque(maxlen=2000)

    # --- control ----------------------------------------------------------------------------------

    def add_faults(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]

    def add_weight(self, weight: int) -> None:
        with self._lock:
            self._count_weight(self.clock.now_ms() // 60_000, weight)

    def _count_weight(self, minute: int, weight: int) -> int:
        """Under the lock: add to a minute's weight; returns that minute's total."""
        used = self._weight_by_minute.get(minute, 0) + weight
        self._weight_by_minute[minute] = used
        self._max_weight = max(self._max_weight, used)
        for old in [m for m in self._weight_by_minute if m < minute - 120]:
            del self._weight_by_minute[old]
        return used

    def stats(self) -> dict[str, Any]:
        with self._lock:
            now_ms = self.clock.now_ms()
            block = self._block
            return {
                "now_ms": now_ms,
                "total": sum(self._requests.values()),
                "requests": dict(self._requests),
                "statuses": dict(self._statuses),
                "violations": self._violations,
                "weight_limit": self.weight_limit,
                "weight_used_1m": self._weight_by_minute.get(now_ms // 60_000, 0),
                "max_weight_per_minute": self._max_weight,
                "weight_by_minute": {str(m * 60_000): w for m, w in sorted(self._weight_by_minute.items())},
                "blocked_until_ms": (
                    int(block.until * 1000) if block and block.until * 1000 > now_ms else None
                ),
                "recent": list(self._recent),
            }

    # --- one market request -------------------------------------------------------------------------

    def handle(self, path: str, params: dict[str, str]) -> _Reply:
        arrived = time.monotonic()
        now = self.clock.now()
        symbol = params.get("symbol")
        with self._lock:
            self._requests[path] += 1
            reply, weight, fault = self._admit(path, params, symbol, now)
        if reply is None:
            reply = self._answer(path, params, int(now * 1000), fault)
        with self._lock:
            used = self._weight_by_minute.get(int(now * 1000) // 60_000, 0)
            self._statuses[str(reply.status)] += 1
            self._recent.append({"t": arrived, "sim_ms": int(now * 1000), "path": path, "symbol": symbol,
                                 "status": reply.status, "weight": weight})
        reply.headers.setdefault("X-MBX-USED-WEIGHT-1M", str(used))
        reply.headers.setdefault("X-MBX-USED-WEIGHT", str(used))
        return reply

    def _admit(self, path: str, params: dict[str, str], symbol: str | None,
               now: float) -> tuple[_Reply | None, int, Fault | None]:
        """Under the lock: a running pause, the weight limit, then the fault queue."""
        block = self._block
        if block is not None and now < block.until:
            self._violations += 1
            if block.status == 429:  # carrying on after a 429 is what earns a 418
                ban_until = now + self.ban_seconds
                self._block = _Block(418, ban_until)
                return self._too_much(418, ban_until - now), 0, None
            return self._too_much(418, block.until - now), 0, None
        weight = _weight(path, params)
        minute = int(now * 1000) // 60_000
        used = self._count_weight(minute, weight)
        fault = next((f for f in self._faults if f.matches(path, symbol)), None)
        if fault is not None:
            if fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
            if fault.mode in ("429", "418"):
                retry_after = fault.retry_after * self.clock.scale
                pause = retry_after
                if fault.banned_until_ms is not None:  # a ban that outlasts Retry-After is enforced too
                    pause = max(pause, (fault.banned_until_ms / 1000 - self.clock.base()) * self.clock.scale)
                self._block = _Block(int(fault.mode), now + pause)
                return self._too_much(int(fault.mode), retry_after, fault.banned_until_ms), weight, fault
        if used > self.weight_limit:
            next_minute = (minute + 1) * 60.0
            self._block = _Block(429, next_minute)
            return self._too_much(429, next_minute - now), weight, None
        return None, weight, fault

    def _too_much(self, status: int, sim_seconds: float, banned_until_ms: int | None = None) -> _Reply:
        wait = max(1, math.ceil(self.clock.to_base_seconds(sim_seconds)))
        if status == 418:
            until = banned_until_ms or int((self.clock.base() + wait) * 1000)
            msg = (f"Way too much request weight used; IP banned until {until}. "
                   "Please use WebSocket Streams for live updates to avoid bans.")
        else:
            msg = (f"Too much request weight used; current limit is {self.weight_limit} request weight "
                   "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.")
        return _Reply(status, _json({"code": -1003, "msg": msg}), {"Retry-After": str(wait)})

    def _answer(self, path: str, params: dict[str, str], now_ms: int, fault: Fault | None) -> _Reply:
        mode = fault.mode if fault is not None else None
        if fault is not None and mode in ("500", "502", "503", "504"):
            return _Reply(int(mode), f"<html><body><h1>{mode} Server Error</h1></body></html>".encode(),
                          {"Content-Type": "text/html"})
        if fault is not None and mode == "451":
            msg = "Service unavailable from a restricted location (simulated)."
            return _Reply(451, _json({"code": 0, "msg": msg}))
        if fault is not None and mode == "error":
            if fault.body is not None:
                return _Reply(fault.status, fault.body.encode(), {"Content-Type": "text/plain"})
            return _Reply(fault.status, _json({"code": fault.code, "msg": fault.msg}))
        if fault is not None and mode == "disconnect":
            return _Reply(0, b"", disconnect=True)
        try:
            payload = self._market(path, params, now_ms)
        except _ApiError as exc:
            return _Reply(exc.status, _json({"code": exc.code, "msg": exc.msg}))
        delay = 0.0
        if fault is not None:
            if mode in ("garbage_numbers", "missing_field"):
                payload = _corrupt(payload, path, fault)
            elif mode == "slow":
                delay = fault.delay
        body = _json(payload)
        if mode == "malformed":
            body = body[: len(body) // 2]
        return _Reply(200, body, delay=delay)

    def _market(self, path: str, params: dict[str, str], now_ms: int) -> Any:
        market = self.market
        symbol = params.get("symbol")
        if symbol is None and path in (TICKER_PRICE, TICKER_24HR):
            if path == TICKER_PRICE:
                return [market.ticker_price(s, now_ms) for s in market.symbols]
            return [market.ticker_24hr(s, now_ms) for s in market.symbols]
        if not symbol:
            raise _ApiError(-1102, _MANDATORY.format("symbol"))
        if not market.has(symbol):
            raise _ApiError(-1121, "Invalid symbol.")
        if path == TICKER_PRICE:
            return market.ticker_price(symbol, now_ms)
        if path == TICKER_24HR:
            return market.ticker_24hr(symbol, now_ms)
        limit = _param_int(params, "limit")
        limit = _DEFAULT_LIMIT[path] if limit is None else limit
        if limit < 1:
            raise _ApiError(-1130, "Invalid data sent for a parameter.")
        limit = min(limit, _MAX_LIMIT[path])  # the simulator's choice: cap an over-large limit
        if path == DEPTH:
            return market.depth(symbol, limit, now_ms)
        if path == TRADES:
            return market.trades(symbol, limit, now_ms)
        interval = params.get("interval")
        if not interval:
            raise _ApiError(-1102, _MANDATORY.format("interval"))
        if interval not in INTERVALS:
            raise _ApiError(-1120, "Invalid interval.")
        start, end = _param_int(params, "startTime"), _param_int(params, "endTime")
        return market.klines(symbol, interval, limit, start, end, now_ms)


class _ApiError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = 400, code, msg


def _param_int(params: dict[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not re.fullmatch(r"-?\d{1,20}", text):
        raise _ApiError(-1100, f"Illegal characters found in parameter '{name}'.")
    return int(text)


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _corrupt(payload: Any, path: str, fault: Fault) -> Any:
    """garbage_numbers / missing_field on the first record (or every one) of a response. Records are the
    items of a list; of a depth, its first price levels (garbage) or the object itself (missing)."""

    def change(record: Any) -> Any:
        if fault.mode == "garbage_numbers":
            return _garbage(record, fault.value)
        return _drop(record, fault.field if fault.field is not None else _DEFAULT_MISSING[path])

    def pick(records: list[Any]) -> list[Any]:
        return [change(r) if fault.all_records or i == 0 else r for i, r in enumerate(records)]

    if isinstance(payload, list):
        return pick(payload)
    if path == DEPTH and fault.mode == "garbage_numbers":
        return {**payload, "bids": pick(payload["bids"]), "asks": pick(payload["asks"])}
    return change(payload)


def _garbage(record: Any, value: str) -> Any:
    if isinstance(record, dict):
        return {k: value if isinstance(v, str) and _DECIMAL.fullmatch(v) else v for k, v in record.items()}
    if isinstance(record, list):
        return [value if isinstance(v, str) and _DECIMAL.fullmatch(v) else v for v in record]
    return record


def _drop(record: Any, missing: str | int) -> Any:
    if isinstance(record, dict) and isinstance(missing, str):
        return {k: v for k, v in record.items() if k != missing}
    if isinstance(record, list) and isinstance(missing, int):
        return [v for i, v in enumerate(record) if i != missing]
    return record


# --- HTTP -------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a requests.Session expects
    server_version = "binance-simulator"
    timeout = 60  # an idle keep-alive connection's thread ends after this
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK adds ~40 ms to each.
    disable_nagle_algorithm = True

    @property
    def sim(self) -> Simulator:
        return cast(SimulatorServer, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        if cast(SimulatorServer, self.server).verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/_sim/stats":
            self._send_json(200, self.sim.stats())
        elif url.path == "/_sim/faults":
            self._send_json(200, {"faults": self.sim.faults()})
        elif url.path == "/_sim/time":
            self._send_json(200, {"now_ms": self.sim.clock.now_ms()})
        elif url.path in ENDPOINTS:
            self._send(self.sim.handle(url.path, params))
        else:
            self._send_json(404, {"code": -1, "msg": f"No such path {url.path} on the simulator."})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            data = self._read_json()
            if path == "/_sim/faults":
                items = data if isinstance(data, list) else [data]
                self.sim.add_faults([Fault.parse(item) for item in items])
                self._send_json(200, {"faults": self.sim.faults()})
            elif path == "/_sim/reset":
                self.sim.reset()
                self._send_json(200, {"reset": True})
            elif path == "/_sim/time":
                self.sim.clock.advance(float(data["advance"]))
                self._send_json(200, {"now_ms": self.sim.clock.now_ms()})
            elif path == "/_sim/weight":
                self.sim.add_weight(int(data["add"]))
                self._send_json(200, {"weight_used_1m": self.sim.stats()["weight_used_1m"]})
            else:
                self._send_json(404, {"error": f"no such control path {path}"})
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(400, {"error": f"{type(exc).__name__}: {exc}"})

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(_Reply(status, _json(payload)))

    def _send(self, reply: _Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.disconnect:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.pop("Content-Type", "application/json;charset=UTF-8"))
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: Simulator, *, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.sim = sim
        self.verbose = verbose
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="binance-simulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up mid-answer is expected here (the "slow" fault).
        pass


def start_simulator(
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    seed: int = 0,
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    weight_limit: int = 6000,
    time_scale: float = 1.0,
    clock: Callable[[], float] | None = None,
    ban_seconds: float = 120.0,
    verbose: bool = False,
) -> tuple[SimulatorServer, str]:
    """Start a simulator in this process (port 0: any free port); returns (server, base_url)."""
    sim_clock = SimClock(clock or time.time, time_scale)
    sim = Simulator(symbols=symbols, seed=seed, weight_limit=weight_limit, clock=sim_clock,
                    ban_seconds=ban_seconds)
    server = SimulatorServer((host, port), sim, verbose=verbose)
    server.start()
    return server, server.base_url


def stop_simulator(server: SimulatorServer) -> None:
    server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m producer.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port (printed on start)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated")
    parser.add_argument("--weight-limit", type=int, default=6000, help="request weight per minute")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--ban-seconds", type=float, default=120.0, help="418 ban for ignoring a 429")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    sim = Simulator(symbols=symbols, seed=args.seed, weight_limit=args.weight_limit,
                    clock=SimClock(scale=args.time_scale), ban_seconds=args.ban_seconds)
    server = SimulatorServer((args.host, args.port), sim, verbose=args.verbose)
    print(f"Binance simulator on {server.base_url} (seed {args.seed}, symbols {','.join(symbols)}, "
          f"weight limit {args.weight_limit}/min, time scale {args.time_scale})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
