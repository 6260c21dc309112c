"""The Debezium PostgreSQL connector: its config, generated from the pipeline YAML, and its registration.

    python -m pipeline.connector [--config PATH] register   create or update it, wait until it runs
    python -m pipeline.connector [--config PATH] show       print the config it would register
    python -m pipeline.connector [--config PATH] status     print the connector's and its task's state
    python -m pipeline.connector [--config PATH] delete [--purge]

The database password never sits in the connector config, which Kafka Connect stores in a Kafka topic:
the config says `${env:DEBEZIUM_PASSWORD}` and the Connect worker resolves it from its own environment
through Kafka's EnvVarConfigProvider. The worker needs (connect-distributed.properties):

    config.providers=env
    config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
    config.providers.env.param.allowlist.pattern=DEBEZIUM_PASSWORD

and DEBEZIUM_PASSWORD in its environment. `register --inline-password` puts the literal password in the
config instead, for a worker that cannot be set up that way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from pipeline.cli import add_config_argument, load_or_exit, run
from pipeline.config import PipelineConfig

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
PASSWORD_ENV = "DEBEZIUM_PASSWORD"
PASSWORD_REFERENCE = "${env:" + PASSWORD_ENV + "}"
# What a worker needs so that PASSWORD_REFERENCE resolves; infra/docker-compose.yml sets the same.
WORKER_PROPERTIES = {
    "config.providers": "env",
    "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    "config.providers.env.param.allowlist.pattern": PASSWORD_ENV,
}
MASK = "******"
# A Kafka config provider reference, e.g. ${env:NAME} or ${file:/path:key}: no secret in itself.
_PROVIDER_REFERENCE = re.compile(r"\$\{[^}:]+:[^}]*\}")

CONNECT_TIMEOUT = 3.05
# Connect validates a config before storing it, and Debezium's validation connects to PostgreSQL;
# the worker gives up on that after 90 s.
WRITE_TIMEOUT = 95.0
READ_TIMEOUT = 15.0
POLL_SECONDS = 1.0
REBALANCE_WAIT = 30.0
REBALANCE_POLL = 0.25
RESTART_GRACE = 5.0


class ConnectorError(Exception):
    """Kafka Connect refused, failed or could not be reached. One line, meant for an operator."""


# --- The config ----------------------------------------------------------------------------------

def heartbeat_query(config: PipelineConfig) -> str:
    """The upsert Debezium runs every heartbeat.interval.ms, so an idle database still moves the slot."""
    d = config.debezium
    return (
        f"INSERT INTO {d.schema}.{d.heartbeat_table} (id, beat_at) VALUES (1, now()) "
        "ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at"
    )


def connector_config(
    config: PipelineConfig, *, database_host: str | None = None, inline_password: bool = False
) -> dict[str, str]:
    """The connector's config (the body of PUT /connectors/<name>/config), all values strings.

    The database host is, first to last: `database_host`, `debezium.database_host`, `postgres.host`:
    Connect may reach PostgreSQL by another name than the pipeline's own programs do.
    """
    d = config.debezium
    pg = config.postgres
    schemas = str(d.schemas_enable).lower()
    return {
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",
        # -- where and who
        "database.hostname": database_host or d.database_host or pg.host,
        "database.port": str(d.database_port or pg.port),
        "database.dbname": pg.dbname,
        "database.user": d.user,
        "database.password": d.password.reveal() if inline_password else PASSWORD_REFERENCE,
        "database.sslmode": pg.sslmode,
        # -- what: logical decoding through the publication infra/init-db.sql creates
        "plugin.name": "pgoutput",
        "publication.name": d.publication_name,
        "publication.autocreate.mode": "disabled",
        "slot.name": d.slot_name,
        # The slot outlives a stopped or deleted connector: dropping it would lose the changes between.
        "slot.drop.on.stop": "false",
        "schema.include.list": d.schema,
        # Regular expressions matched against schema.table: the dot is literal.
        "table.include.list": ",".join(f"{re.escape(d.schema)}\\.{re.escape(t)}" for t in d.tables),
        "snapshot.mode": d.snapshot_mode,
        # -- how values are encoded
        "decimal.handling.mode": d.decimal_handling_mode,
        "time.precision.mode": d.time_precision_mode,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": schemas,
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": schemas,
        # -- events
        "topic.prefix": d.topic_prefix,
        # A delete is followed by a tombstone (a null value), so compaction can drop the key.
        "tombstones.on.delete": "true",
        # Truncates reach the consumer too, which applies or ignores them (consumer.truncate).
        "skipped.operations": "none",
        "provide.transaction.metadata": "false",
        "heartbeat.interval.ms": str(d.heartbeat_interval_ms),
        "heartbeat.action.query": heartbeat_query(config),
        # The default 500 ms between polls of the change queue is half of the p99 latency budget.
        "poll.interval.ms": "100",
        # -- topics Connect creates for the connector (the worker needs topic.creation.enable=true)
        "topic.creation.default.partitions": str(d.topic_partitions),
        "topic.creation.default.replication.factor": "1",
        # -- how Connect's producer writes them: a per-connector client override, which the worker's
        #    connector.client.config.override.policy (All, by default since Kafka 3.0) allows
        "producer.override.compression.type": d.compression_type,
        # -- failure: stop rather than skip a change; the task's trace says why
        "errors.tolerance": "none",
        "errors.log.enable": "true",
        "errors.log.include.messages": "false",
        "event.processing.failure.handling.mode": "fail",
    }


def masked(props: Mapping[str, str]) -> dict[str, str]:
    """The config as it may be printed: literal passwords replaced, provider references kept."""
    return {
        k: MASK if "password" in k and v and not _PROVIDER_REFERENCE.fullmatch(v) else v
        for k, v in props.items()
    }


def with_debezium(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    """The config with some debezium settings replaced, e.g. another connector name, slot and prefix."""
    return dataclasses.replace(config, debezium=dataclasses.replace(config.debezium, **changes))


# --- Talking to Kafka Connect --------------------------------------------------------------------

def describe_error(exc: BaseException) -> str:
    """A short reason for a failed request: 'Connection refused', 'no answer in 3s', ..."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _message(resp: requests.Response) -> str:
    """Connect's error answer ({"error_code", "message"}) in one line."""
    try:
        body = resp.json()
        text = str(body.get("message") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        text = resp.text or resp.reason or ""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or f"HTTP {resp.status_code}"


class ConnectClient:
    """The few Kafka Connect REST calls the pipeline makes."""

    def __init__(
        self, url: str, session: requests.Session | None = None, *, max_timeout: float | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.max_timeout = max_timeout  # caps every call, for a quick look such as `make status`

    def request(
        self, method: str, path: str, *, body: Any = None, timeout: float = READ_TIMEOUT,
        ok: Sequence[int] = (200, 201, 202, 204),
    ) -> requests.Response:
        connect_timeout = CONNECT_TIMEOUT
        if self.max_timeout is not None:
            timeout = min(timeout, self.max_timeout)
            connect_timeout = min(connect_timeout, self.max_timeout)
        # While its group rebalances (a connector was just created or deleted), Connect answers 409, or 500
        # "a rebalance is expected", to requests that would succeed a moment later: wait those out.
        settle = time.monotonic() + min(REBALANCE_WAIT, timeout)
        while True:
            try:
                resp = self.session.request(
                    method, self.url + path, json=body, timeout=(connect_timeout, timeout),
                    headers={"Accept": "application/json"},
                )
            except requests.RequestException as exc:
                reason = describe_error(exc)
                raise ConnectorError(f"Kafka Connect at {self.url} is not reachable: {reason}") from None
            rebalancing = resp.status_code in (409, 500) and "rebalanc" in (resp.text or "").lower()
            if resp.status_code in ok or not rebalancing or time.monotonic() >= settle:
                break
            time.sleep(REBALANCE_POLL)
        if resp.status_code not in ok:
            raise ConnectorError(f"Kafka Connect {method} {path}: HTTP {resp.status_code}: {_message(resp)}")
        return resp

    def version(self) -> str:
        body = self.request("GET", "/").json()
        return str(body.get("version", "?")) if isinstance(body, dict) else "?"

    def plugins(self) -> list[str]:
        body = self.request("GET", "/connector-plugins").json()
        return [str(p.get("class")) for p in body if isinstance(p, dict)] if isinstance(body, list) else []

    def validate(self, name: str, props: Mapping[str, str]) -> list[str]:
        """Connect's (and Debezium's) checks of a config, which include connecting to PostgreSQL:
        'property: error' for each problem, empty if none."""
        body = self.request(
            "PUT", f"/connector-plugins/{CONNECTOR_CLASS}/config/validate",
            body={**props, "name": name}, timeout=WRITE_TIMEOUT,
        ).json()
        problems = []
        for item in body.get("configs") or [] if isinstance(body, dict) else []:
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, dict):
                continue
            for error in value.get("errors") or []:
                problems.append(f"{value.get('name')}: {' '.join(str(error).split())}")
        return problems

    def put_config(self, name: str, props: Mapping[str, str]) -> bool:
        """Create or update; True if created. Retries while the workers rebalance (HTTP 409)."""
        deadline = time.monotonic() + WRITE_TIMEOUT
        while True:
            resp = self.request(
                "PUT", f"/connectors/{quote(name, safe='')}/config", body=dict(props),
                timeout=WRITE_TIMEOUT, ok=(200, 201, 409),
            )
            if resp.status_code != 409:
                return resp.status_code == 201
            if time.monotonic() > deadline:
                raise ConnectorError(f"Kafka Connect kept rebalancing: {_message(resp)}")
            time.sleep(POLL_SECONDS)

    def status(self, name: str) -> dict[str, Any] | None:
        """GET /connectors/<name>/status, or None if there is no such connector (yet)."""
        resp = self.request("GET", f"/connectors/{quote(name, safe='')}/status", ok=(200, 404))
        if resp.status_code == 404:
            return None
        body = resp.json()
        return body if isinstance(body, dict) else None

    def stored_lsn(self, name: str) -> int | None:
        """The newest WAL position in the connector's source offsets; None if it has none (or is absent)."""
        resp = self.request("GET", f"/connectors/{quote(name, safe='')}/offsets", ok=(200, 404))
        if resp.status_code == 404:
            return None
        try:
            entries = resp.json().get("offsets") or []
            lsns = [e["offset"]["lsn"] for e in entries if isinstance(e.get("offset"), dict)]
        except (ValueError, AttributeError, KeyError, TypeError):
            return None   # an answer not shaped as Connect's offsets API: nothing to compare
        ints = [v for v in lsns if type(v) is int]
        return max(ints) if ints else None

    def task_configs(self, name: str) -> list[dict[str, str]] | None:
        """The raw configs of the connector's tasks (GET /connectors/<name>/tasks), None if unregistered.

        Connect serves these from the herder's own view of the config topic, after it has stopped the
        tasks whose config changed: new configs here mean the old tasks are gone."""
        resp = self.request("GET", f"/connectors/{quote(name, safe='')}/tasks", ok=(200, 404))
        if resp.status_code == 404:
            return None
        body = resp.json()
        if not isinstance(body, list):
            return []
        return [
            {str(k): str(v) for k, v in t["config"].items()}
            for t in body if isinstance(t, dict) and isinstance(t.get("config"), dict)
        ]

    def action(self, method: str, name: str, action: str = "", ok: Sequence[int] = (200, 202, 204)) -> int:
        path = f"/connectors/{quote(name, safe='')}" + (f"/{action}" if action else "")
        return self.request(method, path, ok=ok).status_code


# --- States --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class State:
    """The connector's state and its tasks' states, with the first failure's trace."""

    connector: str
    tasks: tuple[tuple[int, str], ...]
    trace: str = ""

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> State:
        conn = body.get("connector") or {}
        task_list = [t for t in body.get("tasks") or [] if isinstance(t, dict)]
        tasks = sorted((int(t.get("id", 0)), str(t.get("state", "?"))) for t in task_list)
        traces = [str(conn.get("trace") or "")] + [str(t.get("trace") or "") for t in task_list]
        return cls(str(conn.get("state", "?")), tuple(tasks), next((t for t in traces if t), ""))

    @property
    def running(self) -> bool:
        return self.connector == "RUNNING" and bool(self.tasks) and all(s == "RUNNING" for _, s in self.tasks)

    @property
    def failed(self) -> bool:
        return self.connector == "FAILED" or any(s == "FAILED" for _, s in self.tasks)

    def describe(self) -> str:
        tasks = ", ".join(f"task {i} {s}" for i, s in self.tasks) or "no task"
        return f"connector {self.connector}, {tasks}"


def trace_summary(trace: str) -> str:
    """The first line of a Java stack trace, and its root cause when that differs."""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    if not lines:
        return "no trace"
    causes = [line[len("Caused by:"):].strip() for line in lines if line.startswith("Caused by:")]
    if causes and causes[-1] != lines[0]:
        return f"{lines[0]} (root cause: {causes[-1]})"
    return lines[0]


def _failure_hint(trace: str, props: Mapping[str, str]) -> str:
    if "password authentication failed" in trace and props.get("database.password") == PASSWORD_REFERENCE:
        return (
            f" -- hint: the Connect worker resolves {PASSWORD_REFERENCE} from its own environment: it needs"
            f" {PASSWORD_ENV} set and config.providers=env (see pipeline/connector.py)"
        )
    if "no longer available on the server" in trace:
        return (
            " -- hint: the replication slot no longer holds the position the connector stored (the slot or"
            f" the database was re-created). {RESET_ADVICE}"
        )
    return ""


# --- Operations ----------------------------------------------------------------------------------

def _connect_as_debezium(config: PipelineConfig) -> Any:
    """A psycopg2 connection as the connector's own role, to the database Connect reads."""
    import psycopg2

    pg, d = config.postgres, config.debezium
    return psycopg2.connect(
        host=d.database_host or pg.host, port=d.database_port or pg.port, dbname=pg.dbname, user=d.user,
        password=d.password.reveal(), connect_timeout=pg.connect_timeout_seconds, sslmode=pg.sslmode,
        application_name="pipeline-connector",
    )


def check_publication(config: PipelineConfig) -> None:
    """The publication debezium.publication_name exists and covers exactly debezium.tables.

    The connector never creates one (publication.autocreate.mode=disabled): infra/init-db.sql does, for the
    default names only. Without this check, a renamed publication or a changed table list registers a
    connector whose task fails later with a trace that names neither YAML key. The heartbeat table may be
    in the publication too (init-db.sql puts it there, so heartbeats move the slot). Raises ConnectorError.
    """
    import psycopg2

    pg, d = config.postgres, config.debezium
    where = f"{d.database_host or pg.host}:{d.database_port or pg.port}/{pg.dbname}"
    try:
        conn = _connect_as_debezium(config)
    except psycopg2.Error as exc:
        # libpq repeats its message for each address and sslmode it tried: the first line says it.
        reason = " ".join((str(exc).strip().splitlines() or [""])[0].split()) or type(exc).__name__
        raise ConnectorError(
            f"PostgreSQL at {where} refused or did not answer role {d.user} ({reason}):"
            " check debezium.user, debezium.password and postgres.host/port"
        ) from None
    try:
        with conn.cursor() as cur:
            # pg_publication and pg_publication_tables are readable by every role.
            cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (d.publication_name,))
            row = cur.fetchone()
            if row is None:
                raise ConnectorError(
                    f"debezium.publication_name: publication {d.publication_name} does not exist in"
                    f" {where}; create it (CREATE PUBLICATION {d.publication_name} FOR TABLE"
                    f" {', '.join(f'{d.schema}.{t}' for t in d.tables)}) or set debezium.publication_name to"
                    " an existing one (infra/init-db.sql creates debezium_binance)"
                )
            cur.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (d.publication_name,),
            )
            published = {f"{schema}.{table}" for schema, table in cur.fetchall()}
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectorError(
            f"PostgreSQL at {where}: reading publication {d.publication_name}: {reason}"
        ) from None
    finally:
        conn.close()
    wanted = {f"{d.schema}.{t}" for t in d.tables}
    missing = sorted(wanted - published)
    extra = sorted(published - wanted - {f"{d.schema}.{d.heartbeat_table}"})
    if missing or extra:
        found = ", ".join(sorted(published)) or "no table"
        parts = []
        if missing:
            parts.append(f"ALTER PUBLICATION {d.publication_name} ADD TABLE {', '.join(missing)}")
        if extra:
            parts.append(f"ALTER PUBLICATION {d.publication_name} DROP TABLE {', '.join(extra)}")
        scope = "FOR ALL TABLES, " if row[0] else ""
        raise ConnectorError(
            f"debezium.tables: publication {d.publication_name} ({scope}{found}) does not cover exactly"
            f" {', '.join(sorted(wanted))}: run {'; '.join(parts)} as a superuser, or change debezium.tables"
            " (or debezium.publication_name)"
        )


