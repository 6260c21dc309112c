"""Cassandra's password path on the real stack: PasswordAuthenticator is on, the pipeline's role logs in
with CASSANDRA_PASSWORD, and anything else is refused with an error that says what to check."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster, NoHostAvailable
from fake_secrets import fake_secret

from consumer.errors import PermanentError
from consumer.sink import CassandraSink
from pipeline.config import CassandraConfig
from pipeline.schema import Secret

WRONG = fake_secret("wrong")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _login(c: CassandraConfig, credentials: tuple[str, str] | None) -> str:
    auth = PlainTextAuthProvider(*credentials) if credentials else None
    cluster = Cluster(list(c.contact_points), port=c.port, auth_provider=auth, connect_timeout=10)
    try:
        session = cluster.connect()
        row = session.execute("SELECT role FROM system_auth.roles WHERE role = %s", [c.username]).one()
        return str(row[0]) if row else ""
    finally:
        cluster.shutdown()


def test_the_pipelines_role_logs_in_with_the_configured_password(cassandra_config: CassandraConfig) -> None:
    c = cassandra_config
    assert c.username and c.password and c.password.reveal(), "config/pipeline.yaml sets the Cassandra login"
    assert _login(c, (c.username, c.password.reveal())) == c.username
    sink: CassandraSink[Any] = CassandraSink(c)
    sink.connect()
    try:
        assert sink.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
                            [c.keyspace])
    finally:
        sink.close()


# ("cassandra", "cassandra"): the well-known login of a new node, which apply_cql.py must have closed.
@pytest.mark.parametrize("credentials", [None, ("cassandra", "cassandra"), ("binance", WRONG)],
                         ids=["anonymous", "default-superuser", "wrong-password"])
def test_every_other_login_is_refused(cassandra_config: CassandraConfig,
                                      credentials: tuple[str, str] | None) -> None:
    if credentials is not None and credentials[0] == "binance":
        assert cassandra_config.username
        credentials = (cassandra_config.username, WRONG)
    with pytest.raises(NoHostAvailable, match=r"(?i)authentication|credentials|password|login"):
        _login(cassandra_config, credentials)


def test_a_refused_login_is_a_config_error_not_an_outage(cassandra_config: CassandraConfig) -> None:
    wrong = dataclasses.replace(cassandra_config, password=Secret(WRONG))
    sink: CassandraSink[Any] = CassandraSink(wrong)
    with pytest.raises(PermanentError, match=r"refused role .*cassandra\.password") as info:
        sink.connect()
    assert WRONG not in str(info.value)


def test_apply_cql_is_idempotent_with_the_role_in_place(cassandra_config: CassandraConfig) -> None:
    """`make up` runs it every time: with the role created, it logs in as the role and changes nothing."""
    env = dict(os.environ)
    assert env.get("CASSANDRA_PASSWORD"), "CASSANDRA_PASSWORD comes from .env"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "native" / "apply_cql.py"), "--wait", "30",
         str(ROOT / "infra" / "cassandra-init.cql")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "created Cassandra role" not in proc.stdout
    assert env["CASSANDRA_PASSWORD"] not in proc.stdout + proc.stderr
