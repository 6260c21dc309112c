"""The consumer loop's decisions, with stand-ins for Kafka, Cassandra, decode and mapping.

What is tested here needs no service: which offsets get committed when writes complete out of order or
fail, what a poison message turns into, what a revocation commits and drops, when commits happen, and
signals. The same paths against the real services are in tests/integration/test_consumer_e2e.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cassandra
import pytest
from kafka.structs import TopicPartition as KTP

from consumer.app import Member, Origin, await_whole_joins, topics_for
from consumer.errors import PoisonMessageError
from consumer.offsets import TopicPartition
from consumer.sink import CassandraSink, Request
from pipeline.config import ConsumerConfig, MappingConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "binance.public.trades"


@dataclasses.dataclass(frozen=True)
class FakeChange:
    table: str
    op: str
    key: Any
    ts_ms: int | None = 1


@dataclasses.dataclass(frozen=True)
class FakeWrite:
    keyspace: str
    table: str
    kind: str
    key: Mapping[str, Any]
    values: Mapping[str, Any]
    timestamp_us: int
    ttl: int | None = None


@dataclasses.dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)


def fake_decode(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                hints: Any) -> FakeChange | None:
    if value is None:
        return None  # tombstone
    if value is not None and value.startswith(b"poison"):
        raise PoisonMessageError("not_json", "value", "not JSON").locate(topic, partition, offset)
    if value == b"truncate":
        return FakeChange("trades", "t", None)
    op, _, k = value.decode().partition(":")
    return FakeChange("trades", op, k)


class FakeMapper:
    """Shaped like consumer.mapping.TableMapper (map, mapping) and Mappings (for_change, decode_hints)."""

    decode_hints = None
    mapping = MappingConfig(table="trades", target="trades", key=("symbol", "trade_id"))

    def for_change(self, change: FakeChange) -> FakeMapper | None:
        return None if change.key == "unmapped" else self

    def map(self, change: FakeChange) -> tuple[FakeWrite, ...]:
        if change.key == "unmappable":
            raise PoisonMessageError("missing_value", "after.symbol", "no symbol")
        if change.op == "t":
            return (FakeWrite("binance", "trades", "truncate", {}, {}, 1),)
        if change.key == "twice":
            return (self._write(change, "a"), self._write(change, "b"))
        if change.key == "twice-unbindable":   # a key-moving update whose new row cannot be bound
            return (self._write(change, "old", "delete"), self._write(change, "unbindable"),
                    self._write(change, "unbindable"))
        return (self._write(change, change.key),)

    def _write(self, change: FakeChange, key: str, kind: str | None = None) -> FakeWrite:
        kind = kind or ("delete" if change.op == "d" else "upsert")
        return FakeWrite("binance", "trades", kind, {"k": key}, {}, 1)


class FakeSink:
    """Accepts every request at once (or refuses when full); the test completes them by hand."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.sent: list[Request[Origin]] = []
        self.completed: deque[Request[Origin]] = deque()
        self.in_flight = 0
        self.connected = True
        self.truncated: list[tuple[str, str]] = []

    batch_max_rows = 1   # one request per write: the tests complete them one by one

    def build(self, items: Iterable[tuple[Any, Origin]]) -> tuple[list[Request[Origin]], list[Any]]:
        # The real grouping and rejection logic, over this fake's bind.
        return CassandraSink.build(self, items)  # type: ignore[arg-type]

    def bind(self, write: FakeWrite) -> object:
        if write.key.get("k") == "unbindable":
            raise ValueError("bad value")
        return object()

    def submit(self, request: Request[Origin], timeout: float | None = None) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        request.attempts += 1
        request.error = None
        self.sent.append(request)
        return True

    def complete(self, request: Request[Origin], error: BaseException | None = None) -> None:
        request.error = error
        request.acked_at = 1.0
        self.in_flight -= 1
        self.completed.append(request)

    def complete_all(self, error: BaseException | None = None) -> None:
        for r in list(self.sent):
            if r not in self.completed:
                self.complete(r, error)
        self.sent.clear()

    def wait_idle(self, timeout: float) -> bool:
        return self.in_flight == 0

    def truncate(self, keyspace: str, table: str) -> None:
        self.truncated.append((keyspace, table))

    def close(self) -> None:
        pass


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[Any, Any]] = []
        self._paused: set[Any] = set()
        self.assigned: set[Any] = set()
        self.existing: set[str] = set()
        self.subscriptions: list[list[str]] = []

    def topics(self) -> set[str]:
        return set(self.existing)

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.subscriptions.append(list(topics))

    def commit(self, offsets: dict[Any, Any], timeout_ms: int | None = None) -> None:
        self.commits.append({(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def pause(self, *tps: Any) -> None:
        self._paused.update(tps)

    def resume(self, *tps: Any) -> None:
        self._paused.difference_update(tps)

    def paused(self) -> set[Any]:
        return set(self._paused)

    def highwater(self, tp: Any) -> int | None:
        return 100

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        pass


class FakeFuture:
    def get(self, timeout: float | None = None) -> None:
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> FakeFuture:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": dict(headers or [])})
        return FakeFuture()

    def close(self, timeout: float | None = None) -> None:
        pass


def make_member(**consumer_settings: Any) -> tuple[Member, FakeSink, FakeConsumer, FakeProducer]:
    config = PipelineConfig(
        consumer=dataclasses.replace(ConsumerConfig(), metrics_port=0, **consumer_settings),
        mappings=(MappingConfig(table="trades", target="trades", key=("symbol", "trade_id")),),
    )
    member = Member(config, install_signals=False, mappings=FakeMapper(), decoder=fake_decode)
    sink, consumer, producer = FakeSink(), FakeConsumer(), FakeProducer()
    member.sink = sink  # type: ignore[assignment]
    member.consumer = consumer
    member._dlq = producer
    return member, sink, consumer, producer


def assign(member: Member, consumer: FakeConsumer, *partitions: int) -> None:
    tps = [KTP(TOPIC, p) for p in partitions]
    consumer.assigned.update(tps)
    member.on_assigned(tps)


def acknowledge(member: Member, sink: FakeSink, error: BaseException | None = None) -> None:
    """Cassandra answers every write sent so far (with `error`, if given), and the member applies the
    answers."""
    sink.complete_all(error)
    member._apply_completions()


def sent_offsets(sink: FakeSink) -> list[int]:
    """The offsets of the records whose writes were sent, in the order sent."""
    return [o.offset for r in sink.sent for o in r.origins]


def dead_lettered_offsets(producer: FakeProducer) -> list[bytes]:
    return [p["headers"]["original_offset"] for p in producer.sent]


def poll(member: Member, partition: int, values: list[bytes | None], start: int = 0) -> None:
    recs = [Rec(TOPIC, partition, start + i, b"k", v) for i, v in enumerate(values)]
    member._handle({KTP(TOPIC, partition): recs})
    member._send_backlog()


def test_topics_come_from_the_mappings_only() -> None:
    config = PipelineConfig(mappings=(
        MappingConfig(table="trades", target="trades", key=("symbol", "trade_id")),
        MappingConfig(table="klines", target="klines", key=("symbol",)),
    ))
    assert sorted(topics_for(config)) == ["binance.public.klines", "binance.public.trades"]


def test_commits_only_the_acknowledged_prefix() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a", b"c:b", b"c:c", b"c:d"])
    assert len(sink.sent) == 4
    a, b, c, d = sink.sent
    sink.complete(c)
    sink.complete(b)
    member._apply_completions()
    member._maybe_commit(force=True)
    assert consumer.commits == []  # offset 0 still in flight
    sink.complete(a)
    member._apply_completions()
    member._maybe_commit(force=True)
    assert consumer.commits == [{(TOPIC, 0): 3}]
    sink.complete(d)
    member._apply_completions()
    member._maybe_commit(force=True)
    assert consumer.commits[-1] == {(TOPIC, 0): 4}


def test_tombstones_unmapped_tables_and_truncates_need_no_write() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [None, b"truncate", b"c:unmapped"])
    assert sink.sent == []
    assert sink.truncated == []  # consumer.truncate: ignore
    member._maybe_commit(force=True)
    assert consumer.commits == [{(TOPIC, 0): 3}]


def test_truncate_apply_waits_for_earlier_writes_then_truncates() -> None:
    member, sink, consumer, _ = make_member(truncate="apply")
    assign(member, consumer, 0)
    real_wait = member._wait_in_flight

    def wait_in_flight(timeout: float) -> bool:
        sink.complete_all()  # Cassandra answers the earlier writes
        return real_wait(timeout)

    member._wait_in_flight = wait_in_flight  # type: ignore[method-assign]
    poll(member, 0, [b"c:a", b"truncate", b"c:b"])
    assert sink.truncated == [("binance", "trades")]
    acknowledge(member, sink)
    member._maybe_commit(force=True)
    assert consumer.commits[-1] == {(TOPIC, 0): 3}


def test_a_record_with_two_writes_waits_for_both() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:twice"])
    first, second = sink.sent
    sink.complete(first)
    member._apply_completions()
    assert member.tracker.to_commit() == {}
    sink.complete(second)
    member._apply_completions()
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 1}


def test_poison_from_decode_goes_to_the_dead_letter_topic_with_headers() -> None:
    member, sink, consumer, producer = make_member()
    assign(member, consumer, 2)
    poll(member, 2, [b"c:a", b"poison"], start=40)
    assert len(producer.sent) == 1
    sent = producer.sent[0]
    assert sent["topic"] == "binance.dead-letter"
    assert sent["key"] == b"k" and sent["value"] == b"poison"
    h = sent["headers"]
    assert h["original_topic"] == TOPIC.encode()
    assert h["original_partition"] == b"2"
    assert h["original_offset"] == b"41"
    assert h["original_key"] == b"k"
    assert h["error_reason"] == b"not_json"
    assert b"not JSON" in h["error"]
    acknowledge(member, sink)
    member._maybe_commit(force=True)
    assert consumer.commits == [{(TOPIC, 2): 42}]  # the poison offset counts as done
    assert member.metrics.dead_lettered.labels(table="trades", op="?")._value.get() == 1


def test_poison_from_mapping_and_from_binding_are_dead_lettered_too() -> None:
    member, sink, consumer, producer = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:unmappable", b"c:unbindable", b"c:ok"])
    assert dead_lettered_offsets(producer) == [b"0", b"1"]
    assert producer.sent[0]["headers"]["error_reason"] == b"missing_value"
    assert producer.sent[1]["headers"]["error_reason"] == b"bad_value"
    acknowledge(member, sink)
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 3}