def current_wal_lsn(config: PipelineConfig) -> int:
    """PostgreSQL's current WAL write position, as an integer (the form Debezium's offsets use)."""
    conn = _connect_as_debezium(config)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0])


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


RESET_ADVICE = (
    "Reset: python -m pipeline.connector delete --purge, truncate the Cassandra tables (or raise"
    " consumer.timestamp_offset above every timestamp written), then make register-connector (a new snapshot)"
)


def offsets_ahead(stored: int | None, current: int) -> str | None:
    """The problem when the connector's stored position is beyond the database's WAL, else None.

    That happens when the database was re-created (initdb, a restore from a dump) while Kafka kept the
    connector's offsets: Debezium would take every change below the stored LSN for one it already sent and
    skip it, and the consumer's write timestamps (taken from LSNs) would lose to the old rows in Cassandra.
    """
    if stored is None or stored <= current:
        return None
    return (
        f"its stored offsets are at LSN {lsn_text(stored)}, beyond PostgreSQL's WAL at {lsn_text(current)}:"
        " the database was re-initialised since, and changes would be skipped until the WAL got there. "
        + RESET_ADVICE
    )


def check_offsets(config: PipelineConfig, client: ConnectClient) -> None:
    """Raise ConnectorError when the connector's stored offsets are ahead of the database's WAL."""
    import psycopg2

    name = config.debezium.connector_name
    stored = client.stored_lsn(name)
    if stored is None:
        return
    try:
        current = current_wal_lsn(config)
    except psycopg2.Error as exc:
        raise ConnectorError(f"PostgreSQL: reading the WAL position: {' '.join(str(exc).split())}") from None
    problem = offsets_ahead(stored, current)
    if problem:
        raise ConnectorError(f"connector {name}: {problem}")


