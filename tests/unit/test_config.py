from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from fake_secrets import PIPELINE_ENV, fake_secret

from pipeline.config import ConfigError, PipelineConfig, Secret, load, to_plain
from pipeline.schema import build

ROOT = Path(__file__).resolve().parents[2]
ENV = PIPELINE_ENV


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def problems(tmp_path: Path, data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, data), {**ENV, **(env or {})})
    return info.value.problems


def test_project_config_loads() -> None:
    config = load(ROOT / "config" / "pipeline.yaml", ENV)
    assert config.binance.symbols
    assert config.postgres.password.reveal() == ENV["PRODUCER_PASSWORD"]
    assert config.debezium.password.reveal() == ENV["DEBEZIUM_PASSWORD"]
    assert dataclasses.is_dataclass(config)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), {})
    assert config == PipelineConfig()
    assert config.binance.endpoints.klines.limit == 100


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(write(tmp_path, ""), {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.binance.base_url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"binance": {"endpoints": {"klines": {"limit": "abc"}}}},
         'binance.endpoints.klines.limit: expected an integer 1..1000, got "abc"'),
        ({"binance": {"endpoints": {"klines": {"limit": 1001}}}},
         "binance.endpoints.klines.limit: expected an integer 1..1000, got 1001"),
        ({"binance": {"endpoints": {"klines": {"limit": 2.5}}}},
         "binance.endpoints.klines.limit: expected an integer 1..1000, got 2.5"),
        ({"binance": {"endpoints": {"klines": {"intervals": ["7m"]}}}},
         "binance.endpoints.klines.intervals[0]: expected one of"),
        ({"binance": {"symbols": []}}, "binance.symbols: expected a list of at least 1 item(s), got 0"),
        ({"binance": {"symbols": "BTCUSDT"}}, 'binance.symbols: expected a list, got "BTCUSDT"'),
        ({"binance": {"symbols": ["btc-usdt"]}}, 'binance.symbols[0]: expected a string matching'),
        ({"binance": {"symbols": ["BTCUSDT", "BTCUSDT"]}}, "binance.symbols: duplicate symbol BTCUSDT"),
        ({"binance": {"endpoints": {"klines": {"intervals": ["1m", "1h", "1m"]}}}},
         "binance.endpoints.klines.intervals: expected each interval once, got 1m more than once in "
         "['1m', '1h', '1m']"),
        ({"binance": {"base_url": "ftp://x"}}, "binance.base_url: expected a string matching"),
        ({"binance": {"weight_budget_per_minute": 0}},
         "binance.weight_budget_per_minute: expected an integer 1..6000, got 0"),
        ({"binance": {"read_timeout_seconds": True}}, "binance.read_timeout_seconds: expected a number"),
        ({"binance": {"read_timeout_seconds": ".nan"}}, "binance.read_timeout_seconds: expected a number"),
        ({"binance": {"bogus": 1}}, "binance.bogus: unknown key (known keys: "),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"postgres": {"port": 70000}}, "postgres.port: expected an integer 1..65535, got 70000"),
        ({"postgres": {"sslmode": "maybe"}}, 'postgres.sslmode: expected one of "disable"'),
        ({"postgres": []}, "postgres: expected a mapping, got a list"),
        ({"kafka": {"bootstrap_servers": ["nohostport"]}}, "kafka.bootstrap_servers[0]: expected a string"),
        ({"debezium": {"decimal_handling_mode": "float"}}, "debezium.decimal_handling_mode: expected one of"),
        ({"debezium": {"schemas_enable": "yes please"}},
         'debezium.schemas_enable: expected true or false, got "yes please"'),
        ({"cassandra": {"keyspace": "Bad-Name"}}, "cassandra.keyspace: expected a string matching"),
        ({"consumer": {"metrics_port": -1}}, "consumer.metrics_port: expected an integer 0..65535, got -1"),
        ({"mappings": {"a": 1}}, "mappings: expected a list, got a mapping"),
        ({"mappings": [{"table": "trades"}]}, "mappings[0].target: required key is missing"),
        ([1, 2], "expected a mapping of sections at the top level"),
        ("binance: [unclosed", "not valid YAML"),
    ],
)
def test_bad_values_name_their_path(tmp_path: Path, data: object, expected: str) -> None:
    found = problems(tmp_path, data)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, {"postgres": {"port": "x", "host": 5, "bogus": 1}, "kafka": {"nope": 1}})
    assert len(found) == 4, found
    assert {p.split(":")[0] for p in found} == {
        "postgres.port", "postgres.host", "postgres.bogus", "kafka.nope"
    }


