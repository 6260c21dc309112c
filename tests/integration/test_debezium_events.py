"""Debezium's events on the real stack: what the consumer's decoder gets, checked at the source.

Rows are written to PostgreSQL and the change events read back from Kafka: op codes c, u, d (and the
tombstone after a delete) from the pipeline's own connector; r (snapshot) and t (truncate) from a
second connector registered for this test on a scratch table, with its own publication, slot and topic
prefix, removed again afterwards. Decimals must arrive as Connect Decimals (base64 big-endian unscaled
value, with the column's scale from PostgreSQL), timestamptz as io.debezium.time.ZonedTimestamp strings,
and the key must hold the primary key. Those are the encodings config/pipeline.yaml asks for
(debezium.decimal_handling_mode: precise, debezium.schemas_enable: true); a config asking for others
fails first in `encodings`, by name. Heartbeats must come from the connector running its action query.

CAPTURE_FIXTURES=1 also writes the messages read into tests/fixtures/debezium/captured/ for the
decoder's unit tests.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig
from pipeline.connector import (
    ConnectClient,
    connector_state,
    delete,
    heartbeat_query,
    register,
    with_debezium,
)

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
CAPTURED = ROOT / "tests" / "fixtures" / "debezium" / "captured"
CAPTURE = os.environ.get("CAPTURE_FIXTURES") == "1"
WAIT_SECONDS = 90.0

PRICE = Decimal("12345.678901234567890123")
TINY = Decimal("0.000000000000000001")
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

# The second connector: a scratch copy of latest_prices, published and captured on its own.
SCRATCH_TABLE = "dbz_test_prices"
SCRATCH_PUBLICATION = "dbz_test_pub"
SCRATCH = {
    "connector_name": "dbz-test-snapshot",
    "slot_name": "dbz_test_snapshot",
    "publication_name": SCRATCH_PUBLICATION,
    "topic_prefix": "dbztest",
    "tables": (SCRATCH_TABLE,),
}


# --- Reading topics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any

    @property
    def payload(self) -> dict[str, Any]:
        assert isinstance(self.value, dict), f"not an event: {self}"
        return self.value["payload"]  # type: ignore[no-any-return]

    @property
    def op(self) -> str:
        return str(self.payload["op"])


def _json(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


class TopicReader:
    """Reads one topic from the offsets it had when created (from 0 for a topic that did not exist)."""

    def __init__(self, config: PipelineConfig, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(
            **kafka_client_options(config.kafka), client_id="test-debezium-events", group_id=None,
            enable_auto_commit=False,
        )
        self.start: dict[int, int] = {}
        partitions = self.consumer.partitions_for_topic(topic) or set()
        if partitions:
            tps = [TopicPartition(topic, p) for p in partitions]
            self.start = {tp.partition: off for tp, off in self.consumer.end_offsets(tps).items()}
        self.assigned: set[int] = set()

    def _assign(self) -> None:
        self.consumer.topics()  # fresh metadata: the topic may have just been created
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        if partitions and partitions != self.assigned:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            for tp in tps:
                self.consumer.seek(tp, self.start.get(tp.partition, 0))
            self.assigned = set(partitions)

    def read(
        self, match: Callable[[Message], bool], count: int, timeout: float = WAIT_SECONDS
    ) -> list[Message]:
        """The first `count` messages that `match`, in partition order (one key: one partition)."""
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                got = [f"{m.op if m.value else 'tombstone'}@{m.offset}" for m in found]
                pytest.fail(f"{self.topic}: {len(found)} of {count} expected messages in {timeout:g}s: {got}")
            if not self.assigned:
                self._assign()
                if not self.assigned:
                    time.sleep(0.5)
                    continue
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    message = Message(r.topic, r.partition, r.offset, _json(r.key), _json(r.value))
                    if match(message):
                        found.append(message)
        return found[:count]

    def close(self) -> None:
        self.consumer.close()


def key_is(**fields: Any) -> Callable[[Message], bool]:
    def match(m: Message) -> bool:
        payload = m.key.get("payload") if isinstance(m.key, dict) else None
        return isinstance(payload, dict) and all(payload.get(k) == v for k, v in fields.items())

    return match


def capture(name: str, message: Message) -> None:
    if not CAPTURE:
        return
    CAPTURED.mkdir(parents=True, exist_ok=True)
    record = {"topic": message.topic, "key": message.key, "value": message.value}
    (CAPTURED / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


# --- Decoding what Debezium sends ---------------------------------------------------------------------

def field_schema(message: Message, section: str, name: str) -> dict[str, Any]:
    """The Connect schema of one column in `before` or `after`."""
    envelope = message.value["schema"]
    part = next(f for f in envelope["fields"] if f["field"] == section)
    return next(f for f in part["fields"] if f["field"] == name)  # type: ignore[no-any-return]


def decimal_of(encoded: str, scale: int) -> Decimal:
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def zoned(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def require_encodings(config: PipelineConfig) -> None:
    """The config the connector runs with must ask for the encodings these tests decode. timestamptz needs
    no check: Debezium sends it as a ZonedTimestamp string whatever debezium.time_precision_mode says."""
    d = config.debezium
    assert d.decimal_handling_mode == "precise", (
        "these tests decode decimal.handling.mode=precise (Connect Decimal: base64 unscaled value and a"
        f" scale), but the config has debezium.decimal_handling_mode={d.decimal_handling_mode}: set it back"
        " or teach decimal_of() and the schema checks the other mode"
    )
    assert d.schemas_enable, (
        "these tests read each field's Connect schema from the envelope, but the config has"
        " debezium.schemas_enable=false: set it back to true, or run them with a config that has it"
    )


# --- Fixtures -----------------------------------------------------------------------------------------

def admin_connection() -> Any:
    """A superuser connection (the compose image's and the native stack's `postgres` role)."""
    from pipeline.config import load

    config = load(ROOT / "config" / "pipeline.yaml")
    conn = psycopg2.connect(
        host=config.postgres.host, port=config.postgres.port, dbname=config.postgres.dbname, user="postgres",
        password=os.environ.get("POSTGRES_PASSWORD", ""), connect_timeout=10,
    )
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def admin(stack: PipelineConfig) -> Iterator[Any]:
    conn = admin_connection()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def encodings(stack: PipelineConfig) -> PipelineConfig:
    require_encodings(stack)
    return stack


@pytest.fixture(scope="module")
def scales(admin: Any, stack: PipelineConfig) -> dict[tuple[str, str], int]:
    """(table, column) -> the scale of each numeric column, from PostgreSQL: what Debezium must send."""
    cur = admin.cursor()
    cur.execute(
        "SELECT table_name, column_name, numeric_scale FROM information_schema.columns"
        " WHERE table_schema = %s AND data_type = 'numeric'", (stack.debezium.schema,),
    )
    found = {(table, column): int(scale) for table, column, scale in cur.fetchall() if scale is not None}
    assert ("latest_prices", "price") in found, "latest_prices.price is not a numeric with a scale"
    return found


@pytest.fixture(scope="module")
def symbol() -> str:
    """A symbol no producer writes, so every event for it is this test's."""
    return "ZZTEST" + uuid.uuid4().hex[:10].upper()


