"""pipeline.connector: the config generated from the YAML, secrets kept out of output, and registration
against a fake Kafka Connect (the real one is exercised by tests/integration/test_debezium_events.py)."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fake_secrets import PIPELINE_ENV

from pipeline import connector
from pipeline.config import PipelineConfig, load
from pipeline.connector import (
    PASSWORD_REFERENCE,
    ConnectClient,
    ConnectorError,
    State,
    connector_config,
    masked,
    register,
    trace_summary,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = PIPELINE_ENV


def config_from(tmp_path: Path, data: dict[str, Any], env: dict[str, str] | None = None) -> PipelineConfig:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path, {**ENV, **(env or {})})


@pytest.fixture
def project() -> PipelineConfig:
    return load(ROOT / "config" / "pipeline.yaml", ENV)


# --- The generated config -------------------------------------------------------------------------

def test_project_config_generates_the_expected_connector(project: PipelineConfig) -> None:
    props = connector_config(project)
    assert all(isinstance(v, str) for v in props.values())
    assert props["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert props["tasks.max"] == "1"
    assert props["plugin.name"] == "pgoutput"
    assert props["database.hostname"] == "127.0.0.1"
    assert props["database.port"] == "5432"
    assert props["database.dbname"] == "binance"
    assert props["database.user"] == "debezium"
    assert props["database.password"] == "${env:DEBEZIUM_PASSWORD}"
    assert props["publication.name"] == "debezium_binance"
    assert props["publication.autocreate.mode"] == "disabled"
    assert props["slot.name"] == "debezium_binance"
    assert props["slot.drop.on.stop"] == "false"
    assert props["topic.prefix"] == "binance"
    assert props["tombstones.on.delete"] == "true"
    assert props["provide.transaction.metadata"] == "false"
    assert props["snapshot.mode"] == "initial"
    assert props["decimal.handling.mode"] == "precise"
    assert props["time.precision.mode"] == "adaptive_time_microseconds"
    assert props["topic.creation.default.partitions"] == "6"
    assert props["topic.creation.default.replication.factor"] == "1"
    assert props["key.converter"] == props["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    assert props["key.converter.schemas.enable"] == props["value.converter.schemas.enable"] == "true"
    assert props["errors.tolerance"] == "none"
    assert props["producer.override.compression.type"] == "lz4"


def test_every_debezium_knob_lands_in_its_property(tmp_path: Path) -> None:
    config = config_from(tmp_path, {
        "postgres": {"host": "db.internal", "port": 6543, "dbname": "market", "sslmode": "require"},
        "debezium": {
            "connector_name": "other", "topic_prefix": "mkt", "slot_name": "slot_x",
            "publication_name": "pub_x", "user": "cdc", "decimal_handling_mode": "string",
            "time_precision_mode": "connect", "schema": "data", "tables": ["trades", "klines"],
            "heartbeat_table": "beats", "snapshot_mode": "no_data", "heartbeat_interval_ms": 2500,
            "topic_partitions": 7, "schemas_enable": False, "compression_type": "gzip",
        },
    })
    props = connector_config(config)
    assert props["database.hostname"] == "db.internal"
    assert props["database.port"] == "6543"
    assert props["database.dbname"] == "market"
    assert props["database.sslmode"] == "require"
    assert props["database.user"] == "cdc"
    assert props["topic.prefix"] == "mkt"
    assert props["slot.name"] == "slot_x"
    assert props["publication.name"] == "pub_x"
    assert props["decimal.handling.mode"] == "string"
    assert props["time.precision.mode"] == "connect"
    assert props["schema.include.list"] == "data"
    assert props["table.include.list"] == r"data\.trades,data\.klines"
    assert props["snapshot.mode"] == "no_data"
    assert props["heartbeat.interval.ms"] == "2500"
    assert "data.beats" in props["heartbeat.action.query"]
    assert props["topic.creation.default.partitions"] == "7"
    assert props["key.converter.schemas.enable"] == props["value.converter.schemas.enable"] == "false"
    assert props["producer.override.compression.type"] == "gzip"


def test_table_include_list_matches_exactly_the_captured_tables(project: PipelineConfig) -> None:
    patterns = [re.compile(p) for p in connector_config(project)["table.include.list"].split(",")]
    captured = {f"public.{t}" for t in project.debezium.tables}
    for name in captured | {"public.debezium_heartbeat", "publicXtrades", "other.trades", "public.trades2"}:
        assert any(p.fullmatch(name) for p in patterns) == (name in captured), name


def test_heartbeat_query_upserts_one_row(project: PipelineConfig) -> None:
    query = connector_config(project)["heartbeat.action.query"]
    assert query.startswith("INSERT INTO public.debezium_heartbeat ")
    assert "ON CONFLICT (id) DO UPDATE" in query


def test_database_host_precedence(tmp_path: Path) -> None:
    plain = config_from(tmp_path, {"postgres": {"host": "pg-a", "port": 5432}})
    assert connector_config(plain)["database.hostname"] == "pg-a"
    own = config_from(tmp_path, {"postgres": {"host": "pg-a"}, "debezium": {"database_host": "pg-b",
                                                                               "database_port": 6000}})
    assert connector_config(own)["database.hostname"] == "pg-b"
    assert connector_config(own)["database.port"] == "6000"
    assert connector_config(own, database_host="pg-c")["database.hostname"] == "pg-c"


def test_environment_overrides_reach_the_connector(tmp_path: Path) -> None:
    """What the compose register-connector service relies on."""
    config = config_from(tmp_path, {}, {"PIPELINE__DEBEZIUM__DATABASE_HOST": "postgres",
                                        "PIPELINE__DEBEZIUM__CONNECT_URL": "http://connect:8083"})
    assert connector_config(config)["database.hostname"] == "postgres"
    assert config.debezium.connect_url == "http://connect:8083"


# --- Secrets ---------------------------------------------------------------------------------------

def test_password_is_a_reference_unless_inlined(project: PipelineConfig) -> None:
    assert ENV["DEBEZIUM_PASSWORD"] not in json.dumps(connector_config(project))
    assert connector_config(project, inline_password=True)["database.password"] == ENV["DEBEZIUM_PASSWORD"]


def test_masked_hides_literal_passwords_and_keeps_references(project: PipelineConfig) -> None:
    inline = masked(connector_config(project, inline_password=True))
    assert inline["database.password"] == "******"
    assert ENV["DEBEZIUM_PASSWORD"] not in json.dumps(inline)
    assert masked(connector_config(project))["database.password"] == PASSWORD_REFERENCE
    assert masked({"a": "b"}) == {"a": "b"}


def test_show_prints_no_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    assert connector.main(["show", "--database-host", "postgres"]) == 0
    out = capsys.readouterr().out
    assert ENV["DEBEZIUM_PASSWORD"] not in out and ENV["PRODUCER_PASSWORD"] not in out
    shown = json.loads(out)
    assert shown["name"] == "binance-postgres"
    assert shown["config"]["database.hostname"] == "postgres"


# --- States and traces ------------------------------------------------------------------------------

def test_state_parsing() -> None:
    tasks = [{"id": 1, "state": "RUNNING"}, {"id": 0, "state": "FAILED", "trace": "boom\n at x"}]
    body = {"connector": {"state": "RUNNING"}, "tasks": tasks}
    state = State.parse(body)
    assert state.tasks == ((0, "FAILED"), (1, "RUNNING"))
    assert state.failed and not state.running
    assert state.trace.startswith("boom")
    assert "task 0 FAILED" in state.describe()
    assert not State.parse({"connector": {"state": "RUNNING"}, "tasks": []}).running


def test_trace_summary_names_the_root_cause() -> None:
    trace = (
        "org.apache.kafka.connect.errors.ConnectException: An exception occurred in the producer.\n"
        "\tat io.debezium.Foo.bar(Foo.java:1)\n"
        "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user \"x\"\n"
        "\t... 3 more\n"
    )
    summary = trace_summary(trace)
    assert "\n" not in summary
    assert summary.startswith("org.apache.kafka.connect.errors.ConnectException: An exception occurred")
    assert "root cause: org.postgresql.util.PSQLException: FATAL: password authentication failed" in summary
    assert trace_summary("") == "no trace"


# --- Registration against a fake Connect -----------------------------------------------------------

class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.text = json.dumps(body)
        self.reason = ""

    def json(self) -> Any:
        return self._body


class FakeConnect:
    """Answers like Kafka Connect; `statuses` are served one per status call, the last one repeated.

    Task configs: `tasks_before` before the PUT (None: no connector, 404); after it, the PUT config once
    `task_lag` more reads have still seen the old ones (Connect restarts the task asynchronously)."""

    def __init__(self, statuses: list[dict[str, Any] | None], put_status: int = 201,
                 put_body: Any = None, validate_errors: dict[str, list[str]] | None = None,
                 tasks_before: list[dict[str, str]] | None = None, task_lag: int = 0) -> None:
        self.statuses = statuses
        self.put_status = put_status
        self.put_body = put_body
        self.validate_errors = validate_errors or {}
        self.tasks = tasks_before
        self.task_lag = task_lag
        self.put_props: dict[str, str] | None = None
        self.calls: list[tuple[str, str, Any]] = []
        self.seen: list[str] = []  # "tasks old", "tasks new", "status RUNNING/..." in call order

    def request(self, method: str, url: str, json: Any = None, **_: Any) -> FakeResponse:
        path = url.split("8083", 1)[1]
        self.calls.append((method, path, json))
        if path == "/":
            return FakeResponse(200, {"version": "4.3.0"})
        if path == "/connector-plugins":
            return FakeResponse(200, [{"class": connector.CONNECTOR_CLASS}])
        if method == "PUT" and path.endswith("/config/validate"):
            configs = [{"definition": {"name": "internal.x"}, "value": None}] + [
                {"value": {"name": key, "errors": errors}} for key, errors in self.validate_errors.items()
            ]
            return FakeResponse(200, {"error_count": len(self.validate_errors), "configs": configs})
        if method == "PUT" and path.endswith("/config"):
            if self.put_status in (200, 201):
                self.put_props = dict(json)
            return FakeResponse(self.put_status, self.put_body or {})
        if path.endswith("/tasks"):
            if self.put_props is not None:
                if self.task_lag > 0:
                    self.task_lag -= 1
                else:
                    self.tasks = [{**self.put_props, "name": "binance-postgres", "task.class": "T"}]
            if self.tasks is None:
                return FakeResponse(404, {"message": "not found"})
            self.seen.append("tasks new" if self.put_props and self.tasks and
                             connector.carries(self.tasks, self.put_props) else "tasks old")
            return FakeResponse(200, [{"id": {"connector": "x", "task": i}, "config": c}
                                      for i, c in enumerate(self.tasks)])
        if path.endswith("/status"):
            body = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            self.seen.append(f"status {State.parse(body).describe()}" if body else "status none")
            return FakeResponse(404, {"message": "not found"}) if body is None else FakeResponse(200, body)
        return FakeResponse(204, None)


def running(state: str = "RUNNING", task: str = "RUNNING", trace: str = "") -> dict[str, Any]:
    return {"connector": {"state": state}, "tasks": [{"id": 0, "state": task, "trace": trace}]}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(connector, "RESTART_GRACE", 0.0)


def client_for(fake: FakeConnect) -> ConnectClient:
    return ConnectClient("http://connect:8083", session=fake)  # type: ignore[arg-type]


def register_on(fake: FakeConnect, project: PipelineConfig, say: Callable[[str], None] = lambda _: None,
                **kwargs: Any) -> Any:
    """register() against the fake Connect, without the PostgreSQL preflight."""
    return register(project, client=client_for(fake), preflight=None, say=say, **kwargs)


def test_register_puts_the_config_and_waits_for_running(project: PipelineConfig, fast: None) -> None:
    fake = FakeConnect([None, {"connector": {"state": "RUNNING"}, "tasks": []}, running()])
    lines: list[str] = []
    state = register_on(fake, project, say=lines.append)
    assert state.running
    puts = [c for c in fake.calls if c[0] == "PUT" and c[1].endswith("/config")]
    assert puts == [("PUT", "/connectors/binance-postgres/config", connector_config(project))]
    assert "created" in lines[0] and "RUNNING" in lines[-1]


def test_register_restarts_a_failed_connector_once(project: PipelineConfig, fast: None) -> None:
    fake = FakeConnect([running(task="FAILED", trace="old"), running()], put_status=200)
    register_on(fake, project)
    restart = "/connectors/binance-postgres/restart?includeTasks=true&onlyFailed=true"
    assert ("POST", restart, None) in fake.calls


def test_register_fails_with_the_trace_in_one_line(project: PipelineConfig, fast: None) -> None:
    trace = ("org.apache.kafka.connect.errors.ConnectException: Error\n\tat x\n"
             "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user")
    fake = FakeConnect([running(task="FAILED", trace=trace)])
    with pytest.raises(ConnectorError) as info:
        register_on(fake, project)
    message = str(info.value)
    assert "\n" not in message
    assert "FAILED" in message and "password authentication failed" in message
    assert "DEBEZIUM_PASSWORD" in message  # the hint about the worker's config provider


def test_register_times_out_naming_the_states(project: PipelineConfig, fast: None) -> None:
    fake = FakeConnect([running(task="UNASSIGNED")])
    expected = r"not RUNNING after 0\.2s \(connector RUNNING, task 0 UNASSIGNED\)"
    with pytest.raises(ConnectorError, match=expected):
        register_on(fake, project, timeout=0.2)


def test_register_reports_an_invalid_config_in_one_line(project: PipelineConfig, fast: None) -> None:
    body = {"error_code": 400,
            "message": "Connector configuration is invalid and contains the following 1 error(s):\n"
                       "Error while validating connector config: Connection refused\n"}
    fake = FakeConnect([None], put_status=400, put_body=body)
    with pytest.raises(ConnectorError) as info:
        register_on(fake, project)
    assert "\n" not in str(info.value)
    assert "HTTP 400" in str(info.value) and "Connection refused" in str(info.value)


def test_register_reports_validation_errors_before_storing_anything(
    project: PipelineConfig, fast: None
) -> None:
    """Connect 4.3 answers PUT .../config for an invalid Debezium config with an HTTP 500 (an NPE);
    the validate endpoint has the real reasons."""
    error = ("Error while validating connector config: FATAL:  password authentication failed "
             'for user "debezium"')
    fake = FakeConnect([None], validate_errors={"database.hostname": [error]})
    with pytest.raises(ConnectorError) as info:
        register_on(fake, project)
    message = str(info.value)
    assert "\n" not in message
    assert "config rejected: database.hostname: Error while validating connector config: FATAL" in message
    assert "config.providers=env" in message
    assert not any(c[0] == "PUT" and c[1].endswith("/config") for c in fake.calls)
    validated = next(c[2] for c in fake.calls if c[1].endswith("/config/validate"))
    assert validated["name"] == "binance-postgres"
    assert validated["connector.class"] == connector.CONNECTOR_CLASS


def test_register_refuses_a_worker_without_the_plugin(project: PipelineConfig, fast: None) -> None:
    fake = FakeConnect([None])
    original: Callable[..., FakeResponse] = fake.request

    def no_plugin(method: str, url: str, **kw: Any) -> FakeResponse:
        if url.endswith("/connector-plugins"):
            return FakeResponse(200, [{"class": "org.apache.kafka.connect.mirror.MirrorSourceConnector"}])
        return original(method, url, **kw)

    fake.request = no_plugin  # type: ignore[method-assign]
    with pytest.raises(ConnectorError, match=r"plugin\.path"):
        register_on(fake, project)
    assert not any(c[0] == "PUT" for c in fake.calls)


def test_a_changed_config_waits_for_the_task_to_run_it(project: PipelineConfig, fast: None) -> None:
    """Connect restarts the task asynchronously after a PUT: the RUNNING it reports meanwhile is the old
    task's. register() returns only once the tasks carry the new config, and RUNNING was seen twice since."""
    old = {**connector_config(project), "heartbeat.interval.ms": "1", "name": "binance-postgres"}
    fake = FakeConnect([running()], put_status=200, tasks_before=[old], task_lag=3)
    lines: list[str] = []
    state = register_on(fake, project, say=lines.append)
    assert state.running
    assert "config updated" in lines[0]
    first_new = fake.seen.index("tasks new")
    assert fake.seen[:first_new].count("tasks old") >= 3  # it waited through the stale reads
    after = fake.seen[first_new:]
    assert after.count("status connector RUNNING, task 0 RUNNING") >= 2, fake.seen
    assert fake.seen[-1].startswith("status")


