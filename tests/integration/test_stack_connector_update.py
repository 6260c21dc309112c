"""Re-registering a connector with a changed config on the real Kafka Connect: register() waits until the
task configs Connect serves carry what was PUT (so that wait ends on a real worker, whose task configs are
the connector's plus keys of its own), and returns with the task RUNNING that config. The race itself --
Connect reporting the old task's RUNNING for a moment after the PUT -- is too short to provoke here
reliably; tests/unit/test_connector_config.py plays it out against a fake Connect. A connector of its own
(table, publication, slot and topics under one run name), removed afterwards."""

from __future__ import annotations

import pytest

from pipeline.config import PipelineConfig
from pipeline.connector import ConnectClient, carries, connector_config, register, with_debezium

pytestmark = pytest.mark.stack


def test_a_changed_config_is_running_when_register_returns(scratch: PipelineConfig) -> None:
    register(scratch, say=lambda _: None)
    client = ConnectClient(scratch.debezium.connect_url)
    name = scratch.debezium.connector_name
    first = client.task_configs(name)
    assert first and first[0]["heartbeat.interval.ms"] == str(scratch.debezium.heartbeat_interval_ms)

    changed = with_debezium(scratch, heartbeat_interval_ms=scratch.debezium.heartbeat_interval_ms + 1234)
    lines: list[str] = []
    state = register(changed, say=lines.append)
    # Read right away: the task already runs the new config, and reports RUNNING with it.
    tasks = client.task_configs(name)
    status = client.status(name)
    assert "config updated" in lines[0], lines
    assert state.running
    assert carries(tasks, connector_config(changed)), tasks
    assert tasks and tasks[0]["heartbeat.interval.ms"] == str(changed.debezium.heartbeat_interval_ms)
    assert status is not None and status["tasks"][0]["state"] == "RUNNING", status

    # The same config again changes nothing, and says so.
    again: list[str] = []
    register(changed, say=again.append)
    assert "config unchanged" in again[0], again
