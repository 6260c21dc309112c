"""Prometheus metrics of one consumer process, served on consumer.metrics_port (0: not served).

Each process has its own registry, so several consumers (tests, `--workers`) never collide on names;
with `--workers N` member i serves on metrics_port + i.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Cassandra write latency: sub-millisecond to several seconds (timeouts end at request_timeout).
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Source commit to Cassandra ack: Debezium's poll interval plus ours; minutes when catching up.
E2E_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0, 30.0, 60.0, 300.0, 1800.0,
)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "cdc_consumer_events_consumed", "Change events received and decoded", ["table", "op"], registry=r
        )
        self.applied = Counter(
            "cdc_consumer_events_applied", "Change events written to Cassandra and acknowledged",
            ["table", "op"], registry=r,
        )
        self.dead_lettered = Counter(
            "cdc_consumer_events_dead_lettered", "Poison messages sent to the dead-letter topic",
            ["table", "op"], registry=r,
        )
        self.skipped = Counter(
            "cdc_consumer_events_skipped",
            "Records that need no write (tombstones, heartbeats, ignored truncates)",
            ["topic"], registry=r,
        )
        self.write_retries = Counter(
            "cdc_consumer_cassandra_retries", "Cassandra requests retried after a transient failure",
            registry=r,
        )
        self.commits = Counter("cdc_consumer_commits", "Offset commits to Kafka", registry=r)
        self.write_latency = Histogram(
            "cdc_consumer_cassandra_write_seconds",
            "Cassandra request latency (a request is one row or a batch)",
            buckets=WRITE_BUCKETS, registry=r,
        )
        self.e2e_latency = Histogram(
            "cdc_consumer_end_to_end_seconds", "From the source commit (source.ts_ms) to the Cassandra ack",
            buckets=E2E_BUCKETS, registry=r,
        )
        self.lag = Gauge(
            "cdc_consumer_lag", "Records between the committed position and the log end, per partition",
            ["topic", "partition"], registry=r,
        )
        self.in_flight = Gauge("cdc_consumer_in_flight", "Cassandra requests in flight", registry=r)
        self.paused = Gauge(
            "cdc_consumer_paused", "1 while fetching is paused because Cassandra fails", registry=r
        )
        self._children: dict[tuple[str, str, str], Counter] = {}

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
            log.info("metrics on http://0.0.0.0:%d/metrics", port)

    def _child(self, family: Counter, name: str, table: str, op: str) -> Counter:
        key = (name, table, op)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(table=table, op=op)
        return child

    def count_consumed(self, tally: Tally[tuple[str, str]]) -> None:
        for (table, op), n in tally.items():
            self._child(self.consumed, "consumed", table, op).inc(n)

    def count_applied(self, tally: Tally[tuple[str, str]]) -> None:
        for (table, op), n in tally.items():
            self._child(self.applied, "applied", table, op).inc(n)

    def count_dead_lettered(self, table: str, op: str) -> None:
        self._child(self.dead_lettered, "dlq", table, op).inc()

    def observe_e2e(self, seconds: Iterable[float]) -> None:
        observe = self.e2e_latency.observe
        for s in seconds:
            observe(max(s, 0.0))

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))