@pytest.mark.parametrize(
    ("yaml_value", "found"),
    [("0123", "83"), ("12_34", "1234"), ("0x1F", "31"), ("1e3", '"1e3"'), ("3.50", "3.5"), ("true", "True"),
     ("2024-01-01", "datetime.date(2024, 1, 1)")],
)
def test_text_settings_refuse_what_yaml_read_as_a_number(tmp_path: Path, yaml_value: str, found: str) -> None:
    # YAML 1.1 reads 0123 as octal 83: str() of it would silently be a different user or password.
    text = f"postgres:\n  password: {yaml_value}\n  user: {yaml_value}\n"
    if found.startswith('"'):  # PyYAML reads 1e3 (no dot) as a string: accepted as written
        assert load(write(tmp_path, text), ENV).postgres.password.reveal() == yaml_value
        return
    kind = {"True": "a boolean", "datetime.date(2024, 1, 1)": "a date"}.get(found, "a number")
    assert sorted(problems(tmp_path, text)) == [
        f"postgres.password: expected a string (quote it), got {kind} (not shown: a secret)",
        f"postgres.user: expected a string (quote it), got {found}",
    ]


def test_quoted_numbers_and_lists_of_strings_stay_strings(tmp_path: Path) -> None:
    digits = f"0{secrets.randbelow(10**9)}"   # leading zero: YAML 1.1 would read it unquoted as octal
    config = load(write(tmp_path, f"postgres:\n  password: '{digits}'\n  user: \"12_34\"\n"), ENV)
    assert (config.postgres.password.reveal(), config.postgres.user) == (digits, "12_34")
    found = problems(tmp_path, "kafka:\n  bootstrap_servers: [1234]\ncassandra:\n  contact_points: {a: 1}\n")
    assert "kafka.bootstrap_servers[0]: expected a string (quote it), got 1234" in found
    assert "cassandra.contact_points: expected a list, got a mapping" in found


def test_a_file_that_is_not_utf8_names_the_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("postgres:\n  host: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(path, ENV)
    assert info.value.problems == [
        f"{path}: not valid UTF-8 at byte offset 21 (line 2): invalid continuation byte; "
        "save the file as UTF-8"
    ]
    proc = run_cli("--config", str(path), "check", env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: not valid UTF-8 at byte offset 21" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("binance", "expected"),
    [
        ({"weight_budget_per_minute": 200, "endpoints": {"depth": {"limit": 5000}}},
         ["binance.endpoints.depth.limit: a depth request with limit 5000 weighs 250, more than "
          "weight_budget_per_minute 200: expected a limit of at most 1000, got 5000"]),
        ({"weight_budget_per_minute": 20},
         ["binance.weight_budget_per_minute: expected an integer >= 25 (one trades request weighs 25), "
          "got 20"]),
        ({"weight_budget_per_minute": 4, "endpoints": {"depth": {"limit": 100}}},
         ["binance.endpoints.depth.limit: a depth request with limit 100 weighs 5, more than "
          "weight_budget_per_minute 4: expected a larger weight_budget_per_minute, got 100",
          "binance.weight_budget_per_minute: expected an integer >= 25 (one trades request weighs 25), "
          "got 4"]),
    ],
)
def test_a_request_heavier_than_the_weight_budget_is_a_config_error(
    tmp_path: Path, binance: dict[str, object], expected: list[str]
) -> None:
    assert problems(tmp_path, {"binance": binance}) == expected


def test_requests_that_fit_the_weight_budget_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, {"binance": {"weight_budget_per_minute": 250,
                                               "endpoints": {"depth": {"limit": 5000}}}}), ENV)
    assert config.binance.endpoints.depth.limit == 5000
    assert load(write(tmp_path, {"binance": {"weight_budget_per_minute": 25}}), ENV).binance.endpoints


def test_an_environment_override_is_checked_against_the_budget_too(tmp_path: Path) -> None:
    found = problems(tmp_path, "", {"PIPELINE__BINANCE__ENDPOINTS__DEPTH__LIMIT": "5000",
                                    "PIPELINE__BINANCE__WEIGHT_BUDGET_PER_MINUTE": "100"})
    assert [p.split(":")[0] for p in found] == ["binance.endpoints.depth.limit"]


def test_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path, {"postgres": {"password": "${PW}", "host": "${PGHOST:-db.local}",
                                         "user": "pre-${WHO}-post"}})
    pw = fake_secret()
    config = load(path, {"PW": pw, "WHO": "me"})
    assert config.postgres.password.reveal() == pw
    assert config.postgres.host == "db.local"
    assert config.postgres.user == "pre-me-post"