def test_a_stale_running_is_not_taken_for_the_new_task(project: PipelineConfig, fast: None) -> None:
    """The old task keeps reporting RUNNING and the new config never reaches a task: that is a timeout
    that says so, not a success."""
    old = {**connector_config(project), "snapshot.mode": "never"}
    fake = FakeConnect([running()], put_status=200, tasks_before=[old], task_lag=10**9)
    with pytest.raises(ConnectorError, match="not yet restarted with the new config"):
        register_on(fake, project, timeout=0.2)


def test_an_unchanged_config_needs_no_restart(project: PipelineConfig, fast: None) -> None:
    current = {**connector_config(project), "name": "binance-postgres", "task.class": "T"}
    fake = FakeConnect([running()], put_status=200, tasks_before=[current])
    lines: list[str] = []
    register_on(fake, project, say=lines.append)
    assert "config unchanged" in lines[0]
    assert [s for s in fake.seen if s.startswith("status")] == ["status connector RUNNING, task 0 RUNNING"]


def test_a_task_failing_on_the_new_config_is_reported_once_it_runs_it(
    project: PipelineConfig, fast: None
) -> None:
    """A FAILED from the old task leads to one restart; the failure counts once the task has the new
    config."""
    old = {**connector_config(project), "slot.name": "old"}
    fake = FakeConnect([running(task="FAILED", trace="new boom")], put_status=200, tasks_before=[old],
                       task_lag=2)
    with pytest.raises(ConnectorError, match=r"FAILED .*new boom"):
        register_on(fake, project, timeout=5)
    assert "tasks new" in fake.seen
    assert sum(1 for c in fake.calls if c[0] == "POST" and "/restart" in c[1]) == 1


