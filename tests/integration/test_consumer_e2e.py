"""End to end on the real stack: SQL -> PostgreSQL -> Debezium -> Kafka -> `python -m consumer` -> Cassandra.

The module registers its own Debezium connector (own slot and topic prefix, so its initial snapshot
reads the rows already in PostgreSQL as op `r`), writes into its own Cassandra keyspace (made from
infra/cassandra-init.cql) and uses its own consumer groups, so it neither disturbs nor depends on the
pipeline's own connector and data. Everything it made is removed afterwards. The consumer always runs
as a separate process, exactly as `make consume` runs it, configured through PIPELINE__* overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import selectors
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

from consumer.sink import CassandraSink
from consumer.verify import TableReport, print_reports, verify
from pipeline.config import PipelineConfig
from pipeline.connector import connector_config, delete, register, with_debezium

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "native"))
TABLES = ("latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr")


def _admin_dsn(config: PipelineConfig) -> dict[str, Any]:
    return {
        "host": config.postgres.host, "port": config.postgres.port, "dbname": config.postgres.dbname,
        "user": "postgres", "password": os.environ.get("POSTGRES_PASSWORD", ""), "connect_timeout": 10,
    }


@dataclasses.dataclass
class E2E:
    run: str                  # keyspace, slot, topic prefix, connector and group prefix
    symbol: str               # the symbol of this run's rows
    config: PipelineConfig    # the pipeline's config, pointed at this run's connector, topics and keyspace
    pg: Any                   # superuser connection, autocommit
    logs: Path

    def env(self, group: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PIPELINE__DEBEZIUM__TOPIC_PREFIX": self.run,
            "PIPELINE__CASSANDRA__KEYSPACE": self.run,
            "PIPELINE__CONSUMER__GROUP_ID": f"{self.run}-{group}",
            "PIPELINE__CONSUMER__DEAD_LETTER_TOPIC": f"{self.run}.dead-letter",
            "PIPELINE__CONSUMER__METRICS_PORT": "0",
            "PIPELINE__CONSUMER__COMMIT_INTERVAL_MS": "200",
            "PIPELINE__CONSUMER__SESSION_TIMEOUT_MS": "10000",
            "PIPELINE__CONSUMER__LOG_LEVEL": "INFO",
        })
        env.update(extra)
        return env

    def start(
        self, group: str, *args: str, name: str = "", **env: str
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name or group}-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", *args], cwd=ROOT, env=self.env(group, **env),
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        return proc, log

    def sql(self, *statements: str) -> None:
        with self.pg.cursor() as cur:
            for s in statements:
                cur.execute(s)

    def topics(self) -> list[str]:
        return [f"{self.run}.public.{t}" for t in TABLES]


def _stop(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"consumer did not stop within {timeout}s of SIGTERM:\n{_tail(log)}")
    text = log.read_text(errors="replace")
    assert code == 0, f"consumer exited {code}:\n{_tail(log)}"
    return text


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """A failed test leaves no consumer behind (it would hold partitions of the next test's group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, n: int = 40) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if "Downgrading" not in x]
    return "\n".join(lines[-n:])


def _wait_equal(
    e2e: E2E, procs: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 90
) -> list[TableReport]:
    """verify until every table is equal; fails with the differences and the consumers' logs."""
    deadline = time.monotonic() + timeout
    while True:
        for proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"consumer exited {proc.returncode} early:\n{_tail(log)}")
        reports = verify(e2e.config, symbols=[e2e.symbol])
        if all(r.equal for r in reports):
            return reports
        if time.monotonic() > deadline:
            lines: list[str] = []
            print_reports(reports, lines.append)
            logs = "\n".join(_tail(log) for _, log in procs)
            pytest.fail("Cassandra still differs from PostgreSQL:\n" + "\n".join(lines) + "\n" + logs)
        time.sleep(1)