@dataclass
class MainEvents:
    latest: list[Message]  # c, u, d, tombstone
    trades: list[Message]  # c, d, tombstone
    creates: dict[str, Message]  # the insert event of each other captured table


@pytest.fixture(scope="module")
def main_events(
    stack: PipelineConfig, encodings: PipelineConfig, admin: Any, symbol: str
) -> Iterator[MainEvents]:
    """One round of writes through the pipeline's own connector, and the events they produced."""
    prefix = f"{stack.debezium.topic_prefix}.{stack.debezium.schema}"
    tables = ("latest_prices", "trades", "klines", "order_book_levels", "ticker_24hr")
    readers = {t: TopicReader(stack, f"{prefix}.{t}") for t in tables}
    cur = admin.cursor()
    try:
        cur.execute("INSERT INTO latest_prices (symbol, price, updated_at) VALUES (%s, %s, %s)",
                    (symbol, PRICE, WHEN))
        cur.execute("UPDATE latest_prices SET price = %s, updated_at = %s WHERE symbol = %s",
                    (TINY, WHEN.replace(second=10), symbol))
        cur.execute("DELETE FROM latest_prices WHERE symbol = %s", (symbol,))
        cur.execute(
            "INSERT INTO trades (symbol, trade_id, price, quantity, quote_quantity, trade_time,"
            " is_buyer_maker, is_best_match) VALUES (%s, 42, %s, %s, %s, %s, true, NULL)",
            (symbol, PRICE, Decimal("0.5"), PRICE / 2, WHEN),
        )
        cur.execute("DELETE FROM trades WHERE symbol = %s", (symbol,))
        cur.execute(
            "INSERT INTO klines VALUES"
            " (%s, '1m', %s, %s, 1.5, 2.5, 0.5, 2.0, 100.25, 200.5, 7, 50.125, 100.25)",
            (symbol, WHEN, WHEN.replace(second=59)),
        )
        cur.execute(
            "INSERT INTO order_book_levels VALUES (%s, 1001, 'bid', 0, %s, 1.25, %s)", (symbol, PRICE, WHEN),
        )
        cur.execute(
            "INSERT INTO ticker_24hr VALUES (%s, -1.5, -0.012, 100.1, 101.6, 100.1, 0.3, 100.0, 1.0,"
            " 100.2, 2.0, 101.6, 102.0, 99.0, 12345.678, 1234567.89, %s, %s, 1, 500, 500)",
            (symbol, WHEN, WHEN.replace(day=7)),
        )
        latest = readers["latest_prices"].read(key_is(symbol=symbol), 4)
        trades = readers["trades"].read(key_is(symbol=symbol, trade_id=42), 3)
        creates = {t: readers[t].read(key_is(symbol=symbol), 1)[0] for t in tables[2:]}
        yield MainEvents(latest, trades, creates)
    finally:
        for table in ("klines", "order_book_levels", "ticker_24hr", "latest_prices", "trades"):
            cur.execute(f"DELETE FROM {table} WHERE symbol = %s", (symbol,))
        for reader in readers.values():
            reader.close()