def test_carries_compares_every_put_key_with_every_task() -> None:
    props = {"a": "1", "b": "2"}
    assert connector.carries([{"a": "1", "b": "2", "task.class": "T"}], props)
    assert not connector.carries([{"a": "1", "b": "2"}, {"a": "1", "b": "3"}], props)
    assert not connector.carries([{"a": "1"}], props)
    assert not connector.carries([], props)
    assert not connector.carries(None, props)


def test_the_preflight_runs_before_anything_is_stored(project: PipelineConfig, fast: None) -> None:
    fake = FakeConnect([None])

    def no_publication(config: PipelineConfig) -> None:
        raise ConnectorError("debezium.publication_name: publication x does not exist")

    with pytest.raises(ConnectorError, match=r"^debezium\.publication_name: "):
        register(project, client=client_for(fake), preflight=no_publication, say=lambda _: None)
    assert not any(c[0] == "PUT" for c in fake.calls)
    assert inspect.signature(register).parameters["preflight"].default is connector.check_publication


def test_unreachable_connect_is_one_short_line(project: PipelineConfig) -> None:
    class Refusing:
        def request(self, *_: Any, **__: Any) -> None:
            raise requests.ConnectionError(
                "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: / (Caused by "
                "NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to establish a new "
                "connection: [Errno 111] Connection refused'))"
            )

    expected = r"^Kafka Connect at http://x:1 is not reachable: Connection refused$"
    with pytest.raises(ConnectorError, match=expected):
        refusing = ConnectClient("http://x:1", session=Refusing())  # type: ignore[arg-type]
        register(project, client=refusing, preflight=None)


