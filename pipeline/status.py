"""`make status`: is each service up, is the connector running, how far behind is its slot, what is in
the topics.

    python -m pipeline.status [--config PATH] [--timeout SECONDS]

Every check has a short timeout and runs beside the others; a service that is down prints
'down (reason)', never a traceback. Exit 0 when every service is up and the connector and its task
run, else 1 (2 for a bad config).
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.cli import add_config_argument, load_or_exit, run
from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig
from pipeline.connector import (
    ConnectClient,
    ConnectorError,
    State,
    current_wal_lsn,
    describe_error,
    offsets_ahead,
    trace_summary,
)

DEFAULT_TIMEOUT = 5.0


@dataclass
class Check:
    """One line of the report: `name  up|down  detail`, with optional indented lines below it."""

    name: str
    ok: bool
    detail: str
    more: list[str] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    """An exception as a short reason: the first line, without the driver's noise."""
    errors = getattr(exc, "errors", None)  # cassandra's NoHostAvailable: {host: exception}
    if isinstance(errors, dict) and errors:
        first = next(iter(errors.values()))
        if isinstance(first, BaseException):
            return _reason(first)
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    if text.startswith(("connection to server", "could not connect")):  # libpq: keep the server's words
        # sslmode=prefer tries twice, so the same failure may follow twice: keep the first.
        text = " ".join(text.split()).split(" failed: ", 1)[-1].split(" connection to server")[0]
        text = text.split(" Is the server running")[0]
    if "Last error: " in text:  # cassandra-driver's connection errors
        text = text.rsplit("Last error: ", 1)[1]
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    first = text.splitlines()[0] if text else ""
    return (first[:160] + "...") if len(first) > 160 else first or type(exc).__name__


# --- PostgreSQL ----------------------------------------------------------------------------------

def check_postgres(config: PipelineConfig, timeout: float) -> list[Check]:
    """The server (as the producer role), and the connector's replication slot."""
    import psycopg2

    pg = config.postgres
    where = f"{pg.host}:{pg.port}/{pg.dbname}"
    try:
        conn = psycopg2.connect(
            host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user, password=pg.password.reveal(),
            connect_timeout=max(1, int(timeout)), sslmode=pg.sslmode,
            options=f"-c statement_timeout={int(timeout * 1000)}", application_name="pipeline-status",
        )
    except Exception as exc:
        return [Check("postgres", False, f"down ({_reason(exc)}) at {where}")]
    slot = config.debezium.slot_name
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version')")
            version = cur.fetchone()[0]
            # pg_replication_slots is readable by any role; confirmed_flush_lsn is what Debezium committed.
            cur.execute(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
    except Exception as exc:
        return [Check("postgres", False, f"down ({_reason(exc)}) at {where}")]
    finally:
        conn.close()
    checks = [Check("postgres", True, f"up at {where} (PostgreSQL {version})")]
    if row is None:
        checks.append(Check("slot", False, f"missing: replication slot {slot} does not exist"))
    else:
        active, lag = row
        state = "active" if active else "inactive (no reader)"
        lag_text = "unknown (nothing confirmed yet)" if lag is None else f"{lag} bytes"
        checks.append(Check("slot", True, f"{slot} {state}, lag {lag_text}"))
    return checks


# --- Kafka ---------------------------------------------------------------------------------------

def pipeline_topic(config: PipelineConfig, topic: str) -> bool:
    """The connector's change topics, its heartbeat topic, and the consumer's dead-letter topic."""
    prefix = config.debezium.topic_prefix
    return (
        topic.startswith(prefix + ".")
        or topic == f"__debezium-heartbeat.{prefix}"
        or topic == config.consumer.dead_letter_topic
    )


def check_kafka(config: PipelineConfig, timeout: float) -> list[Check]:
    """Metadata from the brokers, and the end offset of each of the pipeline's topics."""
    from kafka import KafkaConsumer, TopicPartition

    servers = ",".join(config.kafka.bootstrap_servers)
    ms = int(timeout * 1000)
    try:
        consumer = KafkaConsumer(
            **kafka_client_options(config.kafka), client_id="pipeline-status", enable_auto_commit=False,
            request_timeout_ms=max(ms, 1000), bootstrap_timeout_ms=ms,
            reconnect_backoff_max_ms=500,
        )
    except Exception as exc:
        return [Check("kafka", False, f"down ({_reason(exc)}) at {servers}")]
    try:
        topics = sorted(t for t in consumer.topics() if pipeline_topic(config, t))
        brokers = len(consumer._client.cluster.brokers())
        lines: list[str] = []
        for topic in topics:
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions], timeout_ms=ms)
            offsets = [ends.get(TopicPartition(topic, p), 0) or 0 for p in partitions]
            per = "+".join(str(o) for o in offsets)
            lines.append(f"{topic}  {len(partitions)} partition(s)  end offsets {per} = {sum(offsets)}")
    except Exception as exc:
        return [Check("kafka", False, f"down ({_reason(exc)}) at {servers}")]
    finally:
        consumer.close()
    detail = f"up at {servers} ({brokers} broker(s), {len(topics)} pipeline topic(s))"
    return [Check("kafka", True, detail, lines or ["no pipeline topics yet"])]