def remove_scratch(config: PipelineConfig, admin: Any) -> None:
    """Everything the second connector leaves: connector, offsets, slot, publication, table, topics."""
    scratch = with_debezium(config, **SCRATCH)
    delete(scratch, purge=True, say=lambda _: None)
    cur = admin.cursor()
    cur.execute(f"DROP PUBLICATION IF EXISTS {SCRATCH_PUBLICATION}")
    cur.execute(f"DROP TABLE IF EXISTS public.{SCRATCH_TABLE}")
    admin_client = KafkaAdminClient(**kafka_client_options(config.kafka), client_id="test-debezium-events")
    try:
        prefix = SCRATCH["topic_prefix"]
        doomed = [t for t in admin_client.list_topics()
                  if t.startswith(f"{prefix}.") or t == f"__debezium-heartbeat.{prefix}"]
        if doomed:
            admin_client.delete_topics(doomed)
    finally:
        admin_client.close()


@dataclass
class ScratchEvents:
    snapshot: Message  # r: the row that was there before the connector
    insert: Message  # c: a row written while it streams
    truncate: Message  # t


@pytest.fixture(scope="module")
def scratch_events(
    stack: PipelineConfig, encodings: PipelineConfig, admin: Any, symbol: str
) -> Iterator[ScratchEvents]:
    scratch = with_debezium(stack, **SCRATCH)
    remove_scratch(stack, admin)  # what an interrupted earlier run may have left
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE public.{SCRATCH_TABLE} (LIKE public.latest_prices INCLUDING ALL)")
    cur.execute(f"GRANT SELECT ON public.{SCRATCH_TABLE} TO {stack.debezium.user}")
    cur.execute(f"INSERT INTO public.{SCRATCH_TABLE} VALUES (%s, %s, %s)", (symbol, PRICE, WHEN))
    cur.execute(f"CREATE PUBLICATION {SCRATCH_PUBLICATION} FOR TABLE public.{SCRATCH_TABLE}")
    topic = f"{SCRATCH['topic_prefix']}.public.{SCRATCH_TABLE}"
    reader = TopicReader(stack, topic)
    try:
        register(scratch, say=lambda _: None)
        snapshot = reader.read(key_is(symbol=symbol), 1)[0]
        cur.execute(f"INSERT INTO public.{SCRATCH_TABLE} VALUES (%s, %s, %s)", (symbol + "2", TINY, WHEN))
        insert = reader.read(key_is(symbol=symbol + "2"), 1)[0]
        cur.execute(f"TRUNCATE public.{SCRATCH_TABLE}")
        truncate = reader.read(lambda m: isinstance(m.value, dict) and m.op == "t", 1)[0]
        yield ScratchEvents(snapshot, insert, truncate)
    finally:
        reader.close()
        remove_scratch(stack, admin)


