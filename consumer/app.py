"""A member of the consumer group: Kafka -> decode -> map -> Cassandra, committing only what is durable.

The loop (one thread, the consumer thread):

    poll a batch -> decode and map every record -> group the writes into requests (rows of one
    Cassandra partition share an unlogged batch) -> send them with at most consumer.max_in_flight in
    flight -> apply completed requests (offsets, metrics) -> commit on interval / count

Offsets: `OffsetTracker` keeps, per partition, the offsets received and the writes each still waits
for; what is committed is one past the longest fully written prefix (consumer/offsets.py). Nothing is
committed past a write that is not acknowledged by Cassandra.

Failures:
- Cassandra fails a request with a transient error (down, timeout, overloaded): the request goes back
  to the backlog, every assigned partition is paused (nothing more is fetched: memory stays bounded),
  the loop keeps polling Kafka (group membership) while it retries the backlog with exponential
  backoff, and resumes the partitions once a write succeeds again. Nothing is skipped.
- Kafka unreachable: the client reconnects by itself; startup and commits retry with backoff.
- A poison message (decode or mapping raises PoisonMessageError, or a value cannot be bound) goes to
  consumer.dead_letter_topic with its original key and value and headers saying why and where from;
  its offset then counts as done.
- Any other error (a permanent Cassandra error, a bug): commit what is durable and exit 1.

Rebalances: on revocation the listener waits for the in-flight writes (bounded), then commits the
revoked partitions' offsets synchronously before the partitions move. SIGTERM/SIGINT: stop fetching,
drain, commit, close, exit 0; a second signal exits at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from consumer.decode import decode
from consumer.errors import (
    KafkaUnavailableError,
    PermanentError,
    PoisonMessageError,
    SinkUnavailableError,
    TransientError,
)
from consumer.mapping import Mappings, build_mappings, cql_table_from_metadata
from consumer.metrics import ConsumerMetrics
from consumer.offsets import OffsetTracker, PartitionState, TopicPartition
from consumer.sink import CassandraSink, Request, WriteLike, is_transient
from pipeline.cli import StopSignals
from pipeline.clients import kafka_client_options
from pipeline.config import ConsumerConfig, KafkaConfig, MappingConfig, PipelineConfig
from pipeline.schema import ConfigError

log = logging.getLogger("consumer")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2

POLL_TIMEOUT_MS = 200
SUBMIT_WAIT = 0.05
# Writes are sent every this many rows while a poll's records are decoded, so that Cassandra works while
# the rest is decoded (rows of one partition within such a slice still share batches).
FLUSH_ROWS = 256
# The dead-letter topic takes records up to this size (the broker's default is 1 MiB); a larger one is
# dead-lettered as its first DEAD_LETTER_EXCERPT_BYTES with headers giving its size and digest.
DEAD_LETTER_MAX_BYTES = 16 * 1024 * 1024
DEAD_LETTER_EXCERPT_BYTES = 64 * 1024
# Seconds between looks for mapped topics that do not exist yet.
TOPIC_RECHECK = 10.0
# Seconds between updates of the lag gauges when no commit updates them (Cassandra down, idle).
LAG_EVERY = 5.0



def topic_for(config: PipelineConfig, mapping: MappingConfig) -> str:
    """The topic of a mapping: its own `topic`, else Debezium's <topic_prefix>.<schema>.<table>."""
    return mapping.topic or f"{config.debezium.topic_prefix}.{config.debezium.schema}.{mapping.table}"


def topics_for(config: PipelineConfig) -> dict[str, MappingConfig]:
    """The topics this consumer reads (one per mapping; heartbeat and transaction topics are not among
    them), each with its mapping."""
    return {topic_for(config, m): m for m in config.mappings}


def load_mappings(
    config: PipelineConfig, sink: CassandraSink[Any], *, with_postgres: bool = True
) -> Mappings:
    """Build the mappers and check them against the live Cassandra tables and, when PostgreSQL answers,
    its tables too. ConfigError names every problem."""
    cql_tables = {}
    for m in config.mappings:
        meta = sink.table_metadata(config.cassandra.keyspace, m.target)
        if meta is not None:
            cql_tables[m.target] = cql_table_from_metadata(meta)
    pg_tables = None
    if with_postgres:
        from consumer.verify import read_pg_tables

        try:
            pg_tables = read_pg_tables(config, [m.table for m in config.mappings])
        except Exception as exc:  # PostgreSQL is not needed to consume: check what can be checked
            log.warning("PostgreSQL tables not checked against the mappings: %s", str(exc).strip())
    return build_mappings(config, cql_tables, pg_tables=pg_tables,
                          timestamp_offset=config.consumer.timestamp_offset)


def kafka_client_config(kafka: KafkaConfig) -> dict[str, Any]:
    """bootstrap and security settings shared by the consumer and the dead-letter producer."""
    return {**kafka_client_options(kafka), "reconnect_backoff_ms": 200, "reconnect_backoff_max_ms": 10_000}


