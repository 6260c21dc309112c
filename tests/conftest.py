"""The one fixture layer for every test that needs services.

`PIPELINE_TEST_STACK` chooses where the services come from:
- `native` (default): the native stack on loopback (infra/native/stack.sh), started if it isn't running
  and reused if it is. It is left running after the tests, so the next run starts at once.
- `compose`: the compose stack through testcontainers, when a Docker engine is available.
- `external`: a stack someone already started; the tests only check that it answers.

A test that needs a service and finds none fails; it never skips.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from hypothesis import settings

from pipeline.config import CassandraConfig, PipelineConfig, load

# No per-example time limit for property tests: these machines are noisy, and no test here is timed.
settings.register_profile("untimed", deadline=None)
settings.load_profile("untimed")

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "config" / "pipeline.yaml"
STACK_MODE = os.environ.get("PIPELINE_TEST_STACK", "native")


def _load_dotenv() -> None:
    """`make test` exports .env; a bare `pytest` gets the same passwords from the file."""
    env_file = ROOT / ".env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            os.environ.setdefault(name.strip(), value.strip())


_load_dotenv()


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(cmd: list[str], what: str, timeout: float) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        pytest.fail(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}", pytrace=False)


COMPOSE_FILE = "infra/docker-compose.yml"


def _compose_running() -> bool:
    """True when the compose project `make up` uses has running containers (docker compose ps)."""
    cmd = ["docker", "compose", "-f", COMPOSE_FILE]
    if (ROOT / ".env").exists():
        cmd += ["--env-file", ".env"]
    proc = subprocess.run([*cmd, "ps", "--status", "running", "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        pytest.fail(f"PIPELINE_TEST_STACK=compose: docker compose ps failed: {' '.join(tail)}", pytrace=False)
    return bool(proc.stdout.strip())


class _Stack:
    """Brings services up once per session, whatever the mode."""

    def __init__(self) -> None:
        self.started: set[str] = set()
        self._compose: Any = None
        # Only a compose stack this session started is stopped by it.
        self._compose_owned = False

    def ensure(self, *services: str) -> None:
        wanted = [s for s in services if s not in self.started]
        if not wanted:
            return
        if STACK_MODE == "native":
            _run(["bash", "infra/native/stack.sh", "up", *wanted], f"starting {', '.join(wanted)}", 900)
        elif STACK_MODE == "compose":
            self._ensure_compose()
        elif STACK_MODE != "external":
            pytest.fail(f"PIPELINE_TEST_STACK={STACK_MODE!r}: expected native, compose or external")
        self.started.update(wanted)

    def _ensure_compose(self) -> None:
        if self._compose is not None:
            return
        from testcontainers.compose import DockerCompose

        # The same project as `make up` (the file's `name:`): its volumes may hold a user's data, so they
        # are never removed here, and a stack that is already running is reused as it is.
        self._compose = DockerCompose(
            str(ROOT), compose_file_name=COMPOSE_FILE, wait=True, keep_volumes=True,
            # The image of the producer, consumer and one-shot services: built from this checkout.
            build=True,
            env_file=".env" if (ROOT / ".env").exists() else None,
        )
        if _compose_running():
            return
        self._compose_owned = True
        self._compose.start()

    def stop(self) -> None:
        if self._compose is None or not self._compose_owned:
            return
        # `docker compose down` without --volumes, as `make down`; testcontainers' stop() would add it.
        subprocess.run([*self._compose.compose_command_property, "down"], cwd=ROOT, capture_output=True,
                       timeout=300, check=False)


_STACK = _Stack()


@pytest.fixture(scope="session")
def services() -> Iterator[_Stack]:
    yield _STACK
    _STACK.stop()


@pytest.fixture(scope="session")
def pipeline_config() -> PipelineConfig:
    """The project's own config/pipeline.yaml, with the environment's overrides."""
    return load(CONFIG_PATH)


def _wait_for_port(host: str, port: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _port_open(host, port):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} is not answering on {host}:{port} (PIPELINE_TEST_STACK={STACK_MODE})")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def postgres(services: _Stack, pipeline_config: PipelineConfig) -> PipelineConfig:
    """PostgreSQL up, with infra/init-db.sql applied; returns the config pointing at it."""
    services.ensure("postgres")
    _wait_for_port(pipeline_config.postgres.host, pipeline_config.postgres.port, "PostgreSQL")
    return pipeline_config


@pytest.fixture(scope="session")
def kafka(services: _Stack, pipeline_config: PipelineConfig) -> PipelineConfig:
    """The Kafka broker up; returns the config pointing at it."""
    services.ensure("kafka")
    return pipeline_config


@pytest.fixture(scope="session")
def cassandra(services: _Stack, pipeline_config: PipelineConfig) -> PipelineConfig:
    """Cassandra up, with infra/cassandra-init.cql applied; returns the config pointing at it."""
    services.ensure("cassandra")
    return pipeline_config


@pytest.fixture(scope="session")
def cassandra_config(cassandra: PipelineConfig) -> CassandraConfig:
    return cassandra.cassandra


@pytest.fixture(scope="session")
def stack(services: _Stack, pipeline_config: PipelineConfig) -> PipelineConfig:
    """The whole stack: PostgreSQL, Kafka, Connect with the connector RUNNING, Cassandra with its schema."""
    services.ensure("postgres", "kafka", "connect", "cassandra")
    if STACK_MODE == "native":
        _run(
            [str(ROOT / ".venv/bin/python"), "-m", "pipeline.connector", "--config", str(CONFIG_PATH),
             "register"],
            "registering the Debezium connector",
            300,
        )
    return pipeline_config


def admin_dsn(config: PipelineConfig) -> dict[str, Any]:
    """Superuser connection parameters (the compose image's and the native stack's `postgres` role)."""
    return {
        "host": config.postgres.host,
        "port": config.postgres.port,
        "dbname": config.postgres.dbname,
        "user": "postgres",
        "password": os.environ.get("POSTGRES_PASSWORD", ""),
        "connect_timeout": 10,
    }


@pytest.fixture
def pg_admin(postgres: PipelineConfig) -> Iterator[Any]:
    """A superuser connection in autocommit mode, closed after the test."""
    conn = psycopg2.connect(**admin_dsn(postgres))
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_config(postgres: PipelineConfig) -> PipelineConfig:
    """The config, its `postgres` section pointing at a ready database as the producer role."""
    return postgres


@pytest.fixture
def pg_conn(pg_config: PipelineConfig) -> Iterator[Any]:
    """An autocommit connection as the producer role (it may read all five tables)."""
    pg = pg_config.postgres
    conn = psycopg2.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user,
                            password=pg.password.reveal(), connect_timeout=10, options="-c TimeZone=UTC")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()
