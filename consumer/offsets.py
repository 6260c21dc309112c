"""Which offsets are safe to commit when writes complete out of order.

Every record the consumer receives is registered with its partition's `PartitionState` in the order
Kafka delivers it, together with the number of writes it still waits for (0 for a record that needs
no write: a tombstone, a heartbeat, an ignored truncate). Writes acknowledge their record in whatever
order Cassandra answers. The committable position of a partition is one past the last record of the
longest fully acknowledged prefix of what was received: committing it can never skip a record whose
write is not yet durable, and a gap in offsets (compaction, control records) never holds it back,
since only received offsets are tracked.

Threading: the states are touched by the consumer thread, and by the Kafka IO thread only while the
consumer thread is blocked in `poll()`/`close()` (rebalance callbacks). Completions from Cassandra's
threads are queued and applied by whichever of those two threads owns the state at that moment.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import NamedTuple


class TopicPartition(NamedTuple):
    """The same shape as kafka.TopicPartition, so either can be used as a key."""

    topic: str
    partition: int


class PartitionState:
    """One assigned partition: received offsets in order, writes outstanding per offset."""

    __slots__ = ("_pending", "_remaining", "committable", "committed", "highest", "revoked", "tp")

    def __init__(self, tp: tuple[str, int], committed: int | None = None) -> None:
        self.tp = tp
        self._pending: deque[int] = deque()
        self._remaining: dict[int, int] = {}
        # The next offset to commit (last contiguous done offset + 1); None until something is done.
        self.committable: int | None = committed
        # What was last committed for this partition by this member (or found committed at assignment).
        self.committed: int | None = committed
        self.highest: int | None = None
        # Set when the partition is revoked or lost: late acknowledgements then change nothing that matters.
        self.revoked = False

    def register(self, offset: int, writes: int) -> None:
        """A received record that waits for `writes` acknowledgements (0: done already)."""
        if self.highest is not None and offset <= self.highest:
            raise ValueError(f"{self.tp}: offset {offset} registered after {self.highest}")
        if writes < 0:
            raise ValueError("writes must be >= 0")
        self.highest = offset
        if writes == 0 and not self._pending:
            self.committable = offset + 1
            return
        self._pending.append(offset)
        self._remaining[offset] = writes
        if writes == 0:
            self._advance()

    def add_writes(self, offset: int, writes: int) -> None:
        """More acknowledgements to wait for on an offset already registered and not yet done."""
        if offset not in self._remaining:
            raise KeyError(f"{self.tp}: offset {offset} is not pending")
        self._remaining[offset] += writes

    def ack(self, offset: int, count: int = 1) -> None:
        """`count` writes of the record at `offset` are durable."""
        left = self._remaining.get(offset)
        if left is None:
            return  # a late acknowledgement for state that was already dropped
        left -= count
        self._remaining[offset] = left
        if left <= 0 and self._pending[0] == offset:
            self._advance()

    def _advance(self) -> None:
        pending, remaining = self._pending, self._remaining
        while pending and remaining[pending[0]] <= 0:
            offset = pending.popleft()
            del remaining[offset]
            self.committable = offset + 1

    @property
    def outstanding(self) -> int:
        """Received records not yet fully acknowledged."""
        return len(self._pending)

    @property
    def oldest_outstanding(self) -> int | None:
        return self._pending[0] if self._pending else None

    def to_commit(self) -> int | None:
        """The offset to commit now, or None when nothing moved since the last commit."""
        if self.committable is None or self.committable == self.committed:
            return None
        return self.committable

    def next_expected(self) -> int | None:
        """One past the highest offset received (the fetch position this member has consumed to)."""
        return None if self.highest is None else self.highest + 1


class OffsetTracker:
    """The partitions this member owns and their committable offsets."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, int], PartitionState] = {}

    def assign(
        self, tps: Iterable[tuple[str, int]], committed: Mapping[tuple[str, int], int] | None = None
    ) -> None:
        """Take ownership of `tps` (already-owned ones keep their state: cooperative rebalances)."""
        for tp in tps:
            key = TopicPartition(tp[0], tp[1])
            if key not in self._states:
                self._states[key] = PartitionState(key, (committed or {}).get(key))

    def revoke(self, tps: Iterable[tuple[str, int]]) -> dict[TopicPartition, int]:
        """Drop `tps`; returns the offsets still to commit for them (drain their writes first)."""
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            key = TopicPartition(tp[0], tp[1])
            state = self._states.pop(key, None)
            if state is None:
                continue
            state.revoked = True
            offset = state.to_commit()
            if offset is not None:
                out[key] = offset
        return out

    def state(self, tp: tuple[str, int]) -> PartitionState:
        """The state of an owned partition (KeyError for one not owned)."""
        return self._states[TopicPartition(tp[0], tp[1])]

    def get(self, tp: tuple[str, int]) -> PartitionState | None:
        return self._states.get(TopicPartition(tp[0], tp[1]))

    def partitions(self) -> list[TopicPartition]:
        return sorted(self._states)  # type: ignore[arg-type]

    def states(self) -> list[PartitionState]:
        return list(self._states.values())

    def to_commit(self, tps: Iterable[tuple[str, int]] | None = None) -> dict[TopicPartition, int]:
        """Offsets that moved since they were last committed, for all owned partitions or `tps`."""
        keys = self._states.keys() if tps is None else [TopicPartition(t[0], t[1]) for t in tps]
        out: dict[TopicPartition, int] = {}
        for key in keys:
            state = self._states.get(key)
            if state is None:
                continue
            offset = state.to_commit()
            if offset is not None:
                out[TopicPartition(key[0], key[1])] = offset
        return out

    def mark_committed(self, offsets: Mapping[TopicPartition, int] | Mapping[tuple[str, int], int]) -> None:
        for tp, offset in offsets.items():
            state = self._states.get(TopicPartition(tp[0], tp[1]))
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset

    def outstanding(self, tps: Iterable[tuple[str, int]] | None = None) -> int:
        keys = self._states.keys() if tps is None else [TopicPartition(t[0], t[1]) for t in tps]
        return sum(self._states[k].outstanding for k in keys if k in self._states)
