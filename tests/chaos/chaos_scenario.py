"""One chaos scenario: its own keyspace, consumer group and dead-letter topic; the stream; the ending.

Every scenario follows the same script (test_chaos.py):

    s.start_member(); s.start_stream()        consumers from the earliest offsets, changes flowing
    ... inject one fault ...; s.fault_over()  the moment the fault ends
    s.finish()                                stop the stream, wait until verify is clean, measure, assert
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from chaos_harness import (
    E2E,
    ConnectorWatch,
    Poison,
    Proc,
    Result,
    SqlChanges,
    _committed,
    _end_offsets,
    _tail,
    classify,
    dead_letters,
    describe,
    producer_changes,
    wait_clean,
)

from pipeline.config import PipelineConfig

# Consumers of the suite: the broker's minimum session timeout, so the group notices a SIGKILLed member
# in 6 s instead of the default 45 s (which would stall its partitions that long after every kill).
SESSION_TIMEOUT_MS = 6000
# The producer against the simulator: a change every few hundred milliseconds per endpoint and symbol;
# order book snapshots expire after 5 s, so its deletes are part of the stream too.
PRODUCER_ENV = {
    "PIPELINE__BINANCE__WEIGHT_BUDGET_PER_MINUTE": "6000",
    "PIPELINE__BINANCE__MAX_ATTEMPTS": "2",
    "PIPELINE__BINANCE__ENDPOINTS__TICKER_PRICE__INTERVAL_SECONDS": "0.5",
    "PIPELINE__BINANCE__ENDPOINTS__DEPTH__INTERVAL_SECONDS": "1",
    "PIPELINE__BINANCE__ENDPOINTS__DEPTH__LIMIT": "5",
    "PIPELINE__BINANCE__ENDPOINTS__TRADES__INTERVAL_SECONDS": "1",
    "PIPELINE__BINANCE__ENDPOINTS__TRADES__LIMIT": "20",
    "PIPELINE__BINANCE__ENDPOINTS__KLINES__INTERVAL_SECONDS": "2",
    "PIPELINE__BINANCE__ENDPOINTS__KLINES__LIMIT": "3",
    "PIPELINE__BINANCE__ENDPOINTS__TICKER_24HR__INTERVAL_SECONDS": "2",
    "PIPELINE__PRODUCER__ORDERBOOK_RETENTION_SECONDS": "5",
    "PIPELINE__PRODUCER__LOG_LEVEL": "INFO",
}


@dataclass
class ChaosRun:
    """The session: its own Debezium connector, slot and topics (prefix `run`), the simulator."""

    run: str
    config: PipelineConfig
    e2e: E2E
    base_url: str
    symbols: list[str]      # the producer's (simulator) symbols
    sql_symbol: str         # prefix of the SQL stream's symbols
    admin_dsn: dict[str, Any]
    logs: Path
    poison: list[Poison] = field(default_factory=list)  # injected so far: every fresh group reads them

    @property
    def all_symbols(self) -> list[str]:
        """Every symbol the run writes: what verify compares (the shared tables hold others' rows too)."""
        return [*self.symbols, self.sql_symbol, *(f"{self.sql_symbol}{i}" for i in range(4))]


class Scenario:
    def __init__(self, run: ChaosRun, name: str) -> None:
        self.run = run
        self.name = name
        self.keyspace = f"{run.run}_{name}"
        self.group = name  # E2E.env makes it <run>-<name>
        self.dlq = f"{run.run}.{name}.dead-letter"
        base = run.config
        self.config = dataclasses.replace(
            base,
            cassandra=dataclasses.replace(base.cassandra, keyspace=self.keyspace),
            consumer=dataclasses.replace(base.consumer, group_id=f"{run.run}-{name}",
                                         dead_letter_topic=self.dlq),
        )
        self.members: list[Proc] = []
        self.producer: Proc | None = None
        self.sql: SqlChanges | None = None
        self.watch = ConnectorWatch(base.debezium.connect_url, base.debezium.connector_name)
        self.result = Result(name)
        self.started = time.monotonic()
        self.fault_end: float | None = None
        self._n = 0

    # --- processes -----------------------------------------------------------------------------------

    def start_member(self, label: str = "member") -> Proc:
        self._n += 1
        env = self.run.e2e.env(
            self.group,
            PIPELINE__CASSANDRA__KEYSPACE=self.keyspace,
            PIPELINE__CONSUMER__DEAD_LETTER_TOPIC=self.dlq,
            PIPELINE__CONSUMER__COMMIT_INTERVAL_MS=str(self.run.config.consumer.commit_interval_ms),
            PIPELINE__CONSUMER__SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        )
        proc = Proc(f"{label}-{self._n}", ["-m", "consumer"], env,
                    self.run.logs / f"{self.name}-{label}-{self._n}.log")
        self.members.append(proc)
        return proc

    def start_stream(self) -> None:
        env = dict(os.environ)
        env.update(PRODUCER_ENV)
        env["PIPELINE__BINANCE__BASE_URL"] = self.run.base_url
        env["PIPELINE__BINANCE__SYMBOLS"] = ",".join(self.run.symbols)
        self.producer = Proc("producer", ["-m", "producer"], env, self.run.logs / f"{self.name}-producer.log")
        self.sql = SqlChanges(self.run.admin_dsn, self.run.sql_symbol, seed=hash(self.name) & 0xFFFF)
        self.sql.start()
        self.watch.start()

    def stop_stream(self) -> int:
        """Stop the SQL changes and the producer (SIGTERM: it must exit 0); the changes they made."""
        events = self.sql.stop() if self.sql is not None else 0
        if self.producer is not None:
            code = self.producer.stop()
            assert code == 0, f"the producer exited {code}:\n{_tail(self.producer.log)}"
            events += producer_changes(self.producer.text())
        return events

    def crashed(self) -> list[Proc]:
        """Processes that exited without being told to: crashes (a crash loop shows as several)."""
        return [p for p in [*self.members, self.producer] if p is not None and p.unexpected_exit]

    def check(self) -> None:
        crashed = self.crashed()
        assert not crashed, "\n".join(f"{p.name} exited {p.popen.returncode} by itself:\n{_tail(p.log)}"
                                      for p in crashed)

    def wait_for(self, proc: Proc, pattern: str, timeout: float = 60, after: int = 0) -> int:
        """Until `pattern` shows in the process's log past character `after`; the end of the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, proc.text()[after:])
            if m:
                return after + m.end()
            self.check()
            waited = f"{proc.name}: no {pattern!r} in {timeout}s"
            assert time.monotonic() < deadline, f"{waited}:\n{_tail(proc.log)}"
            time.sleep(0.2)

    def wait_assigned(self, proc: Proc, timeout: float = 60, after: int = 0) -> int:
        return self.wait_for(proc, r"assigned \S+\[\d+\]", timeout, after)

    def lag(self) -> int:
        """Records of the run's topics that the group has not committed yet."""
        committed = _committed(self.run.e2e, self.group)
        return sum(end - committed.get(tp, 0) for tp, end in _end_offsets(self.run.e2e).items())

    def connect_state(self) -> str:
        return self.watch.state()

    # --- the ending ----------------------------------------------------------------------------------

    def fault_over(self, what: str) -> None:
        self.fault_end = time.monotonic()
        self.result.fault = what

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def finish(self, timeout: float = 150) -> Result:
        """Stop the stream, wait until PostgreSQL == Cassandra, measure, stop the members, assert."""
        r = self.result
        assert self.fault_end is not None, "the fault was never injected"
        r.events = self.stop_stream()
        assert r.events > 0, "no change streamed through the pipeline during the scenario"
        equal, reports = wait_clean(self.config, self.run.all_symbols, timeout, self.check)
        r.recovery_s = round(time.monotonic() - self.fault_end, 1) if equal else None
        r.__dict__.update(classify(self.config, self.run.all_symbols))
        expected = {(p.topic, p.partition, p.offset) for p in self.run.poison}
        got = [{k: v.decode() for k, v in rec.headers} for rec in dead_letters(self.config, self.dlq)]
        where = [(h.get("original_topic"), int(h.get("original_partition", -1)),
                  int(h.get("original_offset", -1))) for h in got]
        r.dead_letters = f"{len(where)}/{len(expected)}"
        r.unexpected_exits = len(self.crashed())
        connect = self.watch.stop()
        if any("FAILED" in s for s in connect):
            self.note(f"Connector states seen: {' -> '.join(connect)}; "
                      f"task failure: {self.watch.traces[-1:]}.")
        codes = {p.name: p.stop() for p in self.members if p.alive}
        r.seconds = time.monotonic() - self.started
        assert equal, f"Cassandra still differs from PostgreSQL after {timeout}s:\n{describe(reports)}\n" + \
            "\n".join(_tail(p.log) for p in self.members[-2:])
        assert (r.lost, r.resurrected, r.duplicated) == (0, 0, 0), r
        assert sorted(where) == sorted(expected), f"dead letters {got} != the poison injected {expected}"
        reasons = {(p.topic, p.partition, p.offset): p.reason for p in self.run.poison}
        for place, headers in zip(where, got, strict=True):
            assert headers.get("error_reason") == reasons[place], \
                f"{place} dead-lettered as {headers.get('error_reason')}: {headers.get('error')}"
        assert r.unexpected_exits == 0, [p.name for p in self.crashed()]
        assert all(c == 0 for c in codes.values()), f"members did not stop cleanly on SIGTERM: {codes}"
        return r


def ensure_connector(config: PipelineConfig, timeout: float = 180) -> None:
    """The run's connector and task RUNNING again (a FAILED task restarted): the scenario finaliser."""
    url = f"{config.debezium.connect_url}/connectors/{config.debezium.connector_name}"
    deadline = time.monotonic() + timeout
    restarted = False
    while time.monotonic() < deadline:
        try:
            body = requests.get(f"{url}/status", timeout=5).json()
        except (requests.RequestException, ValueError):
            time.sleep(1)
            continue
        states = [body.get("connector", {}).get("state")] + [t.get("state") for t in body.get("tasks", [])]
        if len(states) > 1 and all(s == "RUNNING" for s in states):
            return
        if "FAILED" in states and not restarted:
            requests.post(f"{url}/restart?includeTasks=true&onlyFailed=true", timeout=30)
            restarted = True
        time.sleep(1)
    raise AssertionError(f"connector {config.debezium.connector_name} not RUNNING after {timeout}s")


def sigkill(proc: Proc) -> None:
    proc.send(signal.SIGKILL)
    proc.popen.wait(30)
    assert proc.popen.returncode == -signal.SIGKILL, f"{proc.name} exited {proc.popen.returncode}"