# --- The pipeline's connector -------------------------------------------------------------------------

def test_the_pipeline_connector_runs(stack: PipelineConfig) -> None:
    state = connector_state(stack)
    assert state is not None and state.running, state
    stored = ConnectClient(stack.debezium.connect_url).request(
        "GET", f"/connectors/{stack.debezium.connector_name}/config").json()
    assert stored["database.password"] == "${env:DEBEZIUM_PASSWORD}", "the password must not be stored"


def test_change_topics_are_compressed_as_configured(
    stack: PipelineConfig, admin: Any, symbol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch holding a new change carries the codec of debezium.compression_type (Connect's producer
    override took effect), and the consumer's client unpacks it."""
    from kafka.record.default_records import DefaultRecordBatch

    codecs = {"none": 0, "gzip": 1, "lz4": 3}
    seen: list[tuple[int, int, int]] = []  # (first offset, last offset, codec) of each batch read
    unpack = DefaultRecordBatch._maybe_uncompress

    def spy(batch: Any) -> Any:
        seen.append((batch.base_offset, batch.base_offset + batch.last_offset_delta, batch.compression_type))
        return unpack(batch)

    topic = f"{stack.debezium.topic_prefix}.{stack.debezium.schema}.latest_prices"
    reader = TopicReader(stack, topic)
    try:
        cur = admin.cursor()
        who = symbol + "Z"
        cur.execute("INSERT INTO latest_prices (symbol, price, updated_at) VALUES (%s, %s, %s)",
                    (who, PRICE, WHEN))
        cur.execute("DELETE FROM latest_prices WHERE symbol = %s", (who,))
        created = reader.read(key_is(symbol=who), 1)[0]
    finally:
        reader.close()
    # Fetch that one record again, from its own partition only, watching the batches unpacked.
    monkeypatch.setattr(DefaultRecordBatch, "_maybe_uncompress", spy)
    consumer = KafkaConsumer(**kafka_client_options(stack.kafka), group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, created.partition)
        consumer.assign([tp])
        consumer.seek(tp, created.offset)
        deadline = time.monotonic() + WAIT_SECONDS
        while not consumer.poll(timeout_ms=500) and time.monotonic() < deadline:
            pass
    finally:
        consumer.close()
    batch = [codec for first, last, codec in seen if first <= created.offset <= last]
    assert batch[:1] == [codecs[stack.debezium.compression_type]], (created, seen)


def test_insert_update_delete_give_c_u_d_and_a_tombstone(
    main_events: MainEvents, symbol: str, scales: dict[tuple[str, str], int]
) -> None:
    create, update, remove, tombstone = main_events.latest
    assert [create.op, update.op, remove.op] == ["c", "u", "d"]
    assert tombstone.value is None
    assert tombstone.key == remove.key == create.key
    assert create.payload["before"] is None
    assert create.payload["after"]["symbol"] == symbol
    assert update.payload["after"]["symbol"] == symbol
    assert remove.payload["after"] is None
    # latest_prices keeps REPLICA IDENTITY DEFAULT: an update has no `before`, and a delete's `before`
    # holds the key and placeholders (zero, the epoch) for the other NOT NULL columns, not their values.
    assert update.payload["before"] is None
    before = remove.payload["before"]
    assert before["symbol"] == symbol
    assert decimal_of(before["price"], scales["latest_prices", "price"]) == 0
    assert zoned(before["updated_at"]) == datetime(1970, 1, 1, tzinfo=UTC)
    source = create.payload["source"]
    assert (source["db"], source["schema"], source["table"]) == ("binance", "public", "latest_prices")
    assert source["snapshot"] == "false"
    assert isinstance(create.payload["ts_ms"], int) and isinstance(source["lsn"], int)
    assert len({m.partition for m in main_events.latest}) == 1
    capture("latest_prices-create", create)
    capture("latest_prices-update", update)
    capture("latest_prices-delete", remove)
    capture("latest_prices-tombstone", tombstone)


def test_the_key_holds_the_primary_key(main_events: MainEvents, symbol: str) -> None:
    key = main_events.latest[0].key
    assert key["payload"] == {"symbol": symbol}
    assert [f["field"] for f in key["schema"]["fields"]] == ["symbol"]
    trade_key = main_events.trades[0].key
    assert trade_key["payload"] == {"symbol": symbol, "trade_id": 42}
    kline_key = main_events.creates["klines"].key["payload"]
    assert set(kline_key) == {"symbol", "interval", "open_time"}
    assert zoned(kline_key["open_time"]) == WHEN


def test_decimals_are_precise_with_the_columns_scale(
    main_events: MainEvents, scales: dict[tuple[str, str], int]
) -> None:
    create, update = main_events.latest[:2]
    scale = scales["latest_prices", "price"]
    schema = field_schema(create, "after", "price")
    assert schema["type"] == "bytes"
    assert schema["name"] == "org.apache.kafka.connect.data.Decimal"
    assert schema["parameters"]["scale"] == str(scale)
    assert decimal_of(create.payload["after"]["price"], scale) == PRICE
    assert decimal_of(update.payload["after"]["price"], scale) == TINY
    ticker_create = main_events.creates["ticker_24hr"]
    ticker_scale = scales["ticker_24hr", "price_change_percent"]
    ticker_schema = field_schema(ticker_create, "after", "price_change_percent")
    assert ticker_schema["parameters"]["scale"] == str(ticker_scale)
    ticker = ticker_create.payload["after"]
    assert decimal_of(ticker["price_change_percent"], ticker_scale) == Decimal("-0.012")


def test_timestamps_are_zoned_timestamp_strings(main_events: MainEvents) -> None:
    create, update = main_events.latest[:2]
    schema = field_schema(create, "after", "updated_at")
    assert schema["type"] == "string"
    assert schema["name"] == "io.debezium.time.ZonedTimestamp"
    assert zoned(create.payload["after"]["updated_at"]) == WHEN
    assert create.payload["after"]["updated_at"].endswith("Z")
    assert zoned(update.payload["after"]["updated_at"]) == WHEN.replace(second=10)


def test_a_full_replica_identity_delete_carries_the_whole_row(
    main_events: MainEvents, symbol: str, scales: dict[tuple[str, str], int]
) -> None:
    create, remove, tombstone = main_events.trades
    assert [create.op, remove.op, tombstone.value] == ["c", "d", None]
    before = remove.payload["before"]
    assert before["symbol"] == symbol and before["trade_id"] == 42
    assert zoned(before["trade_time"]) == WHEN  # what the consumer needs to find the day partition
    assert decimal_of(before["price"], scales["trades", "price"]) == PRICE
    assert before["is_buyer_maker"] is True and before["is_best_match"] is None
    capture("trades-create", create)
    capture("trades-delete", remove)
    for table, message in main_events.creates.items():
        assert message.op == "c", table
        capture(f"{table}-create", message)


def test_heartbeats_run_the_action_query_and_reach_their_topic(stack: PipelineConfig, admin: Any) -> None:
    """A heartbeat record arrives after the test starts, and the heartbeat table's row changes over a wait
    longer than the interval: Connect sends heartbeats with or without an action query, and only the
    query writes that row (the debezium role alone may)."""
    d = stack.debezium
    stored = ConnectClient(d.connect_url).request("GET", f"/connectors/{d.connector_name}/config").json()
    assert stored.get("heartbeat.action.query") == heartbeat_query(stack), (
        "the running connector's heartbeat.action.query is not the one pipeline.connector generates"
    )
    interval = d.heartbeat_interval_ms / 1000
    wait = 2 * interval + 15  # one interval, a late first beat, and slack for a busy machine
    cur = admin.cursor()

    def beat_at() -> datetime | None:
        cur.execute(f"SELECT beat_at FROM {d.schema}.{d.heartbeat_table} WHERE id = 1")
        row = cur.fetchone()
        return row[0] if row else None

    # From the topic's end offsets now: whatever it reads was sent after the test started.
    reader = TopicReader(stack, f"__debezium-heartbeat.{d.topic_prefix}")
    try:
        cur.execute("SELECT now()")
        started = cur.fetchone()[0]
        before = beat_at()
        # The query sets beat_at = now(): a value after `started` (the database's own clock) was written
        # by a heartbeat since the test began.
        deadline = time.monotonic() + wait
        while (latest := beat_at()) is None or latest <= started:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{d.schema}.{d.heartbeat_table} not written in {wait:g}s (heartbeat every {interval:g}s,"
                    f" beat_at {before} before the test, {latest} now): the action query does not run"
                )
            time.sleep(min(1.0, interval / 4))
        beat = reader.read(lambda m: m.value is not None, 1, timeout=wait)[0]
    finally:
        reader.close()
    assert beat.key["payload"] == {"serverName": d.topic_prefix}
    assert isinstance(beat.value["payload"]["ts_ms"], int)
    capture("heartbeat", beat)


# --- A second connector: snapshot and truncate --------------------------------------------------------

def test_rows_present_before_the_connector_arrive_as_reads(
    scratch_events: ScratchEvents, symbol: str, scales: dict[tuple[str, str], int]
) -> None:
    snapshot = scratch_events.snapshot
    assert snapshot.op == "r"
    assert snapshot.payload["before"] is None
    assert snapshot.payload["after"]["symbol"] == symbol
    assert snapshot.payload["source"]["snapshot"] in ("true", "first", "last", "first_in_data_collection",
                                                      "last_in_data_collection")
    # The scratch table is LIKE latest_prices: the same column types.
    assert decimal_of(snapshot.payload["after"]["price"], scales["latest_prices", "price"]) == PRICE
    assert zoned(snapshot.payload["after"]["updated_at"]) == WHEN
    assert scratch_events.insert.op == "c"
    assert scratch_events.insert.payload["source"]["snapshot"] == "false"
    capture("snapshot-read", snapshot)


def test_a_truncate_is_an_event_without_a_key(scratch_events: ScratchEvents) -> None:
    truncate = scratch_events.truncate
    assert truncate.op == "t"
    assert truncate.key is None
    assert truncate.payload["before"] is None and truncate.payload["after"] is None
    assert truncate.payload["source"]["table"] == SCRATCH_TABLE
    capture("truncate", truncate)


def test_the_second_connector_leaves_nothing_behind(stack: PipelineConfig, admin: Any) -> None:
    remove_scratch(stack, admin)
    cur = admin.cursor()
    cur.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (SCRATCH["slot_name"],))
    assert cur.fetchone()[0] == 0
    assert connector_state(with_debezium(stack, **SCRATCH)) is None