def test_a_record_with_an_unbindable_write_is_dead_lettered_once_and_none_of_its_writes_sent() -> None:
    """A key-moving update (delete the old row, write the new) whose new row cannot be bound must not
    delete the old row: the record is applied whole or not at all, and dead-lettered once."""
    member, sink, consumer, producer = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"u:twice-unbindable", b"c:ok"])
    assert dead_lettered_offsets(producer) == [b"0"]
    assert sent_offsets(sink) == [1]
    acknowledge(member, sink)
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 2}


def test_offsets_seen_again_after_kafka_moves_back_are_not_applied_twice() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a", b"c:b", b"c:c"], start=10)
    poll(member, 0, [b"c:b", b"c:c", b"c:d"], start=11)   # a reset to an earlier offset
    assert sent_offsets(sink) == [10, 11, 12, 13]
    acknowledge(member, sink)
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 14}


def test_lag_gauges_move_while_nothing_is_committed() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a"], start=10)
    acknowledge(member, sink)
    member.tracker.mark_committed(member.tracker.to_commit())
    member._lag_at = 0.0   # the last update is LAG_EVERY ago
    member._maybe_update_lag()
    gauge = member.metrics.lag.labels(topic=TOPIC, partition="0")
    assert gauge._value.get() == 100 - 11
    consumer.highwater = lambda tp: 500  # type: ignore[method-assign]
    member._maybe_update_lag()             # within LAG_EVERY: unchanged
    assert gauge._value.get() == 89
    member._lag_at = 0.0
    member._maybe_update_lag()
    assert gauge._value.get() == 500 - 11