def fetch_settings(cc: ConsumerConfig) -> dict[str, Any]:
    """How a member fetches (kafka-python settings); bench/consumer_throughput.py reads with the same."""
    return {"max_poll_records": cc.max_poll_records, "fetch_max_wait_ms": 100,
            "max_partition_fetch_bytes": 4 * 1024 * 1024}


@dataclass(slots=True, eq=False)
class Origin:
    """The record a write came from: acknowledging the write acknowledges (part of) the record."""

    state: PartitionState
    offset: int
    table: str
    op: str
    ts_ms: int | None
    writes: int = 1   # acknowledgements the record waits for


class StopRequested(Exception):
    """Raised inside retry loops when the member is asked to stop."""


class Member:
    """One consumer-group member. `run()` returns the process exit status."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        worker: int = 0,
        install_signals: bool = True,
        client_id: str | None = None,
        parent_pid: int | None = None,
        mappings: Any = None,
        decoder: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.cc = config.consumer
        self.worker = worker
        self.install_signals = install_signals
        self.client_id = client_id or f"{self.cc.group_id}-{socket.gethostname()}-{os.getpid()}"
        self.parent_pid = parent_pid
        self.topics = topics_for(config)
        self.stop_event = threading.Event()
        self._signals = StopSignals()
        self.metrics = ConsumerMetrics()
        self.tracker = OffsetTracker()
        self.sink: CassandraSink[Origin] = CassandraSink(
            config.cassandra, max_in_flight=self.cc.max_in_flight, batch_max_rows=self.cc.batch_max_rows,
        )
        self.mappings: Any = mappings
        self._decode = decoder or decode
        self.consumer: Any = None
        self._dlq: Any = None
        # Requests not yet acknowledged that are not in flight: not sent yet, or failed transiently.
        self.backlog: deque[Request[Origin]] = deque()
        self._failing: BaseException | None = None
        self._fatal: BaseException | None = None
        self._paused = False
        self._recovering = False
        self._last_commit = time.monotonic()
        self._since_commit = 0  # records acknowledged since the last commit
        self._applied_since_log = 0
        self._last_log = time.monotonic()
        self._warned: set[str] = set()
        self._hints: Any = getattr(mappings, "decode_hints", None)
        self._records_seen = 0
        self._applied_total = 0
        self._dead_lettered = 0
        self.assigned_event = threading.Event()
        self._subscribed: list[str] = []
        self._missing: list[str] = []
        self._topics_checked = 0.0
        self._lag_at = 0.0
        self._listener: Any = None

    # --- lifecycle -------------------------------------------------------------------------------

    def request_stop(self, reason: str = "") -> None:
        if not self.stop_event.is_set():
            why = f" ({reason})" if reason else ""
            log.info("stopping%s: draining in-flight writes, then committing", why)
        self.stop_event.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signals.is_second():
            os.write(2, f"consumer: second {signal.Signals(signum).name}, exiting at once\n".encode())
            os._exit(128 + signum)
        self.request_stop(signal.Signals(signum).name)

    def _check_stop(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.request_stop("parent process gone")
        if self.stop_event.is_set():
            raise StopRequested()

    def run(self) -> int:
        if self.install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.metrics.serve(self.cc.metrics_port + self.worker if self.cc.metrics_port else 0)
        except OSError as exc:
            log.warning("metrics port %d: %s (metrics not served)", self.cc.metrics_port + self.worker, exc)
        code = EXIT_OK
        try:
            self._start()
            self._loop()
        except StopRequested:
            pass
        except ConfigError as exc:
            log.error("the mappings do not match the tables:\n  %s", "\n  ".join(exc.problems))
            code = EXIT_CONFIG
        except PermanentError as exc:
            log.error("fatal: %s", exc)
            code = EXIT_FATAL
        except Exception:
            log.exception("fatal error in the consumer loop")
            code = EXIT_FATAL
        finally:
            self._shutdown()
        if self._fatal is not None and code == EXIT_OK:
            code = EXIT_FATAL
        return code

    def _start(self) -> None:
        if not self.topics:
            raise PermanentError("no mappings in the config: nothing to consume")
        self._retry("connecting to Cassandra", self.sink.connect)
        if self.mappings is None:
            self.mappings = load_mappings(self.config, self.sink)
            self._hints = self.mappings.decode_hints
            self.topics = {m.topic: m.mapping for m in self.mappings.mappers}
        self.consumer = self._retry("connecting to Kafka", self._make_consumer)
        self._listener = _Listener(self)
        self._retry("listing Kafka topics", self._subscribe)

    def _make_consumer(self) -> Any:
        try:
            consumer = KafkaConsumer(
                group_id=self.cc.group_id,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.cc.session_timeout_ms,
                heartbeat_interval_ms=max(1000, self.cc.session_timeout_ms // 10),
                allow_auto_create_topics=False,
                metadata_max_age_ms=15_000,
                **fetch_settings(self.cc),
                **kafka_client_config(self.config.kafka),
            )
        except kafka_errors.KafkaError as exc:
            servers = ",".join(self.config.kafka.bootstrap_servers)
            raise KafkaUnavailableError(f"Kafka {servers}: {exc}") from exc
        # kafka-python 3.0 does not hand allow_auto_create_topics to its cluster metadata, whose metadata
        # requests then let a broker with auto.create.topics.enable create a subscribed topic that
        # Debezium has not created yet, with the broker's default partition count. Set it there.
        cluster = getattr(getattr(consumer, "_manager", None), "cluster", None)
        if cluster is not None and isinstance(getattr(cluster, "config", None), dict):
            cluster.config["allow_auto_create_topics"] = False
        await_whole_joins(consumer, self.cc.session_timeout_ms)
        return consumer

    def _subscribe(self) -> None:
        """Subscribe to the mapped topics that exist. Debezium creates a table's topic with its first change,
        so some may come later: they are looked for again every TOPIC_RECHECK seconds. (Subscribing to a
        missing topic would either have a broker create it with default settings, or make the client ask
        for it over and over.)"""
        try:
            existing = set(self.consumer.topics())
        except kafka_errors.KafkaError as exc:
            raise KafkaUnavailableError(f"listing topics: {exc}") from exc
        self._topics_checked = time.monotonic()
        present = sorted(t for t in self.topics if t in existing)
        missing = sorted(t for t in self.topics if t not in existing)
        if present != self._subscribed:
            if present:
                self.consumer.subscribe(topics=present, listener=self._listener)
            elif self._subscribed:
                self.consumer.unsubscribe()
            self._subscribed = present
            log.info("member %s of group %s subscribed to %s", self.client_id, self.cc.group_id,
                     ", ".join(present) or "nothing yet")
        if missing and missing != self._missing:
            log.info("waiting for topics %s (each appears with its table's first change)", ", ".join(missing))
        self._missing = missing

    def _dead_letter_producer(self) -> Any:
        if self._dlq is None:
            self._ensure_dead_letter_topic()
            try:
                self._dlq = KafkaProducer(
                    client_id=f"{self.client_id}-dlq", acks="all", linger_ms=0, retries=5,
                    max_request_size=DEAD_LETTER_MAX_BYTES + 64 * 1024,   # record plus batch overhead
                    **kafka_client_config(self.config.kafka),
                )
            except kafka_errors.KafkaError as exc:
                raise KafkaUnavailableError(f"dead-letter producer: {exc}") from exc
        return self._dlq

    def _ensure_dead_letter_topic(self) -> None:
        """Create the dead-letter topic if it does not exist (brokers that do not auto-create topics
        are common, and a poison message must not wait for an operator), with room for records larger
        than the broker's 1 MiB default: an oversized message is one of the poisons it must hold."""
        from kafka.admin import KafkaAdminClient

        try:
            admin = KafkaAdminClient(
                client_id=f"{self.client_id}-admin", **kafka_client_config(self.config.kafka)
            )
        except kafka_errors.KafkaError as exc:
            raise KafkaUnavailableError(f"Kafka admin client: {exc}") from exc
        try:
            if self.cc.dead_letter_topic not in set(admin.list_topics()):
                configs = {"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}
                admin.create_topics({self.cc.dead_letter_topic: {"configs": configs}}, raise_errors=False)
                log.info("created the dead-letter topic %s", self.cc.dead_letter_topic)
        except kafka_errors.KafkaError as exc:
            log.warning("could not check or create the dead-letter topic %s: %s",
                        self.cc.dead_letter_topic, exc)
        finally:
            admin.close()

    # --- retries ---------------------------------------------------------------------------------

    def _wait_strategy(self) -> Any:
        # exponential with jitter, spelled so that it means the same in every tenacity 8.2..9.x
        initial = self.cc.retry_backoff_initial_seconds
        return wait_exponential(multiplier=initial, max=self.cc.retry_backoff_max_seconds) + wait_random(
            0, initial
        )

    def _retry(self, what: str, fn: Callable[[], Any], sleep: Callable[[float], None] | None = None) -> Any:
        """Run `fn` until it stops raising TransientError, with backoff; StopRequested when asked to stop."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs",
                        what, state.attempt_number, exc, wait)

        def stop(_state: RetryCallState) -> bool:
            return self.stop_event.is_set()

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            wait=self._wait_strategy(),
            stop=stop,
            sleep=sleep or self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except TransientError:
            if self.stop_event.is_set():
                raise StopRequested() from None
            raise

    def _sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def _sleep_polling(self, seconds: float) -> None:
        """Back off while staying in the group: poll (all partitions paused) until `seconds` pass."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._poll_paused(min(left, 0.5))

    def _poll_paused(self, seconds: float) -> None:
        try:
            records = self.consumer.poll(timeout_ms=max(1, int(seconds * 1000)))
        except kafka_errors.KafkaError as exc:
            log.warning("Kafka poll: %s", exc)
            self.stop_event.wait(min(seconds, 1.0))
            return
        # A paused partition returns nothing; anything that comes anyway is fetched again later.
        for tp, recs in records.items():
            if recs:
                self.consumer.seek(tp, recs[0].offset)
        self._apply_completions()
        self._maybe_update_lag()

    # --- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        consumer = self.consumer
        kafka_backoff = self._wait_strategy()
        kafka_failures = 0
        while True:
            self._check_stop()
            if self._fatal is not None:
                raise self._fatal
            if self._failing is not None:
                self._recover()
                continue
            if self.backlog:
                self._send_backlog()
                continue
            if self._missing and time.monotonic() - self._topics_checked > TOPIC_RECHECK:
                try:
                    self._subscribe()
                except KafkaUnavailableError as exc:
                    log.warning("%s", exc)
            if not self._subscribed:
                self._sleep(0.5)
                continue
            try:
                records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                kafka_failures = 0
            except kafka_errors.KafkaError as exc:
                kafka_failures += 1
                delay = kafka_backoff(_retry_state(kafka_failures))
                log.warning("Kafka poll failed (%d in a row): %s; retrying in %.1fs",
                            kafka_failures, exc, delay)
                self._sleep(delay)
                continue
            self._apply_completions()
            if records:
                self._handle(records)
                self._send_backlog()
            self._apply_completions()
            self._maybe_commit()
            self._maybe_update_lag()

    def _handle(self, records: Mapping[Any, Sequence[Any]]) -> None:
        """Decode, map and queue the writes of one poll's records."""
        decode_ = self._decode
        mappings = self.mappings
        hints = self._hints
        tracker = self.tracker
        consumed: Tally[tuple[str, str]] = Tally()
        skipped: Tally[str] = Tally()
        items: list[tuple[WriteLike, Origin]] = []
        for tp, recs in records.items():
            state = tracker.get(tp)
            if state is None:
                continue  # no longer ours: its new owner reads it from the committed offset
            self._records_seen += len(recs)
            highest = state.highest
            for rec in recs:
                offset = rec.offset
                if highest is not None and offset <= highest:
                    # Kafka moved the position back (an offset reset after log truncation): these
                    # offsets are tracked already, and their writes are idempotent.
                    self._warn_once(f"rewound:{tp}", "%s[%d] went back to offset %d (had %d); records "
                                    "already received are not applied twice", rec.topic, rec.partition,
                                    offset, highest)
                    continue
                change = None
                try:
                    change = decode_(rec.topic, rec.partition, offset, rec.key, rec.value, hints)
                    if change is None:
                        state.register(offset, 0)
                        skipped[rec.topic] += 1
                        continue
                    mapper = mappings.for_change(change)
                    if mapper is None:
                        self._warn_once(f"unmapped:{rec.topic}", "changes on %s of an unmapped table "
                                        "ignored", rec.topic)
                        state.register(offset, 0)
                        continue
                    # Labelled by the mapping's table, never by what a message claims (no label flood).
                    consumed[(mapper.mapping.table, change.op)] += 1
                    if change.op == "t" and self.cc.truncate == "ignore":
                        self._warn_once(f"truncate:{change.table}",
                                        "TRUNCATE of %s ignored (consumer.truncate: ignore)", change.table)
                        state.register(offset, 0)
                        continue
                    writes = mapper.map(change)
                except PoisonMessageError as exc:
                    if exc.topic is None:
                        exc.locate(rec.topic, rec.partition, offset)
                    table = self._table_of(rec.topic)
                    op = change.op if change is not None else "?"
                    state.register(offset, 1)
                    self._dead_letter(rec, exc, Origin(state, offset, table, op, None))
                    continue
                if not writes:
                    state.register(offset, 0)
                    continue
                if writes[0].kind == "truncate":
                    self._flush(items, records)
                    items = []
                    self._truncate(writes[0], state, offset)
                    continue
                state.register(offset, len(writes))
                origin = Origin(state, offset, mapper.mapping.table, change.op, change.ts_ms, len(writes))
                for write in writes:
                    items.append((write, origin))
                if len(items) >= FLUSH_ROWS:
                    self._flush(items, records)
                    items = []
                    self._send_backlog()
        if consumed:
            self.metrics.count_consumed(consumed)
        for topic, n in skipped.items():
            self.metrics.skipped.labels(topic=topic).inc(n)
        self._flush(items, records)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _flush(self, items: list[tuple[WriteLike, Origin]], records: Mapping[Any, Sequence[Any]]) -> None:
        if not items:
            return
        try:   # the retry machinery only when needed: this runs every FLUSH_ROWS rows
            requests, rejected = self.sink.build(items)
        except TransientError:
            requests, rejected = self._retry("preparing Cassandra statements", lambda: self.sink.build(items))
        self.backlog.extend(requests)
        # The sink rejects a record once, with none of its writes sent (a key-moving update must not
        # delete the old row when its new row cannot be written).
        for origin, write, exc in rejected:
            rec = self._find_record(records, origin)
            poison = PoisonMessageError("bad_value", f"{write.keyspace}.{write.table}", str(exc))
            self._dead_letter(rec, poison.locate(rec.topic, rec.partition, rec.offset), origin)

    @staticmethod
    def _find_record(records: Mapping[Any, Sequence[Any]], origin: Origin) -> Any:
        for rec in records.get(KafkaTopicPartition(*origin.state.tp), ()):
            if rec.offset == origin.offset:
                return rec
        raise PermanentError(f"record {origin.state.tp}@{origin.offset} not found for dead-lettering")

    def _table_of(self, topic: str) -> str:
        mapping = self.topics.get(topic)
        return mapping.table if mapping else topic

    def _send_backlog(self, deadline: float | None = None) -> None:
        """Send the backlog in order, waiting for free slots; stops early when writes fail."""
        backlog, sink = self.backlog, self.sink
        while backlog and self._failing is None and self._fatal is None:
            if sink.submit(backlog[0], timeout=SUBMIT_WAIT):
                backlog.popleft()
            else:
                self._apply_completions()
                if deadline is not None and time.monotonic() > deadline:
                    return

    def _apply_completions(self) -> None:
        """Apply what Cassandra answered: acknowledge offsets, count, or queue retries."""
        completed = self.sink.completed
        if not completed:
            return
        self.metrics.in_flight.set(self.sink.in_flight)
        applied: Tally[tuple[str, str]] = Tally()
        latencies = self.metrics.write_latency
        e2e: list[float] = []
        acked = 0
        while completed:
            req = completed.popleft()
            exc = req.error
            if exc is None:
                latencies.observe(req.latency)
                now_ms = req.acked_at * 1000.0
                for origin in req.origins:
                    origin.state.ack(origin.offset)
                    applied[(origin.table, origin.op)] += 1
                    if origin.ts_ms is not None:
                        e2e.append((now_ms - origin.ts_ms) / 1000.0)
                acked += len(req.origins)
                continue
            if is_transient(exc):
                self.metrics.write_retries.inc()
                if all(o.state.revoked for o in req.origins):
                    continue  # the partitions moved; their new owner writes these rows again
                self.backlog.appendleft(req)
                if self._failing is None and not self._recovering:
                    log.warning("Cassandra write failed: %s: %s; pausing fetches and retrying",
                                type(exc).__name__, exc)
                self._failing = exc
            else:
                self._fatal = PermanentError(
                    f"Cassandra rejected a write ({type(exc).__name__}: {exc}) to "
                    f"{_describe_request(req)}; stopping without committing past it"
                )
        if applied:
            self.metrics.count_applied(applied)
            self.metrics.observe_e2e(e2e)
            self._since_commit += acked
            self._applied_since_log += acked
            self._applied_total += acked

    # --- Cassandra down --------------------------------------------------------------------------

    def _recover(self) -> None:
        """Pause everything and retry the backlog with backoff until Cassandra takes writes again."""
        self._pause_all()
        self.metrics.paused.set(1)
        started = time.monotonic()

        def attempt() -> None:
            self._check_stop()
            self._wait_in_flight(self.config.cassandra.request_timeout_seconds + 5)
            if not self.backlog:
                return
            # One request first, as a probe: a cluster that is down fails it fast.
            self._failing = None
            probe = self.backlog.popleft()
            self.sink.submit(probe)
            self._wait_in_flight(self.config.cassandra.request_timeout_seconds + 5)
            if self._failing is not None:
                raise SinkUnavailableError(f"Cassandra still failing: {_describe_error(self._failing)}")
            self._send_backlog()
            self._wait_in_flight(self.config.cassandra.request_timeout_seconds + 5)
            if self._failing is not None:
                raise SinkUnavailableError(f"Cassandra still failing: {_describe_error(self._failing)}")

        self._recovering = True
        try:
            self._retry("writing to Cassandra", attempt, sleep=self._sleep_polling)
        finally:
            self._recovering = False
        self._failing = None
        log.info("Cassandra takes writes again after %.1fs; resuming fetches", time.monotonic() - started)
        self.metrics.paused.set(0)
        self._resume_all()

    def _wait_in_flight(self, timeout: float) -> bool:
        """Wait (polling Kafka when a consumer exists) until no request is in flight."""
        deadline = time.monotonic() + timeout
        while self.sink.in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sink.wait_idle(min(left, 0.2))
            self._apply_completions()
        self._apply_completions()
        return True

    def _pause_all(self) -> None:
        if self.consumer is None:
            return
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        self._paused = True

    def _resume_all(self) -> None:
        if self.consumer is None:
            return
        self._paused = False
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    # --- truncate and dead letters ---------------------------------------------------------------

    def _truncate(self, write: WriteLike, state: PartitionState, offset: int) -> None:
        """consumer.truncate: apply. Every earlier write must land first (one still in flight would
        survive the truncate), then the table is truncated."""
        state.register(offset, 1)
        while self.backlog or self.sink.in_flight:
            self._check_stop()
            if self._failing is not None:
                self._recover()
            self._send_backlog()
            self._wait_in_flight(self.config.cassandra.request_timeout_seconds + 5)
        keyspace, table = write.keyspace, write.table

        def run() -> None:
            try:
                self.sink.truncate(keyspace, table)
            except Exception as exc:
                if is_transient(exc):
                    raise SinkUnavailableError(f"TRUNCATE {keyspace}.{table}: {exc}") from exc
                raise PermanentError(f"TRUNCATE {keyspace}.{table}: {exc}") from exc

        self._retry(f"TRUNCATE {keyspace}.{table}", run)
        log.warning("TRUNCATE applied to %s.%s", keyspace, table)
        state.ack(offset)

    def _dead_letter(self, rec: Any, exc: BaseException, origin: Origin) -> None:
        """Send the record as it came to the dead-letter topic, then count its offset as done."""
        headers = list(rec.headers or [])
        headers += [
            ("error", str(exc).encode("utf-8", "replace")),
            ("error_class", type(exc).__name__.encode()),
            ("error_reason", str(getattr(exc, "reason", "")).encode()),
            ("error_where", str(getattr(exc, "where", "")).encode()),
            ("original_topic", rec.topic.encode()),
            ("original_partition", str(rec.partition).encode()),
            ("original_offset", str(rec.offset).encode()),
            # Also the record's key, kept as it came: a header stays with the record if a reader re-keys it.
            ("original_key", rec.key[:DEAD_LETTER_EXCERPT_BYTES] if rec.key is not None else b""),
            ("consumer_group", self.cc.group_id.encode()),
        ]
        log.warning("poison message %s[%d]@%d -> %s: %s", rec.topic, rec.partition, rec.offset,
                    self.cc.dead_letter_topic, exc)

        def send() -> None:
            key, value = rec.key, rec.value
            extra: list[tuple[str, bytes]] = []
            while True:
                try:
                    producer = self._dead_letter_producer()
                    sent = producer.send(self.cc.dead_letter_topic, key=key, value=value,
                                         headers=headers + extra)
                    sent.get(timeout=30)
                    return
                except kafka_errors.MessageSizeTooLargeError as err:
                    if extra:   # even the shortened record is refused: retrying cannot help
                        raise PermanentError(
                            f"dead-letter topic {self.cc.dead_letter_topic} refuses a "
                            f"{_size(key) + _size(value)}-byte record: {err}") from err
                    # Permanent for this record: dead-letter its beginning, its size and digest; the whole
                    # record stays readable at its original offset until the topic's retention drops it.
                    log.warning("%s[%d]@%d is too large for the dead-letter topic (%s); sending its "
                                "first %d bytes", rec.topic, rec.partition, rec.offset, err,
                                DEAD_LETTER_EXCERPT_BYTES)
                    extra = _excerpt_headers(key, value)
                    key = key[:DEAD_LETTER_EXCERPT_BYTES] if key is not None else None
                    value = value[:DEAD_LETTER_EXCERPT_BYTES] if value is not None else None
                except kafka_errors.KafkaError as err:
                    raise KafkaUnavailableError(
                        f"dead-letter topic {self.cc.dead_letter_topic}: {err}") from err

        self._retry("sending to the dead-letter topic", send)
        self.metrics.count_dead_lettered(origin.table, origin.op)
        self._dead_lettered += 1
        origin.state.ack(origin.offset, origin.writes)
        self._since_commit += 1

    # --- commits ---------------------------------------------------------------------------------

    def _maybe_commit(self, force: bool = False) -> None:
        now = time.monotonic()
        due = (
            force
            or self._since_commit >= self.cc.commit_every
            or (now - self._last_commit) * 1000 >= self.cc.commit_interval_ms
        )
        if not due:
            return
        self._last_commit = now
        offsets = self.tracker.to_commit()
        if offsets:
            self._commit(offsets, "shutdown" if force else "")
            self._since_commit = 0

    def _commit(self, offsets: Mapping[TopicPartition, int], reason: str) -> bool:
        """Commit synchronously (the consumer thread)."""
        if self.consumer is None or not offsets:
            return True
        try:
            self.consumer.commit(
                {KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1)
                 for tp, off in offsets.items()},
                timeout_ms=30_000,
            )
        except (kafka_errors.CommitFailedError, kafka_errors.RebalanceInProgressError,
                kafka_errors.IllegalGenerationError, kafka_errors.UnknownMemberIdError) as exc:
            log.warning("commit not accepted (%s): the group is rebalancing; "
                        "the revocation commits instead", exc)
            return False
        except kafka_errors.KafkaError as exc:
            log.warning("commit failed: %s (retried at the next commit)", exc)
            return False
        self.tracker.mark_committed(offsets)
        self.metrics.commits.inc()
        self._log_commit(offsets, reason)
        return True

    def _log_commit(self, offsets: Mapping[TopicPartition, int], reason: str) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_log, 1e-6)
        rate = self._applied_since_log / elapsed
        self._applied_since_log = 0
        self._last_log = now
        lag = self._update_lag()
        shown = ", ".join(f"{tp.topic}[{tp.partition}]={off}" for tp, off in sorted(offsets.items()))
        log.info("commit%s: %.0f events/s, lag %s, offsets %s",
                 f" ({reason})" if reason else "", rate, "?" if lag is None else lag, shown)

    def _maybe_update_lag(self) -> None:
        if time.monotonic() - self._lag_at >= LAG_EVERY:
            self._update_lag()

    def _update_lag(self) -> int | None:
        self._lag_at = time.monotonic()
        if self.consumer is None:
            return None
        total, known = 0, False
        for state in self.tracker.states():
            try:
                high = self.consumer.highwater(KafkaTopicPartition(*state.tp))
            except kafka_errors.KafkaError:
                high = None
            position = state.committed if state.committed is not None else state.committable
            if high is None or position is None:
                continue
            lag = max(0, high - position)
            self.metrics.set_lag(state.tp[0], state.tp[1], lag)
            total += lag
            known = True
        return total if known else None

    # --- rebalances (called on Kafka's IO thread while the consumer thread waits in poll/close) ----

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        tps = list(assigned)
        self.tracker.assign(tps)
        log.info("assigned %s", ", ".join(f"{t.topic}[{t.partition}]" for t in sorted(tps)) or "nothing")
        if self._paused and tps and self.consumer is not None:
            self.consumer.pause(*tps)
        self.assigned_event.set()

    def revoked_offsets(self, revoked: Iterable[Any], *, lost: bool = False) -> dict[TopicPartition, int]:
        tps = list(revoked)
        offsets = self.tracker.revoke(tps)
        for tp in tps:
            self.metrics.forget_partition(tp.topic, tp.partition)
        # Requests only for partitions we no longer own need not be sent: their new owner re-reads them.
        self.backlog = deque(r for r in self.backlog if not all(o.state.revoked for o in r.origins))
        if lost:
            log.warning("lost %s without committing", ", ".join(f"{t.topic}[{t.partition}]" for t in tps))
            return {}
        return offsets

    def committed_on_revoke(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.metrics.commits.inc()
        self._log_commit(offsets, "revoke")

    # --- shutdown --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop fetching, drain (bounded by consumer.shutdown_timeout_seconds), commit, close."""
        deadline = time.monotonic() + self.cc.shutdown_timeout_seconds
        try:
            if self.consumer is not None:
                try:
                    self._pause_all()
                except Exception as exc:  # an unusable consumer must not prevent the rest
                    log.debug("pausing on shutdown: %s", exc)
            if self._fatal is None and self.sink.connected:
                while (self.backlog or self.sink.in_flight) and time.monotonic() < deadline:
                    if self._failing is not None:
                        self._failing = None  # try again, a little later
                        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                    self._send_backlog(deadline)
                    self._wait_in_flight(max(0.0, deadline - time.monotonic()))
                if self.backlog or self.sink.in_flight:
                    log.warning("shutdown: %d requests not written; not committed, they will be read again",
                                len(self.backlog) + self.sink.in_flight)
            else:
                self._wait_in_flight(min(5.0, max(0.0, deadline - time.monotonic())))
            self._apply_completions()
            if self.consumer is not None:
                offsets = self.tracker.to_commit()
                if offsets:
                    self._commit(offsets, "shutdown")
        finally:
            self._close()

    def _close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=10_000)
            except Exception as exc:
                log.warning("closing the Kafka consumer: %s", exc)
            self.consumer = None
        if self._dlq is not None:
            try:
                self._dlq.close(timeout=10)
            except Exception as exc:
                log.warning("closing the dead-letter producer: %s", exc)
            self._dlq = None
        self.sink.close()
        log.info("consumer stopped: %d records consumed, %d events applied, %d dead-lettered",
                 self._records_seen, self._applied_total, self._dead_lettered)


