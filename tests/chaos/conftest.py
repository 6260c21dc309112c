"""Fixtures of the chaos suite (tests/chaos/README.md).

`chaos` (session): the whole native stack up, and a Debezium connector of the suite's own: the
pipeline's connector config (pipeline/connector.py) under the run's own name, slot and topic prefix
`chaos<random>`, reading a publication of its own whose row filter keeps only the run's symbols
(CX<RANDOM>...), with snapshot mode `no_data`. So the suite neither sees nor replays what other tests
write into the shared tables, and verify compares the run's rows only. The Binance simulator runs in
this process. Everything is removed at the end: connector, offsets, slot, publication, topics,
keyspaces and the run's rows in PostgreSQL.

`scenario` (each test): its own Cassandra keyspace (infra/cassandra-init.cql), consumer group and
dead-letter topic. Its finaliser stops every process the scenario started and brings the stack back
to fully up, with the connector RUNNING, whatever happened; the scenario's result goes to the table
written to .stack/chaos/results.{md,json} and printed at the end of the run.
"""

from __future__ import annotations

import os
import random
import string
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_harness import (
    E2E,
    ROOT,
    TABLES,
    Result,
    _drop_keyspace,
    _make_keyspace,
    stack,
    table,
    write_results,
)
from chaos_scenario import ChaosRun, Scenario, ensure_connector
from kafka.admin import KafkaAdminClient

from pipeline.config import PipelineConfig
from pipeline.connector import connector_config, delete, register, with_debezium
from producer.simulator import start_simulator

RESULTS_DIR = ROOT / ".stack" / "chaos"
RESULTS: list[Result] = []
SERVICES = ("postgres", "kafka", "connect", "cassandra")


def _admin_dsn(config: PipelineConfig) -> dict[str, Any]:
    pg = config.postgres
    return {"host": pg.host, "port": pg.port, "dbname": pg.dbname, "user": "postgres",
            "password": os.environ.get("POSTGRES_PASSWORD", ""), "connect_timeout": 10}


def _sql(dsn: dict[str, Any], *statements: str) -> None:
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
    finally:
        conn.close()


def _publication(run: str, tag: str) -> str:
    """The run's publication: the five tables, only the rows of the run's symbols (PostgreSQL 15 row
    filters; symbol is in every primary key, so updates and deletes are filtered too)."""
    tables = ", ".join(f"public.{t} WHERE (symbol LIKE '{tag}%')" for t in TABLES)
    return f"CREATE PUBLICATION {run} FOR TABLE {tables}"


def _remove_run(config: PipelineConfig, prefix: str, dsn: dict[str, Any], symbol_like: str) -> None:
    """Everything a run made: connector (purged: offsets and slot), publication, topics, its rows."""
    try:
        delete(config, purge=True, say=lambda _: None)
    finally:
        _sql(dsn, f"DROP PUBLICATION IF EXISTS {prefix}",
             *(f"DELETE FROM {t} WHERE symbol LIKE '{symbol_like}'" for t in TABLES))
        admin = KafkaAdminClient(bootstrap_servers=list(config.kafka.bootstrap_servers))
        try:
            doomed = [t for t in admin.list_topics() if t.startswith(f"{prefix}.") or t.endswith(prefix)]
            if doomed:
                admin.delete_topics(doomed, raise_errors=False)
        finally:
            admin.close()


def _remove_leftovers(config: PipelineConfig, dsn: dict[str, Any]) -> None:
    """Connectors and keyspaces of an earlier chaos run that could not clean up (killed mid-run)."""
    names = requests.get(f"{config.debezium.connect_url}/connectors", timeout=10).json()
    for name in names:
        if name.startswith("chaos") and len(name) == 11:
            old = with_debezium(config, connector_name=name, slot_name=name, topic_prefix=name,
                                publication_name=name)
            _remove_run(old, name, dsn, f"CX{name[5:].upper()}%")
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pubname FROM pg_publication WHERE pubname ~ '^chaos[a-z0-9]{6}$'")
            for (pub,) in cur.fetchall():
                cur.execute(f"DROP PUBLICATION {pub}")
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name ~ '^chaos[a-z0-9]{6}$' AND NOT active")
    finally:
        conn.close()
    from consumer.sink import CassandraSink

    sink: CassandraSink[Any] = CassandraSink(config.cassandra)
    sink.connect()
    try:
        for row in sink.execute("SELECT keyspace_name FROM system_schema.keyspaces"):
            if row[0].startswith("chaos") and len(row[0]) > 11:
                sink.execute(f"DROP KEYSPACE IF EXISTS {row[0]}", timeout=120)
    finally:
        sink.close()


@pytest.fixture(scope="session")
def chaos(services: Any, pipeline_config: PipelineConfig) -> Iterator[ChaosRun]:
    services.ensure(*SERVICES)
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    run = f"chaos{suffix}"
    tag = f"CX{suffix.upper()}"
    config = with_debezium(pipeline_config, connector_name=run, slot_name=run, topic_prefix=run,
                           publication_name=run, snapshot_mode="no_data")
    dsn = _admin_dsn(config)
    logs = RESULTS_DIR / run
    logs.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(config, dsn)
    symbols = [f"{tag}A", f"{tag}B"]
    server, base_url = start_simulator(port=0, symbols=symbols, seed=7)
    e2e = E2E(run, f"{tag}S", config, None, logs)
    started = time.monotonic()
    try:
        _sql(dsn, _publication(run, tag))
        _create_topics(config, run)
        # The pipeline's connector config, under the run's names (the password stays ${env:...}).
        register(config, props=connector_config(config), timeout=180, say=lambda _: None)
        chaos_run = ChaosRun(run, config, e2e, base_url, symbols, f"{tag}S", dsn, logs)
        print(f"\nchaos run {run}: connector registered in {time.monotonic() - started:.0f}s; logs in {logs}")
        yield chaos_run
    finally:
        server.stop()
        _remove_run(config, run, dsn, f"{tag}%")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        write_results(RESULTS, RESULTS_DIR)


def _create_topics(config: PipelineConfig, prefix: str) -> None:
    """The run's topics, as Connect would create them (topic.creation.default.*), before the first change,
    so consumers started at once find them."""
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=list(config.kafka.bootstrap_servers))
    try:
        admin.create_topics([NewTopic(f"{prefix}.public.{t}", config.debezium.topic_partitions, 1)
                             for t in TABLES])
    finally:
        admin.close()


@pytest.fixture
def scenario(chaos: ChaosRun, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    name = request.node.name.removeprefix("test_").split("_")[0]
    s = Scenario(chaos, name)
    RESULTS.append(s.result)
    _make_keyspace(s.config, s.keyspace)
    try:
        yield s
    finally:
        rep = getattr(request.node, "rep_call", None)
        s.result.status = "passed" if rep is not None and rep.passed else "FAILED"
        s.result.seconds = s.result.seconds or time.monotonic() - s.started
        for p in [*s.members, s.producer]:
            if p is not None:
                p.stop(30)
        if s.sql is not None:
            s.sql.stop()
        s.watch.stop()
        stack("up", *SERVICES)
        ensure_connector(chaos.config)
        _drop_keyspace(s.config, s.keyspace)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.write_sep("=", "chaos results (also in .stack/chaos/results.md)")
        terminalreporter.write_line(table(RESULTS))
