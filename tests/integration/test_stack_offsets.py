"""A connector whose stored offsets are ahead of PostgreSQL's WAL (the database was re-created while Kafka
kept the offsets) is refused at registration and shown by `make status`, on the real Kafka Connect and
PostgreSQL: Debezium would silently skip every change below the stored LSN. The offsets are moved with
Connect's own offsets API (PATCH, connector STOPPED). A connector of its own, removed afterwards."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pipeline.config import PipelineConfig
from pipeline.connector import (
    ConnectClient,
    ConnectorError,
    check_offsets,
    connector_state,
    current_wal_lsn,
    register,
)
from pipeline.status import check_connect

pytestmark = pytest.mark.stack


def _stop(client: ConnectClient, config: PipelineConfig) -> None:
    client.action("PUT", config.debezium.connector_name, "stop")
    deadline = time.monotonic() + 60
    while (state := connector_state(config, client)) is None or state.connector != "STOPPED":
        assert time.monotonic() < deadline, f"connector not STOPPED: {state}"
        time.sleep(0.5)


def test_offsets_ahead_of_the_wal_are_refused_and_shown(scratch: PipelineConfig, pg_admin: Any) -> None:
    register(scratch, say=lambda _: None)
    client = ConnectClient(scratch.debezium.connect_url)
    name = scratch.debezium.connector_name
    # A change, so the connector stores a real offset; then the offsets as a re-created database sees them.
    pg_admin.cursor().execute(
        f"INSERT INTO public.{scratch.debezium.tables[0]} (symbol, price, updated_at) VALUES ('X', 1, now())")
    deadline = time.monotonic() + 60
    while (stored := client.stored_lsn(name)) is None:
        assert time.monotonic() < deadline, "the connector stored no offset"
        time.sleep(0.5)
    current = current_wal_lsn(scratch)
    assert stored <= current
    check_offsets(scratch, client)   # consistent: no complaint

    _stop(client, scratch)
    ahead = current + (1 << 32)
    client.request("PATCH", f"/connectors/{name}/offsets", body={"offsets": [{
        "partition": {"server": scratch.debezium.topic_prefix},
        "offset": {"lsn": ahead, "lsn_proc": ahead, "lsn_commit": ahead, "txId": 1, "ts_usec": 1},
    }]})
    assert client.stored_lsn(name) == ahead
    with pytest.raises(ConnectorError) as info:
        register(scratch, say=lambda _: None)
    assert "beyond PostgreSQL's WAL" in str(info.value) and "delete --purge" in str(info.value)
    connector = next(c for c in check_connect(scratch, 10.0) if c.name == "connector")
    assert not connector.ok and any("beyond PostgreSQL's WAL" in line for line in connector.more)