def await_whole_joins(consumer: Any, wait_ms: int) -> None:
    """Make poll() wait up to `wait_ms` for a group join it starts, whatever poll's own timeout.

    kafka-python 3.0 (up to 3.0.12) stops waiting for a JoinGroup/SyncGroup round when poll()'s timeout
    passes and leaves the round running, to be awaited by the next poll(). When the round ends in between,
    that next poll() takes the finished round for a stale one: it drops the assignment and sends JoinGroup
    again; from the group leader, that starts a new rebalance. Seen here with two members polling with
    1 ms timeouts: one of them never got partitions (tests/integration/test_group_join.py, 3 failures in
    3 runs without this), or two consumer processes rebalanced every 0.2 s for a minute; and with this
    loop's 200 ms, a bench drain left one member without partitions until the broker expired it 45 s
    later. Joins shorter than `wait_ms` now end inside the poll() that started them; a longer one (a member
    slow to rejoin) falls back to the library's behaviour. Meanwhile poll() blocks: a stop signal is acted
    on when the join ends.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "ensure_active_group"):
        log.warning("kafka-python without KafkaConsumer._coordinator.ensure_active_group: group joins "
                    "keep poll()'s timeout")
        return
    ensure = coordinator.ensure_active_group

    def ensure_active_group(timeout_ms: float | None = None) -> bool:
        return bool(ensure(timeout_ms=None if timeout_ms is None else max(timeout_ms, wait_ms)))

    coordinator.ensure_active_group = ensure_active_group


class _ClosedTransportNoise(logging.Filter):
    """kafka-python 3.0 logs a traceback at ERROR when its IO thread reads from a connection that the
    consumer's close() has just shut (its transport's socket is already None): seen on a clean stop,
    after every write was acknowledged and committed. Only that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, AttributeError) and "(closed)" in record.getMessage()
                    and "Error receiving network data" in record.getMessage())