# --- Kafka Connect -------------------------------------------------------------------------------

def check_connect(config: PipelineConfig, timeout: float) -> list[Check]:
    """The worker answering GET /, then the connector's and its task's state."""
    d = config.debezium
    client = ConnectClient(d.connect_url, max_timeout=timeout)
    try:
        version = client.version()
        body = client.status(d.connector_name)
    except ConnectorError as exc:
        reason = str(exc).split(": ", 1)[-1] if "not reachable" in str(exc) else str(exc)
        return [Check("connect", False, f"down ({reason}) at {d.connect_url}")]
    checks = [Check("connect", True, f"up at {d.connect_url} (Kafka Connect {version})")]
    if body is None:
        hint = "make register-connector"
        checks.append(Check("connector", False, f"{d.connector_name} is not registered ({hint})"))
        return checks
    state = State.parse(body)
    more = [trace_summary(state.trace)] if state.failed else []
    healthy = state.running
    try:
        stored = client.stored_lsn(d.connector_name)
        # No stored offsets (a new connector): nothing to compare, so no PostgreSQL connection either.
        problem = None if stored is None else offsets_ahead(stored, current_wal_lsn(config))
    except Exception as exc:  # PostgreSQL down: its own line says so
        problem = None
        more.append(f"offsets not compared with the WAL: {_reason(exc)}")
    if problem:
        healthy = False
        more.append(problem)
    checks.append(Check("connector", healthy, f"{d.connector_name}: {state.describe()}", more))
    return checks


# --- Cassandra -----------------------------------------------------------------------------------

def check_cassandra(config: PipelineConfig, timeout: float) -> list[Check]:
    """A session, the keyspace, and every mapped table in it."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    c = config.cassandra
    where = f"{','.join(c.contact_points)}:{c.port}"
    auth = None
    if c.username:
        auth = PlainTextAuthProvider(c.username, c.password.reveal() if c.password else "")
    ssl_context = None
    if c.ssl_cafile:
        import ssl

        ssl_context = ssl.create_default_context(cafile=c.ssl_cafile)
    cluster = Cluster(
        list(c.contact_points), port=c.port, auth_provider=auth, ssl_context=ssl_context,
        connect_timeout=timeout, control_connection_timeout=timeout, idle_heartbeat_interval=0,
    )
    try:
        session = cluster.connect()
        session.default_timeout = timeout
        row = session.execute("SELECT release_version FROM system.local").one()
        version = row[0] if row else "?"
        keyspace = cluster.metadata.keyspaces.get(c.keyspace)
    except Exception as exc:
        return [Check("cassandra", False, f"down ({_reason(exc)}) at {where}")]
    finally:
        cluster.shutdown()
    detail = f"up at {where} (Cassandra {version})"
    if keyspace is None:
        return [Check("cassandra", False, f"{detail}, but keyspace {c.keyspace} does not exist")]
    tables = set(keyspace.tables)
    missing = sorted({m.target for m in config.mappings} - tables)
    if missing:
        lacking = ", ".join(missing)
        return [Check("cassandra", False, f"{detail}, keyspace {c.keyspace} lacks table(s) {lacking}")]
    return [Check("cassandra", True, f"{detail}, keyspace {c.keyspace} with {len(tables)} table(s)")]


# --- Running the checks --------------------------------------------------------------------------

CHECKS: dict[str, Callable[[PipelineConfig, float], list[Check]]] = {
    "postgres": check_postgres,
    "kafka": check_kafka,
    "connect": check_connect,
    "cassandra": check_cassandra,
}


def run_checks(config: PipelineConfig, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """Every check at once, each in a daemon thread: one that hangs is reported and left behind."""
    results: dict[str, list[Check]] = {}

    def runner(name: str, check: Callable[[PipelineConfig, float], list[Check]]) -> None:
        try:
            results[name] = check(config, timeout)
        except Exception as exc:  # a check must never take the report down
            results[name] = [Check(name, False, f"down ({describe_error(exc)})")]

    threads = [
        threading.Thread(target=runner, args=(name, check), name=f"status-{name}", daemon=True)
        for name, check in CHECKS.items()
    ]
    for thread in threads:
        thread.start()
    # Drivers add their own connect and retry time on top of the timeout they are given.
    grace = 3 * timeout + 5
    for thread in threads:
        thread.join(grace)
    out: list[Check] = []
    for name in CHECKS:
        out.extend(results.get(name) or [Check(name, False, f"down (no answer in {grace:g}s)")])
    return out


def render(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.name:<10} {check.detail}")
        lines.extend(f"{'':<12}{line}" for line in check.more)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.status", description=__doc__.splitlines()[0])
    add_config_argument(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"per-check timeout (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    # The drivers log every failed connection attempt; a down service is already in the report.
    for noisy in ("kafka", "cassandra", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    checks = run_checks(config, args.timeout)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    run(main)
