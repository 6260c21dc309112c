"""The offset tracker: only a fully acknowledged prefix of what was received is ever committable."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import OffsetTracker, PartitionState, TopicPartition

TP = TopicPartition("binance.public.trades", 0)


def test_nothing_committable_before_any_ack() -> None:
    s = PartitionState(TP)
    s.register(0, 1)
    s.register(1, 1)
    assert s.committable is None
    assert s.to_commit() is None
    assert s.outstanding == 2


def test_out_of_order_acks_commit_only_the_contiguous_prefix() -> None:
    s = PartitionState(TP)
    for off in range(5):
        s.register(off, 1)
    s.ack(3)
    s.ack(1)
    assert s.committable is None  # offset 0 still in flight
    s.ack(0)
    assert s.committable == 2  # 0 and 1 done; 2 is not
    s.ack(4)
    assert s.committable == 2
    s.ack(2)
    assert s.committable == 5
    assert s.outstanding == 0


def test_records_without_writes_are_done_at_once_but_never_overtake() -> None:
    s = PartitionState(TP)
    s.register(10, 0)  # a tombstone
    assert s.committable == 11
    s.register(11, 1)
    s.register(12, 0)  # a heartbeat behind an unacknowledged write
    assert s.committable == 11
    s.ack(11)
    assert s.committable == 13


def test_gaps_in_offsets_do_not_block() -> None:
    s = PartitionState(TP)
    s.register(100, 1)
    s.register(105, 1)  # 101..104 compacted away or control records
    s.ack(105)
    s.ack(100)
    assert s.committable == 106


def test_a_record_with_several_writes_needs_all_of_them() -> None:
    s = PartitionState(TP)
    s.register(0, 3)
    s.ack(0)
    s.ack(0)
    assert s.committable is None
    s.ack(0)
    assert s.committable == 1


def test_batch_ack_counts() -> None:
    s = PartitionState(TP)
    s.register(0, 2)
    s.add_writes(0, 1)
    s.ack(0, count=2)
    assert s.committable is None
    s.ack(0)
    assert s.committable == 1


def test_offsets_must_increase() -> None:
    s = PartitionState(TP)
    s.register(5, 1)
    with pytest.raises(ValueError):
        s.register(5, 1)
    with pytest.raises(ValueError):
        s.register(3, 0)


def test_late_or_unknown_acks_are_ignored() -> None:
    s = PartitionState(TP)
    s.register(0, 1)
    s.ack(0)
    s.ack(0)  # duplicate
    s.ack(99)  # never registered
    assert s.committable == 1


def test_to_commit_reports_only_movement() -> None:
    t = OffsetTracker()
    t.assign([TP, TopicPartition("x", 1)])
    t.state(TP).register(0, 1)
    assert t.to_commit() == {}
    t.state(TP).ack(0)
    assert t.to_commit() == {TP: 1}
    t.mark_committed({TP: 1})
    assert t.to_commit() == {}
    t.state(TP).register(1, 0)
    assert t.to_commit() == {TP: 2}


def test_committed_offsets_at_assignment_are_not_recommitted() -> None:
    t = OffsetTracker()
    t.assign([TP], committed={TP: 42})
    assert t.to_commit() == {}
    t.state(TP).register(42, 0)
    assert t.to_commit() == {TP: 43}


def test_revoke_returns_the_prefix_and_detaches_the_state() -> None:
    t = OffsetTracker()
    other = TopicPartition("binance.public.trades", 1)
    t.assign([TP, other])
    s = t.state(TP)
    for off in range(4):
        s.register(off, 1)
    s.ack(0)
    s.ack(2)
    t.state(other).register(7, 0)
    assert t.revoke([TP]) == {TP: 1}  # 1 still in flight: 2 must not be committed
    assert s.revoked
    assert t.get(TP) is None
    assert t.partitions() == [other]
    s.ack(1)  # a late ack changes nothing the tracker reports
    assert t.to_commit() == {other: 8}
    assert t.revoke([TP]) == {}


def test_reassignment_starts_fresh() -> None:
    t = OffsetTracker()
    t.assign([TP])
    old = t.state(TP)
    old.register(0, 1)
    t.revoke([TP])
    t.assign([TP])
    new = t.state(TP)
    assert new is not old
    old.ack(0)
    assert new.committable is None
    new.register(0, 0)
    assert new.committable == 1


def test_assign_keeps_existing_state() -> None:
    t = OffsetTracker()
    t.assign([TP])
    s = t.state(TP)
    t.assign([TP, TopicPartition("y", 0)])
    assert t.state(TP) is s


def test_kafka_topic_partition_keys_work() -> None:
    from kafka.structs import TopicPartition as KafkaTP

    t = OffsetTracker()
    t.assign([KafkaTP("a", 0)])
    t.state(KafkaTP("a", 0)).register(0, 0)
    assert t.to_commit() == {TopicPartition("a", 0): 1}
    assert t.to_commit([KafkaTP("a", 0)]) == {("a", 0): 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60), st.randoms())
def test_committable_is_always_a_fully_acked_prefix(writes: list[int], rnd: random.Random) -> None:
    """Whatever the ack order, the committable offset never passes an unacknowledged record."""
    s = PartitionState(TP)
    offsets = []
    off = 0
    for n in writes:
        off += rnd.randint(1, 3)  # gaps
        s.register(off, n)
        offsets.append((off, n))
    acks = [o for o, n in offsets for _ in range(n)]
    rnd.shuffle(acks)
    remaining = dict(offsets)
    for o in acks:
        s.ack(o)
        remaining[o] -= 1
        c = s.committable
        if c is not None:
            assert all(remaining[x] == 0 for x, _ in offsets if x < c)
        undone = [x for x, _ in offsets if remaining[x] > 0]
        if undone:
            assert c is None or c <= min(undone)
    assert s.committable == offsets[-1][0] + 1
    assert s.outstanding == 0
