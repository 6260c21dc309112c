"""Chaos scenarios: one fault each, injected while changes stream through the whole pipeline.

Each scenario: consumers from the earliest offsets into a fresh keyspace, the producer (against the
simulator) and SQL inserts/updates/deletes running, one fault, then `finish()`: the stream stops, and
PostgreSQL must equal Cassandra (verify), nothing lost, duplicated or resurrected, the dead-letter topic
must hold exactly the poison injected, and no process may have exited by itself. A scenario whose fault
did not happen fails. tests/chaos/README.md has the results and what they mean.
"""

from __future__ import annotations

import random
import signal
import time

import psycopg2
import pytest
import requests
from chaos_harness import Poison, _committed, pid_of, poison_messages, port_open, produce, stack
from chaos_scenario import Scenario, sigkill
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from pipeline.connector import connector_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

rng = random.Random()


def test_sigkill_consumer_killed_at_random_moments(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    kills = []
    lags = []
    for i in range(10):
        if i < 8:  # while it consumes: some time after it got its partitions
            s.wait_assigned(member)
            time.sleep(rng.uniform(0, 3))
            lags.append(s.lag())
        else:  # while it starts: connecting, joining the group
            time.sleep(rng.uniform(0.3, 1.5))
        sigkill(member)
        kills.append(member)
        member = s.start_member()
    s.fault_over(f"consumer SIGKILLed {len(kills)} times (8 while consuming, 2 while starting), "
                 "restarted each time")
    s.note(f"Uncommitted records at each kill while consuming: {lags}.")
    assert len(kills) == 10 and all(p.popen.returncode == -signal.SIGKILL for p in kills)
    # The kills must land with work not yet committed, or they would prove nothing about offsets.
    assert sum(lag > 0 for lag in lags) >= 4, lags
    s.finish()


def test_sigterm_consumer_stopped_mid_batch(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    lags = []
    for _ in range(3):
        s.wait_for(member, r"commit: \d+ events/s")  # it is applying and committing
        time.sleep(rng.uniform(0, 1))
        lags.append(s.lag())
        member.send(signal.SIGTERM)
        code = member.popen.wait(60)
        text = member.text()
        assert code == 0, f"exit {code} after SIGTERM:\n{text[-3000:]}"
        assert "stopping (SIGTERM)" in text and "commit (shutdown)" in text, text[-3000:]
        member = s.start_member()
    s.fault_over("consumer stopped with SIGTERM 3 times while records were waiting; exit 0, restarted")
    s.note(f"Uncommitted records when each SIGTERM was sent: {lags}.")
    # Mid-batch: the group still had records to read when the signal came.
    assert all(lag > 0 for lag in lags), lags
    s.finish()


def test_rebalance_second_member_joins_and_leaves(scenario: Scenario) -> None:
    s = scenario
    a = s.start_member("a")
    s.start_stream()
    s.wait_assigned(a)
    time.sleep(3)
    mark = len(a.text())
    b = s.start_member("b")
    s.wait_assigned(b)  # rebalance 1: b takes some of a's partitions
    s.wait_for(a, r"\bassigned ", after=mark)
    time.sleep(5)  # both consume
    mark = len(a.text())
    b.send(signal.SIGTERM)  # rebalance 2: b leaves, a takes everything back
    assert b.popen.wait(60) == 0, b.text()[-3000:]
    s.wait_for(a, r"\bassigned \S+\[\d+\]", after=mark)
    s.fault_over("a second member joined the group, consumed for 5 s, then left (two rebalances)")
    s.finish()


def test_cassandra_stopped_for_30_seconds(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    s.wait_assigned(member)
    time.sleep(3)
    pid = pid_of("cassandra")
    stack("down", "cassandra")
    down_at = time.monotonic()
    assert not port_open(9042), "Cassandra still answers"
    s.wait_for(member, "pausing fetches and retrying", timeout=30)
    time.sleep(max(0.0, down_at + 10 - time.monotonic()))
    early = _committed(s.run.e2e, s.group)
    time.sleep(max(0.0, down_at + 30 - time.monotonic()))
    late = _committed(s.run.e2e, s.group)
    assert member.alive, member.text()[-3000:]
    stack("up", "cassandra")
    assert pid_of("cassandra") != pid
    s.fault_over("Cassandra stopped for 30 s (stack.sh down, sleep 30, up)")
    # Paused, not skipped: nothing was committed while no write could be acknowledged.
    assert early == late, (early, late)
    s.wait_for(member, "Cassandra takes writes again", timeout=120)
    s.finish()


def test_kafka_broker_restarted(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    s.wait_assigned(member)
    time.sleep(3)
    pid = pid_of("kafka")
    took = stack("down", "kafka")
    assert not port_open(9092), "Kafka still answers"
    time.sleep(5)
    took += stack("up", "kafka")
    assert pid_of("kafka") != pid
    s.fault_over(f"Kafka broker stopped and started again ({took:.0f} s of stack.sh, 5 s down)")
    s.finish()


def test_connect_restarted_and_task_failed_and_restarted(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    s.wait_assigned(member)
    time.sleep(3)
    pid = pid_of("connect")
    stack("down", "connect")
    time.sleep(3)
    stack("up", "connect")
    assert pid_of("connect") != pid
    _wait_state(s, "RUNNING/RUNNING", 120)
    time.sleep(3)
    # The task fails for real: with retries off, its replication connection is cut; then an operator's
    # REST restart, and the connector's own config back (retries on).
    config = s.run.config
    url = f"{config.debezium.connect_url}/connectors/{config.debezium.connector_name}"
    props = connector_config(config)
    _put_config(url, {**props, "errors.max.retries": "0"})
    _wait_state(s, "RUNNING/RUNNING", 120)
    time.sleep(2)
    cut = _terminate_walsender(s)
    _wait_state(s, "RUNNING/FAILED", 120)
    resp = requests.post(f"{url}/tasks/0/restart", timeout=30)
    assert resp.status_code in (202, 204), resp.text
    _wait_state(s, "RUNNING/RUNNING", 120)
    _put_config(url, props)
    _wait_state(s, "RUNNING/RUNNING", 120)
    s.fault_over("Kafka Connect worker stopped and started; then the connector's task failed (its "
                 f"replication connection terminated, {cut} backend, retries off) and was restarted via REST")
    s.note(f"Task failure: {s.watch.traces[-1:]}.")
    s.finish()


def test_postgres_restarted(scenario: Scenario) -> None:
    s = scenario
    member = s.start_member()
    s.start_stream()
    s.wait_assigned(member)
    time.sleep(3)
    assert s.producer is not None
    stack("down", "postgres")
    assert not port_open(5432)
    time.sleep(5)
    stack("up", "postgres")
    mark = len(s.producer.text())
    s.fault_over("PostgreSQL stopped (fast shutdown), 5 s down, started again; nobody restarts Debezium")
    # The producer goes on by itself: a later cycle loads rows again.
    s.wait_for(s.producer, r"inserted=[1-9]", timeout=60, after=mark)
    s.finish()
    states = s.watch.seen
    s.note(f"Connector states seen (connector/task): {' -> '.join(states)}.")


def test_poison_messages(scenario: Scenario) -> None:
    s = scenario
    prefix = s.run.run
    big = 3 * 1024 * 1024
    _allow_big_messages(s, f"{prefix}.public.trades", 4 * 1024 * 1024)
    member = s.start_member()
    s.start_stream()
    s.wait_assigned(member)
    injected: list[Poison] = []
    for message in poison_messages(prefix, big):
        produce(s.run.config, message)
        injected.append(message)
        s.run.poison.append(message)
        time.sleep(1)
    s.fault_over(f"{len(injected)} poison messages produced into the topics: "
                 + ", ".join(p.what for p in injected))
    s.finish()


# --- helpers -------------------------------------------------------------------------------------------

def _wait_state(s: Scenario, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (now := s.connect_state()) != state:
        assert time.monotonic() < deadline, f"connector {now}, not {state}, after {timeout}s"
        time.sleep(0.5)


def _put_config(url: str, props: dict[str, str]) -> None:
    resp = requests.put(f"{url}/config", json=props, timeout=30)
    assert resp.status_code in (200, 201), resp.text


def _terminate_walsender(s: Scenario) -> int:
    """pg_terminate_backend on the walsender of the run's slot; how many were terminated."""
    conn = psycopg2.connect(**s.run.admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND active_pid IS NOT NULL", (s.run.run,))
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] == 1, f"no active walsender for slot {s.run.run}"
    return int(row[0])


def _allow_big_messages(s: Scenario, topic: str, size: int) -> None:
    """The run's own topic takes messages up to `size` (the broker's default is 1 MiB)."""
    admin = KafkaAdminClient(bootstrap_servers=list(s.run.config.kafka.bootstrap_servers))
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                            configs={"max.message.bytes": str(size)})])
    finally:
        admin.close()
