"""The roles made by infra/init-db.sql have exactly the privileges they need, on the real PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from pipeline.config import PipelineConfig

pytestmark = pytest.mark.integration

CAPTURED = {"latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr"}


def table_privileges(conn: Any, role: str) -> dict[str, set[str]]:
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT c.relname, p.privilege_type
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS p
            JOIN pg_roles r ON r.oid = p.grantee
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND r.rolname = %s
            """,
            (role,),
        )
        out: dict[str, set[str]] = {}
        for table, privilege in cur.fetchall():
            out.setdefault(table, set()).add(privilege)
        return out


def role_flags(conn: Any, role: str) -> dict[str, bool]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin, rolbypassrls "
            "FROM pg_roles WHERE rolname = %s",
            (role,),
        )
        row = cur.fetchone()
    assert row is not None, f"role {role} does not exist"
    names = ("super", "createdb", "createrole", "replication", "login", "bypassrls")
    return dict(zip(names, row, strict=True))


def test_debezium_role_reads_exactly_the_captured_tables(pg_admin: Any) -> None:
    assert role_flags(pg_admin, "debezium") == {
        "super": False, "createdb": False, "createrole": False, "replication": True, "login": True,
        "bypassrls": False,
    }
    privileges = table_privileges(pg_admin, "debezium")
    assert privileges == {
        **{table: {"SELECT"} for table in CAPTURED},
        "debezium_heartbeat": {"SELECT", "INSERT", "UPDATE"},
    }


def test_producer_role_has_only_what_its_loads_need(pg_admin: Any) -> None:
    assert role_flags(pg_admin, "producer") == {
        "super": False, "createdb": False, "createrole": False, "replication": False, "login": True,
        "bypassrls": False,
    }
    assert table_privileges(pg_admin, "producer") == {
        "latest_prices": {"SELECT", "INSERT", "UPDATE"},
        "klines": {"SELECT", "INSERT", "UPDATE"},
        "ticker_24hr": {"SELECT", "INSERT", "UPDATE"},
        "trades": {"SELECT", "INSERT"},
        "order_book_levels": {"SELECT", "INSERT", "DELETE"},
    }


def test_producer_cannot_create_tables_or_touch_the_heartbeat(postgres: PipelineConfig) -> None:
    pg = postgres.postgres
    conn = psycopg2.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user,
                            password=pg.password.reveal())
    try:
        for statement in ("CREATE TABLE sneaky (id int)", "DELETE FROM debezium_heartbeat",
                          "DELETE FROM trades"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
                cur.execute(statement)
            conn.rollback()
    finally:
        conn.close()


def test_publication_holds_exactly_the_captured_tables_and_heartbeat(pg_admin: Any,
                                                                      postgres: PipelineConfig) -> None:
    with pg_admin.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s",
                    (postgres.debezium.publication_name,))
        tables = {row[0] for row in cur.fetchall()}
    assert tables == CAPTURED | {postgres.debezium.heartbeat_table}
    assert set(postgres.debezium.tables) == CAPTURED


def test_logical_replication_is_configured(pg_admin: Any) -> None:
    with pg_admin.cursor() as cur:
        cur.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                    "('wal_level', 'max_replication_slots', 'max_wal_senders')")
        settings = dict(cur.fetchall())
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 4
    assert int(settings["max_wal_senders"]) >= 4