def test_cli_exits_1_with_one_line_when_connect_is_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIPELINE__DEBEZIUM__CONNECT_URL", "http://127.0.0.1:9")
    monkeypatch.chdir(ROOT)
    assert connector.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not reachable" in err and "Traceback" not in err


def test_stored_offsets_ahead_of_the_wal_are_a_problem_naming_the_reset() -> None:
    assert connector.offsets_ahead(None, 100) is None
    assert connector.offsets_ahead(100, 100) is None
    problem = connector.offsets_ahead((1 << 32) + 5, 0x2EB0000)
    assert problem is not None
    assert "LSN 1/5, beyond PostgreSQL's WAL at 0/2EB0000" in problem and "delete --purge" in problem


def test_stored_lsn_reads_connects_offsets_api() -> None:
    class Offsets(FakeConnect):
        def __init__(self, status: int, body: Any) -> None:
            super().__init__([None])
            self.answer = FakeResponse(status, body)

        def request(self, method: str, url: str, json: Any = None, **_: Any) -> FakeResponse:
            assert (method, url.split("8083", 1)[1]) == ("GET", "/connectors/c/offsets")
            return self.answer

    def lsn(status: int, body: Any) -> int | None:
        return client_for(Offsets(status, body)).stored_lsn("c")

    assert lsn(200, {"offsets": [{"partition": {"server": "b"}, "offset": {"lsn": 7, "txId": 1}}]}) == 7
    assert lsn(200, {"offsets": []}) is None
    assert lsn(404, {"message": "no connector"}) is None
    assert lsn(200, {"offsets": [{"partition": {}, "offset": {"lsn": "7"}}]}) is None
    assert lsn(200, ["not", "offsets"]) is None


