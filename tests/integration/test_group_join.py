"""Two members of one group settle on the real broker even when poll() times out in the middle of a join
(consumer.app.await_whole_joins; kafka-python 3.0 otherwise drops a join that ends between two polls and
joins again, and from the leader that is a new rebalance each time).

Each member polls with a 1 ms timeout and then spends 0.2 s away from poll(), as the consumer's loop
does while it writes: nearly every JoinGroup/SyncGroup round outlives the poll() that started it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from consumer.app import await_whole_joins
from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.integration

PARTITIONS = 6


class Member(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, config: PipelineConfig, group: str, topic: str) -> None:
        self.assignments: list[tuple[float, frozenset[int]]] = []
        self.consumer = KafkaConsumer(
            **kafka_client_options(config.kafka), group_id=group, enable_auto_commit=False,
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
        await_whole_joins(self.consumer, 10_000)
        self.consumer.subscribe([topic], listener=self)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assignments.append((time.monotonic(), frozenset(tp.partition for tp in assigned)))

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.consumer.poll(timeout_ms=1):
                self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close(autocommit=False)


@pytest.fixture
def topic(kafka: PipelineConfig) -> Iterator[str]:
    name = "test-join-" + uuid.uuid4().hex[:10]
    admin = KafkaAdminClient(**kafka_client_options(kafka.kafka), client_id="test-group-join")
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    try:
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


def test_two_members_settle_although_polls_time_out_mid_join(kafka: PipelineConfig, topic: str) -> None:
    group = "test-join-" + uuid.uuid4().hex[:10]
    first = Member(kafka, group, topic)
    time.sleep(1.0)   # the first member owns everything, then the second one's join is a rebalance
    second = Member(kafka, group, topic)
    members = (first, second)
    try:
        deadline = time.monotonic() + 30
        while True:
            latest = [m.assignments[-1] if m.assignments else (0.0, frozenset()) for m in members]
            quiet = time.monotonic() - max(at for at, _ in latest)
            if all(parts for _, parts in latest) and quiet > 5:
                break
            assert time.monotonic() < deadline, (
                f"the group did not settle in 30 s: {len(first.assignments)} and {len(second.assignments)}"
                f" assignments, latest {latest}")
            time.sleep(0.2)
        (_, a), (_, b) = latest
        assert not a & b and a | b == set(range(PARTITIONS))
        # Settled: one rebalance for the second member's arrival, not a stream of them.
        assert len(first.assignments) <= 3 and len(second.assignments) <= 2
    finally:
        for m in members:
            m.close()