def carries(task_configs: Sequence[Mapping[str, str]] | None, props: Mapping[str, str]) -> bool:
    """True when there are tasks and every one was generated from `props` (a task's config is the
    connector's plus keys Connect adds, such as task.class)."""
    return bool(task_configs) and all(
        all(cfg.get(k) == v for k, v in props.items()) for cfg in task_configs or ()
    )


def register(
    config: PipelineConfig,
    *,
    props: Mapping[str, str] | None = None,
    client: ConnectClient | None = None,
    timeout: float | None = None,
    say: Callable[[str], None] = print,
    preflight: Callable[[PipelineConfig], None] | None = check_publication,
) -> State:
    """Create or update the connector, then wait until it and its task run with this config. Idempotent.

    `preflight` (default: check_publication) checks PostgreSQL before anything is stored; with it, the
    connector's stored offsets are also checked against the database's WAL (check_offsets). None skips both
    (tests with a fake Connect). A connector left FAILED, PAUSED or STOPPED is restarted or resumed once.
    Raises ConnectorError.
    """
    d = config.debezium
    name = d.connector_name
    props = dict(props if props is not None else connector_config(config))
    client = client or ConnectClient(d.connect_url)
    deadline = time.monotonic() + (timeout if timeout is not None else d.register_timeout_seconds)

    version = client.version()
    plugins = client.plugins()
    if plugins and CONNECTOR_CLASS not in plugins:
        raise ConnectorError(
            f"Kafka Connect {version} at {client.url} has no {CONNECTOR_CLASS} plugin"
            " (is Debezium's PostgreSQL connector on its plugin.path?)"
        )
    if preflight is not None:
        preflight(config)
        check_offsets(config, client)
    # Validate first: for an invalid config, PUT .../config answers with an HTTP 500 (a NullPointerException
    # in Connect 4.3 formatting Debezium 3.6's answer) instead of the errors.
    problems = client.validate(name, props)
    if problems:
        listed = "; ".join(problems)
        raise ConnectorError(f"connector {name}: config rejected: {listed}" + _failure_hint(listed, props))
    # A changed config restarts the connector and then its task asynchronously: until the task runs the
    # new config, the status Connect reports still describes the old one (RUNNING, or FAILED).
    changed = not carries(client.task_configs(name), props)
    created = client.put_config(name, props)
    what = "created" if created else "config updated" if changed else "config unchanged"
    say(f"connector {name} {what} on Kafka Connect {version} at {client.url}")

    nudged_at: float | None = None
    state: State | None = None
    confirmed = not changed  # an unchanged config restarts no task: its RUNNING is current
    while True:
        # Configs first, status second: once the task configs are the new ones, the old task has been
        # stopped (Connect stops it before it serves the new configs).
        fresh = carries(client.task_configs(name), props)
        body = client.status(name)
        state = State.parse(body) if body else None
        if state and state.running and fresh:
            # The status comes from a cache of Connect's status topic, which may lag the stop of the old
            # task by a moment: a RUNNING seen a poll apart is the new task's.
            if confirmed:
                say(f"connector {name}: {state.describe()}")
                return state
            confirmed = True
        elif state and not state.running:
            confirmed = False
        if state and nudged_at is None and (state.failed or state.connector in ("PAUSED", "STOPPED")):
            # The state may predate this config; one restart (or resume) gives the new config its chance.
            # A STOPPED connector has no task configs at all until it is resumed.
            nudged_at = time.monotonic()
            if state.failed:
                client.action("POST", name, "restart?includeTasks=true&onlyFailed=true")
            else:
                client.action("PUT", name, "resume")
            time.sleep(POLL_SECONDS)
            continue
        # A restart is asynchronous: the old FAILED may still show for a moment. A failed task counts once
        # it runs this config; a failed connector never gets that far.
        if (
            state and state.failed and (fresh or state.connector == "FAILED")
            and nudged_at is not None and time.monotonic() - nudged_at > RESTART_GRACE
        ):
            raise ConnectorError(
                f"connector {name} FAILED ({state.describe()}): {trace_summary(state.trace)}"
                + _failure_hint(state.trace, props)
            )
        if time.monotonic() > deadline:
            seen = state.describe() if state else "no status yet"
            if state and not fresh:
                seen += ", its task not yet restarted with the new config"
            waited = timeout if timeout is not None else d.register_timeout_seconds
            raise ConnectorError(f"connector {name} not RUNNING after {waited:g}s ({seen})")
        time.sleep(POLL_SECONDS)


