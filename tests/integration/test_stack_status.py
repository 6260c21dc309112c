"""`make status` on the live stack: every service up, the connector and its task RUNNING, the slot's lag in
bytes, and a line per pipeline topic with its end offsets, which agree with Kafka's own."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("postgres", "kafka", "connect", "cassandra")


def end_offsets(config: PipelineConfig, topic: str, wait: float = 90) -> dict[int, int]:
    """The topic's end offset per partition, once the topic exists and holds a record."""
    consumer = KafkaConsumer(**kafka_client_options(config.kafka), client_id="test-status", group_id=None)
    try:
        deadline = time.monotonic() + wait
        while True:
            consumer.topics()  # fresh metadata
            partitions = consumer.partitions_for_topic(topic) or set()
            if partitions:
                ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
                if sum(ends.values()) > 0:
                    return {tp.partition: off for tp, off in ends.items()}
            if time.monotonic() > deadline:
                pytest.fail(f"topic {topic} has no record {wait:g}s after an insert into its table")
            time.sleep(0.5)
    finally:
        consumer.close()


def test_make_status_reports_the_live_stack(stack: PipelineConfig, pg_admin: Any) -> None:
    d = stack.debezium
    topic = f"{d.topic_prefix}.{d.schema}.latest_prices"
    symbol = "ZZSTATUS" + uuid.uuid4().hex[:8].upper()
    cur = pg_admin.cursor()
    cur.execute("INSERT INTO latest_prices (symbol, price, updated_at) VALUES (%s, %s, now())",
                (symbol, Decimal("1.5")))
    try:
        before = end_offsets(stack, topic)
        proc = subprocess.run(["make", "--no-print-directory", "status"], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, check=False)
        after = end_offsets(stack, topic)
    finally:
        cur.execute("DELETE FROM latest_prices WHERE symbol = %s", (symbol,))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()
    assert lines[0].startswith("stack: "), lines[0]

    for service in SERVICES:
        assert any(re.match(rf"{service} +up at ", line) for line in lines), (service, out)
    connector = [line for line in lines if line.startswith("connector ")]
    assert connector == [f"connector  {d.connector_name}: connector RUNNING, task 0 RUNNING"], out

    slot = [re.fullmatch(rf"slot +{d.slot_name} active, lag (\d+) bytes", line) for line in lines]
    lags = [int(m.group(1)) for m in slot if m]
    assert len(lags) == 1, out

    pattern = rf" +{re.escape(topic)} +(\d+) partition\(s\) +end offsets ([\d+]+) = (\d+)"
    rows = [m for m in (re.fullmatch(pattern, line) for line in lines) if m]
    assert len(rows) == 1, out
    count, total = int(rows[0].group(1)), int(rows[0].group(3))
    parts = [int(p) for p in rows[0].group(2).split("+")]
    assert count == len(before) == len(parts), (out, before)
    assert sum(parts) == total
    # Kafka's end offsets from just before and just after `make status` bracket what it printed.
    for partition, reported in enumerate(parts):
        assert before[partition] <= reported <= after[partition], (partition, reported, before, after)
    assert total > 0