def quiet_kafka_logging() -> None:
    """kafka-python's own INFO lines (connections, metadata) drown the consumer's; its warnings stay."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    transport = logging.getLogger("kafka.net.transport")
    if not any(isinstance(f, _ClosedTransportNoise) for f in transport.filters):
        transport.addFilter(_ClosedTransportNoise())


def worker_main(config_path: str, index: int, parent_pid: int) -> None:
    """One member in a child process of `python -m consumer --workers N` (multiprocessing, spawn)."""
    from pipeline.cli import load_or_exit, setup_logging

    # Out of the terminal's process group: a Ctrl-C reaches the parent only, which forwards it once.
    os.setpgrp()
    config = load_or_exit(config_path)
    setup_logging(config.consumer.log_level)
    quiet_kafka_logging()
    raise SystemExit(Member(config, worker=index, parent_pid=parent_pid).run())


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Async so that the synchronous commit on revocation can await Kafka on its IO loop.

    kafka-python 3.x runs rebalance callbacks on its IO thread while the consumer thread is blocked in
    poll()/close(); a blocking consumer call from there would deadlock, so the commit is awaited.
    """

    def __init__(self, member: Member) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: Any) -> None:
        member = self.member
        if not revoked:
            return
        await _drain(member)
        offsets = member.revoked_offsets(revoked)
        if not offsets or member.consumer is None:
            return
        commit = {KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1)
                  for tp, off in offsets.items()}
        try:
            await member.consumer.commit_async(commit)
        except kafka_errors.KafkaError as exc:
            log.warning("commit on revocation failed: %s (the new owner re-reads from the last commit)", exc)
            return
        member.committed_on_revoke(offsets)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.member.on_assigned(assigned)

    async def on_partitions_lost(self, lost: Any) -> None:
        self.member.revoked_offsets(lost, lost=True)