def test_transient_failure_pauses_and_keeps_the_write() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a", b"c:b"])
    a, b = sink.sent
    sink.complete(a, cassandra.Unavailable("down"))
    sink.complete(b)
    member._apply_completions()
    assert member._failing is not None
    assert list(member.backlog) == [a]
    assert member.tracker.to_commit() == {}  # offset 0 failed: nothing committable
    # Recovery: Kafka paused, the backlog re-sent, offsets move once the retry succeeds.
    sink.sent.clear()

    def ok_after_retry(timeout: float) -> bool:
        acknowledge(member, sink)
        return True

    member._wait_in_flight = ok_after_retry  # type: ignore[method-assign]
    member._recover()
    assert a.attempts == 2
    assert consumer.paused() == set()  # resumed
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 2}


def test_permanent_cassandra_error_is_fatal_and_not_committed() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a"])
    acknowledge(member, sink, cassandra.InvalidRequest("unconfigured table"))
    assert member._fatal is not None
    assert member.tracker.to_commit() == {}


def test_revocation_commits_the_prefix_and_drops_the_backlog_of_revoked_partitions() -> None:
    member, sink, consumer, _ = make_member(max_in_flight=10)
    sink.capacity = 2
    assign(member, consumer, 0, 1)
    recs0 = [Rec(TOPIC, 0, i, b"k", b"c:x") for i in range(3)]
    recs1 = [Rec(TOPIC, 1, i, b"k", b"c:y") for i in range(2)]
    member._handle({KTP(TOPIC, 0): recs0, KTP(TOPIC, 1): recs1})
    sink.submit(member.backlog.popleft())
    sink.submit(member.backlog.popleft())
    assert len(member.backlog) == 3
    acknowledge(member, sink)
    offsets = member.revoked_offsets([KTP(TOPIC, 0)])
    assert offsets == {TopicPartition(TOPIC, 0): 2}
    assert [o.state.tp for r in member.backlog for o in r.origins] == [(TOPIC, 1), (TOPIC, 1)]
    assert member.tracker.partitions() == [TopicPartition(TOPIC, 1)]


