"""Registration checks the publication named in the config against the real PostgreSQL: it must exist and
cover exactly debezium.tables (infra/init-db.sql makes only the default one, and the connector may not
create its own), else registration stops with one line naming the YAML key, before Connect stores
anything."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig
from pipeline.connector import ConnectorError, check_publication, connector_state, with_debezium

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_publication(pg_admin: Any) -> Iterator[str]:
    """A publication of latest_prices and trades only, dropped afterwards."""
    name = "pubtest_" + uuid.uuid4().hex[:10]
    with pg_admin.cursor() as cur:
        cur.execute(f"CREATE PUBLICATION {name} FOR TABLE public.latest_prices, public.trades")
    try:
        yield name
    finally:
        with pg_admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {name}")


def refusal(config: PipelineConfig) -> str:
    with pytest.raises(ConnectorError) as info:
        check_publication(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_projects_publication_passes(postgres: PipelineConfig) -> None:
    check_publication(postgres)


def test_a_missing_publication_names_debezium_publication_name(postgres: PipelineConfig) -> None:
    missing = "nopub_" + uuid.uuid4().hex[:10]
    message = refusal(with_debezium(postgres, publication_name=missing))
    assert message.startswith(f"debezium.publication_name: publication {missing} does not exist")
    assert f"CREATE PUBLICATION {missing} FOR TABLE public.latest_prices" in message


def test_a_publication_over_other_tables_names_debezium_tables(
    postgres: PipelineConfig, scratch_publication: str
) -> None:
    config = with_debezium(postgres, publication_name=scratch_publication, tables=("latest_prices", "klines"))
    message = refusal(config)
    assert message.startswith(f"debezium.tables: publication {scratch_publication} ")
    assert f"ALTER PUBLICATION {scratch_publication} ADD TABLE public.klines" in message
    assert f"ALTER PUBLICATION {scratch_publication} DROP TABLE public.trades" in message


def test_a_publication_with_exactly_the_tables_passes(
    postgres: PipelineConfig, scratch_publication: str
) -> None:
    check_publication(with_debezium(postgres, publication_name=scratch_publication,
                                    tables=("trades", "latest_prices")))
    # The heartbeat table may be published besides them (init-db.sql does so), nothing else.
    with pytest.raises(ConnectorError, match=r"^debezium\.tables: .*DROP TABLE public\.trades"):
        check_publication(with_debezium(postgres, publication_name=scratch_publication,
                                        tables=("latest_prices",)))


def test_register_stops_before_connect_stores_anything(stack: PipelineConfig) -> None:
    """Through the command `make up` runs, with the YAML key overridden from the environment."""
    name = "pubtest-" + uuid.uuid4().hex[:10]
    missing = "nopub_" + uuid.uuid4().hex[:10]
    env = {**os.environ, "PIPELINE__DEBEZIUM__CONNECTOR_NAME": name,
           "PIPELINE__DEBEZIUM__PUBLICATION_NAME": missing}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "pipeline.connector", "--config", "config/pipeline.yaml",
         "register"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"register failed: debezium.publication_name: publication {missing} does not exist in"
        f" {stack.postgres.host}:{stack.postgres.port}/{stack.postgres.dbname};"
        f" create it (CREATE PUBLICATION {missing} FOR TABLE"
        f" {', '.join(f'public.{t}' for t in stack.debezium.tables)}) or set debezium.publication_name to an"
        " existing one (infra/init-db.sql creates debezium_binance)"
    ]
    assert connector_state(with_debezium(stack, connector_name=name)) is None
