"""Fixtures shared by the integration tests that need a Debezium connector of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient

from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig
from pipeline.connector import delete, with_debezium


@pytest.fixture
def scratch(stack: PipelineConfig, pg_admin: Any) -> Iterator[PipelineConfig]:
    """A connector of its own (a table like latest_prices, publication, slot and topics under one run
    name, no snapshot), not registered yet; removed with its offsets, slot and topics afterwards."""
    run = "scr_" + uuid.uuid4().hex[:10]
    config = with_debezium(
        stack, connector_name=run.replace("_", "-"), slot_name=run, publication_name=run, topic_prefix=run,
        tables=(run,), snapshot_mode="no_data",
    )
    cur = pg_admin.cursor()
    cur.execute(f"CREATE TABLE public.{run} (LIKE public.latest_prices INCLUDING ALL)")
    cur.execute(f"GRANT SELECT ON public.{run} TO {stack.debezium.user}")
    cur.execute(f"CREATE PUBLICATION {run} FOR TABLE public.{run}")
    try:
        yield config
    finally:
        try:
            delete(config, purge=True, say=lambda _: None)
        finally:
            cur.execute(f"DROP PUBLICATION IF EXISTS {run}")
            cur.execute(f"DROP TABLE IF EXISTS public.{run}")
            admin = KafkaAdminClient(**kafka_client_options(stack.kafka), client_id="test-scratch-connector")
            try:
                doomed = [t for t in admin.list_topics() if run in t]
                if doomed:
                    admin.delete_topics(doomed)
            finally:
                admin.close()
