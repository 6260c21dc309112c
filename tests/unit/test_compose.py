"""infra/docker-compose.yml, the Dockerfile and infra/up.sh, without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (the copy that the
check-jsonschema package ships), and held to the native stack (infra/native/): same ports, same
versions, same files, same connector config but for host names, same Connect worker settings.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fake_secrets import STACK_ENV

from pipeline.config import PipelineConfig, load
from pipeline.connector import WORKER_PROPERTIES, connector_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
NATIVE = INFRA / "native"
COMPOSE_FILE = INFRA / "docker-compose.yml"
ENV = STACK_ENV
SERVICE_PORTS = {"postgres": 5432, "kafka": 9092, "connect": 8083, "cassandra": 9042}
# Long-running services without a healthcheck, and why (nothing waits on them).
NO_HEALTHCHECK = {"producer": "its sign of life is rows in PostgreSQL, which depend on Binance"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --- Loading ---------------------------------------------------------------------------------------

def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the file's << merge keys as compose does
    assert isinstance(data, dict)
    return data


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, on every string of the file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg if op and op.endswith("-") else ""

    return _VAR.sub(sub, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(raw_compose(), ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def pom_property(name: str) -> str:
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", (NATIVE / "pom.xml").read_text())
    assert match, f"infra/native/pom.xml has no <{name}>"
    return match.group(1).strip()


def properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def image_tag(service: dict[str, Any]) -> str:
    return str(service["image"]).rsplit(":", 1)[1]


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


# --- The Compose Specification ---------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(raw_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_mistake() -> None:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(resource.read_text(encoding="utf-8"))
    broken = raw_compose()
    broken["services"]["postgres"]["healthcheck"]["retrys"] = 3
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


# --- Agreement with the native stack ---------------------------------------------------------------

def native_ports() -> dict[str, int]:
    stack = (NATIVE / "stack.sh").read_text()
    pg = re.search(r"^PG_PORT=(\d+)$", stack, re.M)
    kafka = properties(NATIVE / "conf" / "kafka.properties")["advertised.listeners"]
    connect = properties(NATIVE / "conf" / "connect-distributed.properties")["listeners"]
    cassandra_yaml = (NATIVE / "conf" / "cassandra.yaml").read_text()  # not YAML until rendered (@DATA@)
    cql = re.search(r"^native_transport_port:\s*(\d+)", cassandra_yaml, re.M)
    assert pg and cql
    return {
        "postgres": int(pg.group(1)),
        "kafka": int(kafka.rsplit(":", 1)[1]),
        "connect": int(connect.rsplit(":", 1)[1]),
        "cassandra": int(cql.group(1)),
    }


def config_ports(config: PipelineConfig) -> dict[str, int]:
    return {
        "postgres": config.postgres.port,
        "kafka": int(config.kafka.bootstrap_servers[0].rsplit(":", 1)[1]),
        "connect": int(config.debezium.connect_url.rsplit(":", 1)[1].split("/")[0]),
        "cassandra": config.cassandra.port,
    }


def test_host_ports_agree_with_the_native_stack_and_the_config(services: dict[str, dict[str, Any]]) -> None:
    published = {}
    for name in SERVICE_PORTS:
        mappings = [str(p) for p in services[name].get("ports", [])]
        assert len(mappings) == 1, f"{name}: expected one published port, got {mappings}"
        host_ip, host_port, container_port = mappings[0].split(":")
        assert host_ip == "127.0.0.1", f"{name}: publish on loopback only, as the native stack listens"
        assert host_port == container_port
        published[name] = int(host_port)
    assert published == SERVICE_PORTS
    assert native_ports() == SERVICE_PORTS
    assert config_ports(load(ROOT / "config" / "pipeline.yaml", ENV)) == SERVICE_PORTS
    assert config_ports(PipelineConfig()) == SERVICE_PORTS


def test_kafka_advertises_the_host_listener_the_config_expects(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kafka"])
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["HOST"] == PipelineConfig().kafka.bootstrap_servers[0]
    assert advertised["INTERNAL"] == environment(services["consumer"])["PIPELINE__KAFKA__BOOTSTRAP_SERVERS"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert environment(services["connect"])["BOOTSTRAP_SERVERS"] == advertised["INTERNAL"]


def test_versions_agree_with_the_native_stack(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert image_tag(services["kafka"]) == pom_property("kafka.version")
    assert services["connect"]["image"].startswith("quay.io/debezium/connect:")
    assert image_tag(services["connect"]) == pom_property("debezium.version")
    assert services["cassandra"]["image"].startswith("cassandra:")
    assert image_tag(services["cassandra"]) == pom_property("cassandra.version")
    assert image_tag(services["postgres"]).split(".")[0] == "17"


def test_the_connector_registered_from_compose_equals_the_native_one_but_for_the_host(
    services: dict[str, dict[str, Any]],
) -> None:
    register = services["register-connector"]
    assert register["command"][-1] == "register"
    assert register["command"][:3] == ["python", "-m", "pipeline.connector"]
    compose_config = load(ROOT / "config" / "pipeline.yaml", {**ENV, **environment(register)})
    native_config = load(ROOT / "config" / "pipeline.yaml", ENV)
    in_compose, native = connector_config(compose_config), connector_config(native_config)
    differing = {k for k in in_compose.keys() | native.keys() if in_compose.get(k) != native.get(k)}
    assert differing == {"database.hostname"}
    assert in_compose["database.hostname"] == "postgres"
    assert compose_config.debezium.connect_url == "http://connect:8083"
    assert compose_config.kafka.bootstrap_servers == ("kafka:19092",)


def test_app_services_reach_every_service_by_its_compose_name(services: dict[str, dict[str, Any]]) -> None:
    for name in ("producer", "consumer", "register-connector", "cassandra-init"):
        config = load(ROOT / "config" / "pipeline.yaml", {**ENV, **environment(services[name])})
        assert config.postgres.host == "postgres", name
        assert config.kafka.bootstrap_servers == ("kafka:19092",), name
        assert config.debezium.connect_url == "http://connect:8083", name
        assert config.cassandra.contact_points == ("cassandra",), name


def worker_properties(env: dict[str, str]) -> dict[str, str]:
    """The debezium/connect image turns CONNECT_A_B=v into a.b=v in connect-distributed.properties."""
    prefix = "CONNECT_"
    return {k[len(prefix):].lower().replace("_", "."): v for k, v in env.items() if k.startswith(prefix)}


def test_connect_workers_resolve_the_password_reference(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["connect"])
    assert worker_properties(env).items() >= WORKER_PROPERTIES.items()
    assert env["DEBEZIUM_PASSWORD"] == ENV["DEBEZIUM_PASSWORD"]
    assert worker_properties(env)["topic.creation.enable"] == "true"
    native = properties(NATIVE / "conf" / "connect-distributed.properties")
    missing = {k: v for k, v in WORKER_PROPERTIES.items() if native.get(k) != v}
    assert not missing, f"infra/native/conf/connect-distributed.properties lacks {missing}"


def test_connect_workers_share_group_and_storage_topics(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["connect"])
    native = properties(NATIVE / "conf" / "connect-distributed.properties")
    assert env["GROUP_ID"] == native["group.id"]
    assert env["CONFIG_STORAGE_TOPIC"] == native["config.storage.topic"]
    assert env["OFFSET_STORAGE_TOPIC"] == native["offset.storage.topic"]
    assert env["STATUS_STORAGE_TOPIC"] == native["status.storage.topic"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repository-relative source, for the file bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            out[target] = (INFRA / source).resolve().relative_to(ROOT).as_posix()
    return out


def test_the_native_stacks_files_are_the_ones_mounted(services: dict[str, dict[str, Any]]) -> None:
    pg = mounts(services["postgres"])
    command = services["postgres"]["command"]
    conf_target = next(arg.split("=", 1)[1] for arg in command if arg.startswith("config_file="))
    assert pg[conf_target] == "infra/postgresql.conf"
    init_scripts = [src for dst, src in pg.items() if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert init_scripts == ["infra/init-db.sql"]
    init = mounts(services["cassandra-init"])
    cql_target = services["cassandra-init"]["command"][-1]
    applier_target = services["cassandra-init"]["command"][1]
    assert init[cql_target] == "infra/cassandra-init.cql"
    assert init[applier_target] == "infra/native/apply_cql.py"
    # The native stack reads the very same files by default.
    stack = (NATIVE / "stack.sh").read_text()
    assert "PG_CONF_FILE=${PG_CONF_FILE:-$REPO_DIR/infra/postgresql.conf}" in stack
    assert "PG_INIT_SQL=${PG_INIT_SQL:-$REPO_DIR/infra/init-db.sql}" in stack
    assert "CASSANDRA_INIT_CQL=${CASSANDRA_INIT_CQL:-$REPO_DIR/infra/cassandra-init.cql}" in stack
    assert '"$NATIVE_DIR/apply_cql.py"' in stack
    for service in services.values():
        for source in mounts(service).values():
            assert (ROOT / source).is_file(), f"{source} is mounted but does not exist"


# --- Secrets ---------------------------------------------------------------------------------------

def test_no_literal_secret_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    assert "change-me" not in text
    for service_name, service in raw_compose()["services"].items():
        for key, value in environment(service).items():
            if re.search(r"(PASSWORD|SECRET)$", key):
                match = re.fullmatch(r"\$\{([A-Z_]+):\?[^}]+\}", value)
                assert match, f"{service_name}.{key} must be ${{{key}:?...}} from .env, got {value!r}"
                assert match.group(1) == key
    names = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {name for name, _, _ in _VAR.findall(text)} <= names
    env_file = ROOT / ".env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            _, _, value = line.partition("=")
            if len(value.strip()) >= 8:
                assert value.strip() not in text, "a value from .env is written in the compose file"


def test_every_app_service_gets_the_passwords_the_config_reads(services: dict[str, dict[str, Any]]) -> None:
    lines = (ROOT / "config" / "pipeline.yaml").read_text().splitlines()
    settings = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", settings))
    assert needed
    for name in ("producer", "consumer", "register-connector", "cassandra-init"):
        assert needed <= environment(services[name]).keys(), name
    postgres_env = environment(services["postgres"])
    assert {"POSTGRES_PASSWORD", "PRODUCER_PASSWORD", "DEBEZIUM_PASSWORD"} <= postgres_env.keys()
    assert postgres_env["POSTGRES_DB"] == PipelineConfig().postgres.dbname


def test_a_missing_password_stops_compose() -> None:
    with pytest.raises(AssertionError, match="DEBEZIUM_PASSWORD"):
        interpolate(raw_compose(), {k: v for k, v in ENV.items() if k != "DEBEZIUM_PASSWORD"})


# --- Start-up order: health, not sleeps ------------------------------------------------------------

def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if is_one_shot(service) or name in NO_HEALTHCHECK:
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert "sleep" not in json.dumps(check["test"])


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            condition = spec["condition"]
            if is_one_shot(services[target]):
                assert condition == "service_completed_successfully", f"{name} -> {target}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}"
                assert "healthcheck" in services[target], f"{name} waits on {target}, without healthcheck"
        assert "sleep" not in json.dumps(service.get("command", "")), name


def test_one_shot_services_are_awaited_by_a_long_running_one(services: dict[str, dict[str, Any]]) -> None:
    """Otherwise `docker compose up --wait` counts their exit as a failure."""
    one_shots = {name for name, s in services.items() if is_one_shot(s)}
    assert one_shots == {"cassandra-init", "register-connector"}
    awaited = {
        target
        for s in services.values() if not is_one_shot(s)
        for target, spec in (s.get("depends_on") or {}).items()
        if spec["condition"] == "service_completed_successfully"
    }
    assert one_shots <= awaited


def test_app_services_run_the_repository_image(services: dict[str, dict[str, Any]]) -> None:
    for name in ("producer", "consumer", "register-connector", "cassandra-init"):
        build = services[name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
    assert services["consumer"]["command"][:3] == ["python", "-m", "consumer"]
    assert services["producer"]["command"][:3] == ["python", "-m", "producer"]
    # Healthy before any role exists (cassandra-init creates it afterwards), so no login in the check.
    assert services["cassandra"]["healthcheck"]["test"][-1].startswith("nodetool statusbinary")
    assert "command" not in services["cassandra"], "cassandra keeps its image's own command"


# --- Dockerfile -------------------------------------------------------------------------------------

def test_dockerfile_builds_a_slim_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "pip install" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored and ".stack" in ignored


def test_dockerfile_copies_what_the_services_run() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = {part for line in re.findall(r"^COPY (.+)$", text, re.M) for part in line.split()[:-1]}
    assert {"pyproject.toml", "pipeline", "producer", "consumer", "config"} <= copied
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not copied & ignored


# --- infra/up.sh ------------------------------------------------------------------------------------

def fake_tree(tmp_path: Path, docker_works: bool) -> tuple[Path, dict[str, str]]:
    """A copy of up.sh beside a fake native stack, docker and python that log their arguments."""
    (tmp_path / "infra" / "native").mkdir(parents=True)
    (tmp_path / "infra" / "up.sh").write_text((INFRA / "up.sh").read_text())
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"

    def script(path: Path, body: str) -> None:
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    script(tmp_path / "infra" / "native" / "stack.sh", f'echo "stack.sh $*" >>{log}\n')
    script(bin_dir / "python-fake", f'echo "python $* DEBEZIUM_PASSWORD=$DEBEZIUM_PASSWORD" >>{log}\n')
    if docker_works:
        script(bin_dir / "docker", f'echo "docker $*" >>{log}\n')
    else:
        script(bin_dir / "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PY": str(bin_dir / "python-fake"), "HOME": str(tmp_path)}
    return log, env


def run_up(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(tmp_path / "infra" / "up.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_up_without_a_docker_engine_runs_the_native_stack_then_registers(tmp_path: Path) -> None:
    log, env = fake_tree(tmp_path, docker_works=False)
    proc = run_up(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "stack: native (no Docker engine)"
    calls = log.read_text().splitlines()
    assert calls[0] == "stack.sh up"
    assert calls[1] == ("python -m pipeline.connector --config config/pipeline.yaml register "
                        f"DEBEZIUM_PASSWORD={ENV['DEBEZIUM_PASSWORD']}")
    for action in ("down", "status", "wipe"):
        log.unlink()
        proc = run_up(tmp_path, env, action)
        assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "stack: native (recorded by make up)"
        assert log.read_text().splitlines() == [f"stack.sh {action}"]


def test_up_with_a_docker_engine_runs_compose(tmp_path: Path) -> None:
    log, env = fake_tree(tmp_path, docker_works=True)
    proc = run_up(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "stack: docker compose (Docker engine answers)"
    up = log.read_text().splitlines()[-1]
    assert up.startswith("docker compose -f infra/docker-compose.yml --env-file .env up -d --build --wait")
    log.unlink()
    assert run_up(tmp_path, env, "status").returncode == 0
    assert log.read_text().splitlines()[-1].endswith("--env-file .env ps --all")
    log.unlink()
    assert run_up(tmp_path, env, "wipe").returncode == 0
    assert log.read_text().splitlines()[-1].endswith("down --volumes --remove-orphans")
    log.unlink()
    assert run_up(tmp_path, {**env, "STACK": "native"}, "down").stdout.startswith("stack: native")


def mode_file(tmp_path: Path) -> Path:
    return tmp_path / ".stack" / "mode"


def test_down_logs_wipe_and_status_follow_the_stack_up_chose(tmp_path: Path) -> None:
    """STACK=native make up on a host with Docker: the later commands must not turn to compose."""
    log, env = fake_tree(tmp_path, docker_works=True)
    assert run_up(tmp_path, {**env, "STACK": "native"}).returncode == 0
    assert mode_file(tmp_path).read_text() == "native\n"
    for action in ("down", "status", "logs", "wipe"):
        log.unlink(missing_ok=True)
        proc = run_up(tmp_path, env, action)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "stack: native (recorded by make up)", action
        calls = log.read_text().splitlines()
        assert not [c for c in calls if c.startswith("docker compose")], (action, calls)
        assert calls[-1] == f"stack.sh {'logs -f' if action == 'logs' else action}"
    # Wiped: nothing recorded any more, so the next command chooses afresh.
    assert not mode_file(tmp_path).exists()
    assert run_up(tmp_path, env, "down").stdout.startswith("stack: docker compose (Docker engine answers)")


def test_a_recorded_compose_stack_is_stopped_by_compose_even_without_docker_now(tmp_path: Path) -> None:
    log, env = fake_tree(tmp_path, docker_works=True)
    assert run_up(tmp_path, env).returncode == 0
    assert mode_file(tmp_path).read_text() == "compose\n"
    _, env_no_docker = fake_tree(tmp_path / "other", docker_works=False)
    log.unlink()
    # Docker stopped answering: down still means compose (and fails loudly), never the native stack.
    proc = run_up(tmp_path, {**env_no_docker, "PY": env["PY"]}, "down")
    assert proc.stdout.startswith("stack: docker compose (recorded by make up)")
    assert not log.exists() or not [c for c in log.read_text().splitlines() if c.startswith("stack.sh")]


def test_an_explicit_stack_wins_over_the_recorded_one(tmp_path: Path) -> None:
    log, env = fake_tree(tmp_path, docker_works=True)
    assert run_up(tmp_path, env).returncode == 0  # compose recorded
    log.unlink()
    proc = run_up(tmp_path, {**env, "STACK": "native"}, "down")
    assert proc.stdout.splitlines()[0] == "stack: native (STACK=native)"
    assert log.read_text().splitlines() == ["stack.sh down"]
    assert mode_file(tmp_path).read_text() == "compose\n"  # only `up` records


def test_a_garbled_record_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _, env = fake_tree(tmp_path, docker_works=False)
    mode_file(tmp_path).parent.mkdir()
    mode_file(tmp_path).write_text("kubernetes\n")
    proc = run_up(tmp_path, env, "down")
    assert proc.returncode != 0
    assert "mode says 'kubernetes'" in proc.stderr and proc.stderr.count("\n") == 1


def test_the_native_stack_records_itself_when_started_directly() -> None:
    """The tests start the native stack with stack.sh, not up.sh: it records `native` too."""
    text = (NATIVE / "stack.sh").read_text()
    up = text[text.index("cmd_up() {"):text.index("cmd_down() {")]
    assert 'echo native >"$STACK_DIR/mode"' in up


def test_up_rejects_an_unknown_action(tmp_path: Path) -> None:
    _, env = fake_tree(tmp_path, docker_works=False)
    proc = run_up(tmp_path, env, "restart")
    assert proc.returncode != 0 and "unknown action" in proc.stderr


def test_up_sh_passes_shellcheck_when_available() -> None:
    if not any(os.access(Path(p) / "shellcheck", os.X_OK) for p in os.environ.get("PATH", "").split(":")):
        subprocess.run(["bash", "-n", str(INFRA / "up.sh")], check=True)
        return
    proc = subprocess.run(["shellcheck", str(INFRA / "up.sh")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


# --- Cassandra authentication ----------------------------------------------------------------------

def test_cassandra_authentication_is_set_the_same_way_in_both_stacks(
    services: dict[str, dict[str, Any]],
) -> None:
    stack = (NATIVE / "stack.sh").read_text()
    native = re.search(r'^CASSANDRA_SETTINGS="([^"]+)"', stack, re.M)
    assert native, "stack.sh defines CASSANDRA_SETTINGS"
    assert "$CASSANDRA_SETTINGS" in stack.split("start_cassandra() {", 1)[1].split("\n}", 1)[0]
    compose_opts = environment(services["cassandra"])["JVM_EXTRA_OPTS"]
    assert compose_opts.split() == native.group(1).split()
    assert "-Dcassandra.settings.authenticator=PasswordAuthenticator" in compose_opts.split()
    init = environment(services["cassandra-init"])
    assert init["CASSANDRA_PASSWORD"] == ENV["CASSANDRA_PASSWORD"]
    # The role apply_cql.py creates is the one the programs log in as.
    assert PipelineConfig().cassandra.username is None  # the default config has none: pipeline.yaml sets it
    text = (ROOT / "config" / "pipeline.yaml").read_text()
    assert "username: ${CASSANDRA_USER:-binance}" in text and "password: ${CASSANDRA_PASSWORD}" in text
    assert 'os.environ.get("CASSANDRA_USER") or "binance"' in (NATIVE / "apply_cql.py").read_text()


def test_the_env_generator_fills_empty_and_missing_passwords_and_keeps_set_ones(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    kept = STACK_ENV["PRODUCER_PASSWORD"]
    example = (ROOT / ".env.example").read_text()
    env.write_text(re.sub(r"^PRODUCER_PASSWORD=$", f"PRODUCER_PASSWORD={kept}", example, flags=re.M)
                   .replace("CASSANDRA_PASSWORD=\n", ""))
    subprocess.run(["bash", str(INFRA / "ensure-env.sh"), str(env)], check=True, capture_output=True)
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", env.read_text(), re.M))
    assert values["PRODUCER_PASSWORD"] == kept
    generated = [values[n] for n in ("POSTGRES_PASSWORD", "DEBEZIUM_PASSWORD", "CASSANDRA_PASSWORD")]
    assert all(len(v) >= 20 for v in generated) and len(set(generated)) == 3
    before = env.read_text()
    subprocess.run(["bash", str(INFRA / "ensure-env.sh"), str(env)], check=True, capture_output=True)
    assert env.read_text() == before   # a second run changes nothing


def test_env_example_and_the_env_generator_name_the_same_passwords() -> None:
    generated = re.search(r"for name in ([A-Z_ ]+); do", (INFRA / "ensure-env.sh").read_text())
    assert generated
    example = set(re.findall(r"^([A-Z_]+_PASSWORD)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(generated.group(1).split()) == example