async def _drain(member: Member) -> None:
    """Wait for in-flight writes without blocking the IO loop (heartbeats keep going)."""
    deadline = time.monotonic() + min(member.cc.shutdown_timeout_seconds, member.cc.session_timeout_ms / 2000)
    net = getattr(member.consumer, "_net", None)
    while member.sink.in_flight and time.monotonic() < deadline:
        if net is not None and hasattr(net, "sleep"):
            await net.sleep(0.01)  # the IO loop's own sleep: other tasks run meanwhile
        else:
            member.sink.wait_idle(0.01)
    member._apply_completions()


def _size(data: bytes | None) -> int:
    return 0 if data is None else len(data)


def _excerpt_headers(key: bytes | None, value: bytes | None) -> list[tuple[str, bytes]]:
    return [
        ("truncated", b"true"),
        ("original_key_bytes", str(_size(key)).encode()),
        ("original_value_bytes", str(_size(value)).encode()),
        ("original_value_sha256", hashlib.sha256(value or b"").hexdigest().encode()),
    ]


def _describe_request(req: Request[Origin]) -> str:
    origins = req.origins
    first = origins[0]
    topic, partition = first.state.tp
    return f"{first.table} ({len(origins)} rows, first {topic}[{partition}]@{first.offset})"


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _retry_state(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return state