def _end_offsets(e2e: E2E) -> dict[TopicPartition, int]:
    c = KafkaConsumer(bootstrap_servers=list(e2e.config.kafka.bootstrap_servers))
    try:
        tps = [TopicPartition(t, p) for t in e2e.topics() for p in (c.partitions_for_topic(t) or ())]
        return dict(c.end_offsets(tps))
    finally:
        c.close()


def _committed(e2e: E2E, group: str) -> dict[TopicPartition, int]:
    admin = KafkaAdminClient(bootstrap_servers=list(e2e.config.kafka.bootstrap_servers))
    try:
        got = admin.list_group_offsets(f"{e2e.run}-{group}")[f"{e2e.run}-{group}"]
        return {TopicPartition(tp.topic, tp.partition): om.offset for tp, om in got.items()}
    finally:
        admin.close()


def _wait_assigned(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until the member has partitions (and so has started: signal handlers, metrics)."""
    deadline = time.monotonic() + timeout
    while not re.search(r"assigned \S+\[\d+\]", log.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the consumer got no partitions:\n{_tail(log)}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> dict[str, float]:
    """The consumer's Prometheus samples: {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class TcpProxy:
    """A loopback TCP relay that can be cut and restored: Cassandra, as far as one consumer can tell,
    goes down and comes back, while everything else keeps using the real port."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = _free_port()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        self._stop.clear()
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.setblocking(False)
        self._thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, listener: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is listener:
                        client, _ = listener.accept()
                        try:
                            upstream = socket.create_connection(self.target, timeout=5)
                        except OSError:
                            client.close()
                            continue
                        for a, b in ((client, upstream), (upstream, client)):
                            a.setblocking(False)
                            peers[a] = b
                            sel.register(a, selectors.EVENT_READ, None)
                        continue
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    other = peers.get(sock)
                    if not data or other is None:
                        for s in (sock, other):
                            if s is not None and s in peers:
                                sel.unregister(s)
                                peers.pop(s, None)
                                s.close()
                        continue
                    other.setblocking(True)
                    with contextlib.suppress(OSError):
                        other.sendall(data)
                    other.setblocking(False)
        finally:
            for s in list(peers):
                s.close()
            listener.close()
            sel.close()


def _owned(assignment: Any) -> set[tuple[str, int]]:
    """The partitions in a described member's assignment (empty while the group rebalances)."""
    if not isinstance(assignment, dict):
        return set()
    return {(a["topic"], p) for a in assignment.get("assigned_partitions", ()) for p in a["partitions"]}


def _make_keyspace(config: PipelineConfig, name: str) -> None:
    from apply_cql import split_statements

    sink: CassandraSink[Any] = CassandraSink(config.cassandra)
    sink.connect()
    try:
        text = (ROOT / "infra" / "cassandra-init.cql").read_text()
        for statement in split_statements(text):
            if statement.strip():
                sink.execute(re.sub(r"\bbinance\b", name, statement), timeout=120)
    finally:
        sink.close()


def _drop_keyspace(config: PipelineConfig, name: str) -> None:
    sink: CassandraSink[Any] = CassandraSink(config.cassandra)
    sink.connect()
    try:
        sink.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
    finally:
        sink.close()


def snapshot_only(symbol: str) -> dict[str, str]:
    """Connector settings that limit the initial snapshot to one symbol's rows: the shared database may
    hold anything other tests left (even rows Debezium cannot encode), and this module checks its own."""
    tables = [f"public.{t}" for t in TABLES]
    props = {"snapshot.select.statement.overrides": ",".join(tables)}
    for t in tables:
        props[f"snapshot.select.statement.overrides.{t}"] = f"SELECT * FROM {t} WHERE symbol = '{symbol}'"
    return props


def _changes(e2e: E2E, n: int, start: int) -> None:
    """Inserts, updates and deletes across every table for this run's symbol."""
    s = e2e.symbol
    stmts = []
    for i in range(start, start + n):
        stmts += [
            f"INSERT INTO trades VALUES ('{s}', {i}, {i}.5, 0.001, {i}.0005, "
            f"timestamptz '2024-05-01 00:00:00Z' + interval '{i} hours', {str(i % 2 == 0).lower()}, true)",
            f"INSERT INTO klines VALUES ('{s}', '1m', "
            f"timestamptz '2024-05-01 00:00Z' + interval '{i} minutes', "
            f"timestamptz '2024-05-01 00:00:59.999Z' + interval '{i} minutes', "
            f"1, 2, 0.5, 1.{i}, 10, 15, {i}, 3, 4)",
            f"INSERT INTO order_book_levels VALUES ('{s}', {i}, 'bid', 0, 100.{i}, 1, "
            f"timestamptz '2024-05-02 10:00:00.123456Z' + interval '{i} seconds')",
        ]
    last = start + n - 1
    stmts += [
        f"INSERT INTO latest_prices VALUES ('{s}', {last}.25, now()) "
        "ON CONFLICT (symbol) DO UPDATE SET price = EXCLUDED.price, updated_at = EXCLUDED.updated_at",
        f"UPDATE klines SET close_price = close_price + 1, trade_count = trade_count + 100 "
        f"WHERE symbol = '{s}' AND open_time = timestamptz '2024-05-01 00:00Z' + interval '{start} minutes'",
        f"DELETE FROM order_book_levels WHERE symbol = '{s}' AND last_update_id = {start}",
        f"DELETE FROM trades WHERE symbol = '{s}' AND trade_id = {start + 1}",
    ]
    e2e.sql(*stmts)


@pytest.fixture(scope="module")
def e2e(
    services: Any, pipeline_config: PipelineConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2E]:
    services.ensure("postgres", "kafka", "connect", "cassandra")
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    run = f"e2e{suffix}"
    symbol = "E2E" + "".join(random.choices(string.ascii_uppercase, k=6)) + "USDT"
    config = with_debezium(pipeline_config, connector_name=run, slot_name=run, topic_prefix=run)
    config = dataclasses.replace(
        config,
        cassandra=dataclasses.replace(config.cassandra, keyspace=run),
        consumer=dataclasses.replace(config.consumer, group_id=f"{run}-verify", metrics_port=0),
    )
    pg = psycopg2.connect(**_admin_dsn(config))
    pg.autocommit = True
    e = E2E(run, symbol, config, pg, tmp_path_factory.mktemp("consumer-logs"))
    # Rows that exist before the connector does: its snapshot sends them as op r.
    e.sql(
        f"INSERT INTO latest_prices VALUES ('{symbol}', 1.000000000000000001, now())",
        f"INSERT INTO ticker_24hr VALUES ('{symbol}', -1.5, -0.25, 100.1, 101, 99.5, 0.001, 99.4, 2, "
        "99.6, 3, 101, 102, 98, 12345.678, 1234567.891, '2024-05-01 00:00:00.001Z', "
        "'2024-05-02 00:00:00.999Z', 1, 99, 99)",
    )
    _changes(e, 2, 1000)
    _make_keyspace(config, run)
    try:
        # The test is about the consumer: the password goes inline rather than through the worker's env.
        props = connector_config(config, inline_password=True)
        props.update(snapshot_only(symbol))
        register(config, props=props, timeout=180, say=lambda _: None)
        yield e
    finally:
        try:
            delete(config, purge=True, say=lambda _: None)
        finally:
            e.sql(*(f"DELETE FROM {t} WHERE symbol = '{symbol}'" for t in TABLES))
            pg.close()
            _drop_keyspace(config, run)
            admin = KafkaAdminClient(bootstrap_servers=list(config.kafka.bootstrap_servers))
            try:
                existing = set(admin.list_topics())
                doomed = [t for t in existing if t.startswith(f"{run}.") or t.endswith(f".{run}")]
                if doomed:
                    admin.delete_topics(doomed, raise_errors=False)
            finally:
                admin.close()


def test_snapshot_inserts_updates_deletes_reach_cassandra(e2e: E2E) -> None:
    port = _free_port()
    proc, log = e2e.start("main", PIPELINE__CONSUMER__METRICS_PORT=str(port))
    try:
        _changes(e2e, 5, 2000)
        # Times far from 1970, where a float of the epoch milliseconds is off by one: written and
        # compared exactly (truncated to Cassandra's milliseconds), in both directions of the epoch.
        e2e.sql(*(
            f"INSERT INTO trades VALUES ('{e2e.symbol}', {900_000 + i}, 1, 1, 1, "
            f"timestamptz '{t}', true, true)"
            for i, t in enumerate(("9999-12-31 23:59:59.999999Z", "2255-06-05 23:47:34.740993Z",
                                   "1969-12-31 23:59:59.999999Z", "1900-01-01 00:00:00.001Z"))
        ))
        reports = _wait_equal(e2e, [(proc, log)])
    except BaseException:
        _kill(proc)
        raise

    def ops_applied() -> set[str]:
        # The consumer counts an event once it has handled Cassandra's ack, a moment after the row shows.
        return {op for op in "rcud" for k, v in applied.items()
                if k.startswith("cdc_consumer_events_applied_total") and f'op="{op}"' in k and v > 0}

    deadline = time.monotonic() + 10
    while (ops := ops_applied() if (applied := _metrics(port)) else set()) != set("rcud"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    text = _stop(proc, log)
    # snapshot reads, inserts, updates, deletes: all went through
    assert ops == set("rcud"), applied
    assert applied["cdc_consumer_cassandra_write_seconds_count"] > 0
    by_table = {r.table: r for r in reports}
    assert by_table["trades"].cassandra_rows >= 5
    assert "commit" in text and "events/s" in text
    assert "consumer stopped" in text


def test_restart_resumes_from_committed_offsets(e2e: E2E) -> None:
    # Everything up to the log end was committed when the previous member stopped on SIGTERM.
    committed = _committed(e2e, "main")
    ends = _end_offsets(e2e)
    assert committed, "nothing committed by the first run"
    assert all(committed.get(tp, 0) == end for tp, end in ends.items() if end), (committed, ends)
    _changes(e2e, 3, 3000)  # while no consumer runs
    time.sleep(2)
    proc, log = e2e.start("main", name="main-restart")
    try:
        _wait_equal(e2e, [(proc, log)])
    except BaseException:
        _kill(proc)
        raise
    text = _stop(proc, log)
    new_ends = _end_offsets(e2e)
    expected = sum(new_ends[tp] - committed.get(tp, 0) for tp in new_ends)
    seen = int(re.search(r"consumer stopped: (\d+) records consumed", text).group(1))  # type: ignore[union-attr]
    assert seen == expected, f"read {seen} records after the restart, expected only the {expected} new ones"
    assert _committed(e2e, "main") == {tp: off for tp, off in new_ends.items() if off}


def test_two_members_split_the_partitions(e2e: E2E) -> None:
    # Empty the tables, so only this group's writes can make verify equal again.
    sink: CassandraSink[Any] = CassandraSink(e2e.config.cassandra)
    sink.connect()
    try:
        for t in TABLES:
            sink.truncate(e2e.run, t)
    finally:
        sink.close()
    proc, log = e2e.start("pair", "--workers", "2")
    try:
        admin = KafkaAdminClient(bootstrap_servers=list(e2e.config.kafka.bootstrap_servers))
        group = f"{e2e.run}-pair"
        deadline = time.monotonic() + 60
        while True:
            info = admin.describe_groups([group])[group]
            members = info.get("members") or []
            owned = [_owned(m.get("member_assignment")) for m in members]
            if info.get("group_state") == "Stable" and len(owned) == 2 and all(owned):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"group {group} never had two members with partitions: {info}\n{_tail(log)}")
            time.sleep(0.5)
        admin.close()
        assert not owned[0] & owned[1]
        ends = _end_offsets(e2e)
        assert owned[0] | owned[1] == {(tp.topic, tp.partition) for tp in ends}
        _changes(e2e, 3, 4000)
        _wait_equal(e2e, [(proc, log)])
    finally:
        text = _stop(proc, log)
    assert text.count("consumer stopped") == 2


def test_poison_message_goes_to_the_dead_letter_topic(e2e: E2E) -> None:
    topic = f"{e2e.run}.public.trades"
    dlq = f"{e2e.run}.dead-letter"
    producer = KafkaProducer(bootstrap_servers=list(e2e.config.kafka.bootstrap_servers), acks="all")
    meta = producer.send(topic, key=b'{"symbol":"X"}', value=b"{not json", partition=1).get(timeout=30)
    producer.close()
    proc, log = e2e.start("main", name="main-poison")
    _changes(e2e, 1, 5000)  # and the pipeline goes on after it
    try:
        reader = KafkaConsumer(dlq, bootstrap_servers=list(e2e.config.kafka.bootstrap_servers),
                               auto_offset_reset="earliest", consumer_timeout_ms=1000)
        found = None
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline:
            for rec in reader:
                if rec.value == b"{not json":
                    found = rec
                    break
        reader.close()
        assert found is not None, f"nothing in {dlq}:\n{_tail(log)}"
        headers = {k: v for k, v in found.headers}
        assert found.key == b'{"symbol":"X"}'
        assert headers["original_topic"] == topic.encode()
        assert headers["original_partition"] == b"1"
        assert headers["original_offset"] == str(meta.offset).encode()
        assert headers["error_reason"] == b"not_json"
        assert headers["error"]
        _wait_equal(e2e, [(proc, log)])
    finally:
        text = _stop(proc, log)
    assert "1 dead-lettered" in text
    assert _committed(e2e, "main")[TopicPartition(topic, 1)] > meta.offset


@pytest.mark.chaos
def test_cassandra_outage_pauses_retries_and_resumes_without_loss(e2e: E2E) -> None:
    proxy = TcpProxy(e2e.config.cassandra.port)
    proxy.up()
    port = _free_port()
    proc, log = e2e.start(
        "main", name="main-outage", PIPELINE__CASSANDRA__PORT=str(proxy.port),
        PIPELINE__CASSANDRA__REQUEST_TIMEOUT_SECONDS="3", PIPELINE__CONSUMER__METRICS_PORT=str(port),
        PIPELINE__CONSUMER__RETRY_BACKOFF_MAX_SECONDS="2",
    )
    try:
        _wait_assigned(proc, log)
        _changes(e2e, 2, 5500)
        _wait_equal(e2e, [(proc, log)])
        proxy.down()
        _changes(e2e, 4, 6000)  # written to PostgreSQL while this consumer's Cassandra is away
        deadline = time.monotonic() + 60
        while _metrics(port).get("cdc_consumer_paused", 0) != 1:
            if time.monotonic() > deadline:
                pytest.fail(f"the consumer never paused:\n{_tail(log)}")
            time.sleep(0.5)
        assert not all(r.equal for r in verify(e2e.config, symbols=[e2e.symbol]))
        time.sleep(3)  # several retries fail meanwhile; the process stays up
        assert proc.poll() is None
        proxy.up()
        _wait_equal(e2e, [(proc, log)], timeout=90)
        assert _metrics(port)["cdc_consumer_paused"] == 0
        assert _metrics(port)["cdc_consumer_cassandra_retries_total"] > 0
    finally:
        text = _stop(proc, log)
        proxy.down()
    assert "pausing fetches and retrying" in text
    assert "Cassandra takes writes again" in text