def test_a_lost_slot_position_names_the_reset() -> None:
    trace = ("io.debezium.DebeziumException: The connector is trying to read change stream starting at "
             "PostgresOffsetContext [...], but this is no longer available on the server.")
    hint = connector._failure_hint(trace, {})
    assert "delete --purge" in hint and "make register-connector" in hint


def test_requests_wait_out_a_connect_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a connector is created or deleted, Connect answers 500 'a rebalance is expected' (or
    409) to requests that succeed a moment later; any other error is reported at once."""
    monkeypatch.setattr(connector, "REBALANCE_POLL", 0)

    class Rebalancing:
        def __init__(self, answers: list[FakeResponse]) -> None:
            self.answers = answers
            self.calls = 0

        def request(self, method: str, url: str, **_: Any) -> FakeResponse:
            self.calls += 1
            return self.answers[min(self.calls, len(self.answers)) - 1]

    busy = FakeResponse(500, {"message": "Request cannot be completed because a rebalance is expected"})
    conflict = FakeResponse(409, {"message": "Cannot complete request momentarily due to rebalance"})
    session = Rebalancing([busy, conflict, FakeResponse(200, [{"config": {"a": "b"}}])])
    client = ConnectClient("http://connect:8083", session=session)  # type: ignore[arg-type]
    assert client.request("GET", "/connectors/c/tasks").status_code == 200 and session.calls == 3

    broken = Rebalancing([FakeResponse(500, {"message": "NullPointerException"})])
    with pytest.raises(ConnectorError, match="HTTP 500: NullPointerException"):
        ConnectClient("http://connect:8083", session=broken).request("GET", "/x")  # type: ignore[arg-type]
    assert broken.calls == 1
