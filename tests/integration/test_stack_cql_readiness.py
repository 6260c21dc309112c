"""infra/native/probe.py's CQL readiness against the real Cassandra node, which runs PasswordAuthenticator:
ready means a login and a query, so a wrong password is not ready (the node's AUTHENTICATE alone would
have passed for ready before)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_secrets import fake_secret

from pipeline.config import PipelineConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "infra" / "native" / "probe.py"


def probe(config: PipelineConfig, **env: str) -> subprocess.CompletedProcess[str]:
    c = config.cassandra
    return subprocess.run(
        [sys.executable, str(PROBE), "cql", f"{c.contact_points[0]}:{c.port}"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
    )


def test_the_pipeline_role_is_ready(cassandra: PipelineConfig) -> None:
    c = cassandra.cassandra
    assert c.username and c.password
    proc = probe(cassandra, CASSANDRA_USER=c.username, CASSANDRA_PASSWORD=c.password.reveal())
    assert proc.returncode == 0, proc.stderr


def test_refused_logins_are_not_ready(cassandra: PipelineConfig) -> None:
    """apply_cql.py closed the default cassandra login, so with a wrong password no login is left."""
    c = cassandra.cassandra
    assert c.username
    wrong = fake_secret("wrong")
    proc = probe(cassandra, CASSANDRA_USER=c.username, CASSANDRA_PASSWORD=wrong)
    assert proc.returncode == 1
    assert f"login as {c.username} refused" in proc.stderr and "login as cassandra refused" in proc.stderr
    assert wrong not in proc.stderr