def test_lost_partitions_are_not_committed() -> None:
    member, sink, consumer, _ = make_member()
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a"])
    acknowledge(member, sink)
    assert member.revoked_offsets([KTP(TOPIC, 0)], lost=True) == {}


def test_commit_every_and_interval() -> None:
    member, sink, consumer, _ = make_member(commit_every=3, commit_interval_ms=600_000)
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a", b"c:b"])
    acknowledge(member, sink)
    member._maybe_commit()
    assert consumer.commits == []  # 2 < commit_every, interval far away
    poll(member, 0, [b"c:c"], start=2)
    acknowledge(member, sink)
    member._maybe_commit()
    assert consumer.commits == [{(TOPIC, 0): 3}]
    member2, sink2, consumer2, _ = make_member(commit_every=1000, commit_interval_ms=10)
    assign(member2, consumer2, 0)
    poll(member2, 0, [b"c:a"])
    acknowledge(member2, sink2)
    member2._last_commit -= 1
    member2._maybe_commit()
    assert consumer2.commits == [{(TOPIC, 0): 1}]


def test_assignment_while_cassandra_fails_stays_paused() -> None:
    member, _, consumer, _ = make_member()
    member._pause_all()
    assign(member, consumer, 0, 1)
    assert consumer.paused() == {KTP(TOPIC, 0), KTP(TOPIC, 1)}


def test_shutdown_drains_then_commits() -> None:
    member, sink, consumer, _ = make_member(shutdown_timeout_seconds=5)
    assign(member, consumer, 0)
    poll(member, 0, [b"c:a", b"c:b"])
    real_wait = member._wait_in_flight

    def wait_in_flight(timeout: float) -> bool:
        sink.complete_all()
        return real_wait(timeout)

    member._wait_in_flight = wait_in_flight  # type: ignore[method-assign]
    member._shutdown()
    assert consumer.commits == [{(TOPIC, 0): 2}]
    assert consumer.paused() == {KTP(TOPIC, 0)}  # fetching stopped first


def test_first_signal_stops_second_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    member, *_ = make_member()
    exits: list[int] = []
    clock = [100.0]
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    member._on_signal(signal.SIGTERM, None)
    assert member.stop_event.is_set() and exits == []
    clock[0] += 0.2      # the same Ctrl-C, through the process group and the --workers parent
    member._on_signal(signal.SIGINT, None)
    assert exits == []
    clock[0] += 1.0      # a second request
    member._on_signal(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]