@pytest.mark.parametrize("value", ["${PW:-${OTHER}}", "x${PW:-${OTHER:-y}}z"])
def test_a_variable_inside_a_default_is_refused(tmp_path: Path, value: str) -> None:
    # Unrefused, ${PW:-${OTHER}} with PW unset would be the literal text "${OTHER}", silently.
    found = problems(tmp_path, {"postgres": {"password": value, "host": value}}, {"OTHER": "o"})
    expected = "expected a ${PW:-default} whose default has no ${...} (nested defaults are not supported)"
    assert sorted(found) == [f'postgres.host: {expected}, got "{value}"',
                             f"postgres.password: {expected}, got a default with ${{...}} in it"]  # a secret


def test_a_password_written_as_a_number_is_not_echoed(tmp_path: Path) -> None:
    digits = str(10**9 + secrets.randbelow(9 * 10**9))   # ten digits, no leading zero: a YAML integer
    found = problems(tmp_path, f"postgres:\n  password: {digits}\nkafka:\n  sasl_password: 017\n")
    assert found == ["postgres.password: expected a string (quote it), got a number (not shown: a secret)",
                     "kafka.sasl_password: expected a string (quote it), got a number (not shown: a secret)"]
    assert not any(digits in p or "15" in p for p in found)


def test_missing_variable_names_path_and_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, {"postgres": {"password": "${NOT_SET_ANYWHERE}"}})
    assert found == [
        "postgres.password: environment variable NOT_SET_ANYWHERE is not set (and ${NOT_SET_ANYWHERE} "
        "has no :-default)"
    ]


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "PIPELINE__BINANCE__BASE_URL": "http://127.0.0.1:8090",
        "PIPELINE__BINANCE__SYMBOLS": "BTCUSDT, ETHUSDT",
        "PIPELINE__POSTGRES__PORT": "55432",
        "PIPELINE__BINANCE__ENDPOINTS__KLINES__INTERVALS": "[1m, 5m]",
        "PIPELINE__DEBEZIUM__SCHEMAS_ENABLE": "false",
        "PIPELINE__POSTGRES__PASSWORD": "0123",
    }
    config = load(write(tmp_path, {"postgres": {"port": 1}}), env)
    assert config.binance.base_url == "http://127.0.0.1:8090"
    assert config.binance.symbols == ("BTCUSDT", "ETHUSDT")
    assert config.postgres.port == 55432
    assert config.binance.endpoints.klines.intervals == ("1m", "5m")
    assert config.debezium.schemas_enable is False
    assert config.postgres.password.reveal() == "0123"  # a string setting stays a string


def test_bad_environment_override_names_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, "", {"PIPELINE__POSTGRES__PORTT": "1", "PIPELINE__POSTGRES__PORT": "x"})
    assert "postgres.portt (from PIPELINE__POSTGRES__PORTT): no such setting" in found
    assert 'postgres.port: expected an integer 1..65535, got "x"' in found


def test_secrets_are_masked(tmp_path: Path) -> None:
    pw = fake_secret()
    config = load(write(tmp_path, {"postgres": {"password": pw}}), {})
    assert pw not in repr(config)
    assert pw not in str(to_plain(config))
    assert to_plain(config, reveal=True)["postgres"]["password"] == pw
    assert str(Secret("x")) == "******"


def test_decimal_settings_are_exact() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithDecimal:
        fee: Decimal = Decimal("0")

    assert build(WithDecimal, {"fee": "0.00000001"}).fee == Decimal("0.00000001")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})}, check=False,
    )


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, {"binance": {"endpoints": {"klines": {"limit": "abc"}}}})
    proc = run_cli("--config", str(path), "check", env=ENV)
    assert proc.returncode == 2
    assert 'binance.endpoints.klines.limit: expected an integer 1..1000, got "abc"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("--config", str(tmp_path / "nope.yaml"), "check")
    assert proc.returncode == 2
    assert "cannot read config file" in proc.stderr


def test_cli_get_masks_a_secret_unless_revealed() -> None:
    masked = run_cli("get", "postgres.password", env=ENV)
    assert (masked.returncode, masked.stdout) == (0, "******\n"), masked.stderr
    revealed = run_cli("get", "postgres.password", "--reveal", env=ENV)
    assert (revealed.returncode, revealed.stdout) == (0, ENV["PRODUCER_PASSWORD"] + "\n"), revealed.stderr
    port = run_cli("get", "postgres.port", env=ENV)
    assert port.stdout == "5432\n"
    assert run_cli("get", "postgres.nope", env=ENV).returncode == 2


def test_cli_show_masks_secrets() -> None:
    proc = run_cli("show", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert ENV["PRODUCER_PASSWORD"] not in proc.stdout and ENV["DEBEZIUM_PASSWORD"] not in proc.stdout
    assert "******" in proc.stdout