def connector_state(config: PipelineConfig, client: ConnectClient | None = None) -> State | None:
    """The connector's state, or None if it is not registered. Raises ConnectorError."""
    client = client or ConnectClient(config.debezium.connect_url)
    body = client.status(config.debezium.connector_name)
    return State.parse(body) if body else None


def drop_slot(config: PipelineConfig, slot_name: str, *, timeout: float = 60.0) -> bool:
    """Drop a replication slot as the debezium role, waiting while its reader lets go. False if absent."""
    deadline = time.monotonic() + timeout
    conn = _connect_as_debezium(config)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot_name,))
                row = cur.fetchone()
                if row is None:
                    return False
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                    return True
                if time.monotonic() > deadline:
                    raise ConnectorError(f"replication slot {slot_name} still in use after {timeout:g}s")
                time.sleep(POLL_SECONDS)
    finally:
        conn.close()


def delete(
    config: PipelineConfig, *, purge: bool = False, client: ConnectClient | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Delete the connector; False if there was none. Idempotent.

    With `purge`, also forget everything that would let it resume: its source offsets (stopped first,
    as Connect requires) and its replication slot. Registering it again then starts with a new snapshot.
    """
    d = config.debezium
    name = d.connector_name
    client = client or ConnectClient(d.connect_url)
    existed = client.status(name) is not None
    if existed and purge:
        client.action("PUT", name, "stop")
        deadline = time.monotonic() + d.register_timeout_seconds
        while (state := connector_state(config, client)) is not None and state.connector != "STOPPED":
            if time.monotonic() > deadline:
                raise ConnectorError(f"connector {name} not STOPPED after {d.register_timeout_seconds:g}s")
            time.sleep(POLL_SECONDS)
        client.action("DELETE", name, "offsets")
        say(f"connector {name}: offsets reset")
    if existed:
        client.action("DELETE", name, ok=(200, 202, 204, 404))
        say(f"connector {name} deleted")
    else:
        say(f"connector {name} is not registered")
    if purge:
        dropped = drop_slot(config, d.slot_name)
        say(f"replication slot {d.slot_name} {'dropped' if dropped else 'does not exist'}")
    elif existed:
        say(f"replication slot {d.slot_name} kept (delete --purge drops it, and the connector's offsets)")
    return existed


# --- Command line --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.connector", description="The Debezium PostgreSQL connector in Kafka Connect."
    )
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reg = commands.add_parser("register", help="create or update the connector and wait until it runs")
    reg.add_argument(
        "--inline-password", action="store_true",
        help=f"store the literal password in the connector config instead of {PASSWORD_REFERENCE}",
    )
    show = commands.add_parser("show", help="print the connector config (passwords masked)")
    show.add_argument("--database-host", help="the host Connect reaches PostgreSQL by")
    commands.add_parser("status", help="print the connector's and its task's state (exit 1 unless RUNNING)")
    rm = commands.add_parser("delete", help="delete the connector (its replication slot is kept)")
    rm.add_argument(
        "--purge", action="store_true", help="also reset its offsets and drop its replication slot"
    )
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    name = config.debezium.connector_name
    try:
        if args.command == "show":
            props = masked(connector_config(config, database_host=args.database_host))
            print(json.dumps({"name": name, "config": props}, indent=2))
            return 0
        if args.command == "register":
            register(config, props=connector_config(config, inline_password=args.inline_password))
            return 0
        if args.command == "status":
            state = connector_state(config)
            if state is None:
                print(f"connector {name} is not registered")
                return 1
            print(f"connector {name}: {state.describe()}")
            if state.failed:
                print(f"  {trace_summary(state.trace)}")
            return 0 if state.running else 1
        delete(config, purge=args.purge)
        return 0
    except ConnectorError as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # psycopg2 errors from --purge, and anything unforeseen: one line, no traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"{args.command} failed: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    run(main)