def test_cli_rejects_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("consumer:\n  max_in_flight: 0\n")
    proc = subprocess.run([sys.executable, "-m", "consumer", "--config", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "consumer.max_in_flight" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "consumer", "--workers", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2


def test_subscribes_to_the_topics_that_exist_and_picks_up_new_ones_later() -> None:
    member, _, consumer, _ = make_member()
    consumer.existing = {TOPIC, "unrelated"}
    member.topics = {TOPIC: None, "binance.public.klines": None}  # type: ignore[dict-item]
    member._subscribe()
    assert consumer.subscriptions == [[TOPIC]]
    assert member._missing == ["binance.public.klines"]
    member._subscribe()  # nothing new: no resubscription (no rebalance)
    assert len(consumer.subscriptions) == 1
    consumer.existing.add("binance.public.klines")
    member._subscribe()
    assert consumer.subscriptions[-1] == ["binance.public.klines", TOPIC]
    assert member._missing == []


class RefusingProducer(FakeProducer):
    """Refuses records whose value is larger than `limit`, as kafka-python or the broker does."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused = 0

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> FakeFuture:
        if value is not None and len(value) > self.limit:
            import kafka.errors

            self.refused += 1
            raise kafka.errors.MessageSizeTooLargeError(f"{len(value)} bytes")
        return super().send(topic, key, value, headers)


def test_a_poison_too_large_for_the_dead_letter_topic_is_dead_lettered_as_an_excerpt() -> None:
    from consumer.app import DEAD_LETTER_EXCERPT_BYTES

    member, sink, consumer, _ = make_member()
    producer = RefusingProducer(limit=DEAD_LETTER_EXCERPT_BYTES)
    member._dlq = producer
    assign(member, consumer, 0)
    big = b"poison" + b"x" * (3 * 1024 * 1024)
    recs = [Rec(TOPIC, 0, 0, b"k", big), Rec(TOPIC, 0, 1, b"k", b"c:a")]
    member._handle({KTP(TOPIC, 0): recs})
    member._send_backlog()
    assert producer.refused == 1   # refused once, never retried as if Kafka were down
    (sent,) = producer.sent
    assert sent["value"] == big[:DEAD_LETTER_EXCERPT_BYTES]
    h = sent["headers"]
    assert h["truncated"] == b"true" and h["original_value_bytes"] == str(len(big)).encode()
    assert h["original_offset"] == b"0" and h["original_topic"] == TOPIC.encode()
    import hashlib

    assert h["original_value_sha256"] == hashlib.sha256(big).hexdigest().encode()
    acknowledge(member, sink)
    assert member.tracker.to_commit() == {TopicPartition(TOPIC, 0): 2}


def test_a_dead_letter_topic_refusing_even_the_excerpt_is_a_permanent_error() -> None:
    from consumer.errors import PermanentError

    member, _sink, consumer, _ = make_member()
    member._dlq = RefusingProducer(limit=10)
    assign(member, consumer, 0)
    with pytest.raises(PermanentError, match="refuses"):
        member._handle({KTP(TOPIC, 0): [Rec(TOPIC, 0, 0, b"k", b"poison" + b"x" * 100_000)]})


def test_kafka_pythons_closed_transport_traceback_is_dropped_and_nothing_else(
    caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest,
) -> None:
    from consumer.app import quiet_kafka_logging

    transport = logging.getLogger("kafka.net.transport")
    level, filters = logging.getLogger("kafka").level, list(transport.filters)

    def restore() -> None:
        logging.getLogger("kafka").setLevel(level)
        transport.filters = filters

    request.addfinalizer(restore)
    quiet_kafka_logging()
    quiet_kafka_logging()   # idempotent: one filter
    assert len(transport.filters) == 1

    def emit(exc: BaseException, state: str) -> None:
        try:
            raise exc
        except BaseException:
            transport.exception("%s: Error receiving network data closing socket",
                                f"<KafkaTCPTransport [none] ({state})>")

    with caplog.at_level(logging.WARNING, logger="kafka"):
        emit(AttributeError("'NoneType' object has no attribute 'recv'"), "closed")
        emit(ConnectionResetError("reset by peer"), "closed")
        emit(AttributeError("'NoneType' object has no attribute 'recv'"), "connected")
        transport.error("%s: socket disconnected", "<KafkaTCPTransport [none] (closed)>")
    kept = [(r.getMessage().split(">")[0], type(r.exc_info[1]).__name__ if r.exc_info else None)
            for r in caplog.records]
    assert kept == [("<KafkaTCPTransport [none] (closed)", "ConnectionResetError"),
                    ("<KafkaTCPTransport [none] (connected)", "AttributeError"),
                    ("<KafkaTCPTransport [none] (closed)", None)]
    assert logging.getLogger("kafka").level == logging.WARNING


def test_await_whole_joins_lengthens_only_the_wait_for_a_join(caplog: pytest.LogCaptureFixture) -> None:
    """poll(200 ms) must not give up on a JoinGroup round (see consumer.app.await_whole_joins; the
    behaviour against a real broker is tests/integration/test_group_join.py)."""
    asked: list[float | None] = []

    class Coordinator:
        def ensure_active_group(self, timeout_ms: float | None = None) -> bool:
            asked.append(timeout_ms)
            return True

    consumer = SimpleNamespace(_coordinator=Coordinator())
    await_whole_joins(consumer, 45_000)
    assert consumer._coordinator.ensure_active_group(timeout_ms=200) is True
    consumer._coordinator.ensure_active_group(timeout_ms=60_000)
    consumer._coordinator.ensure_active_group()
    assert asked == [45_000, 60_000, None]

    with caplog.at_level(logging.WARNING, logger="consumer"):
        await_whole_joins(SimpleNamespace(), 45_000)   # another client library: said, not fatal
    assert "group joins keep poll()'s timeout" in caplog.text
