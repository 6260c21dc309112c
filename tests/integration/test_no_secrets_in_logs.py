"""No configured password ever shows: not in the producer's DEBUG log, not in what the `pipeline` tools
print, not in a config error, not in the native stack's logs, not in the repository.

The passwords are PRODUCER_PASSWORD, DEBEZIUM_PASSWORD, POSTGRES_PASSWORD and CASSANDRA_PASSWORD (the
environment, or .env: random per checkout). A leak is reported by variable name and place, with the
value masked, so a failing run does not leak it into the test report in turn.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import yaml
from test_producer_e2e import cli_env, fresh_symbols

from pipeline.config import ConfigError, PipelineConfig, load
from producer.simulator import Fault, start_simulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "config" / "pipeline.yaml"
PASSWORD_VARS = ("PRODUCER_PASSWORD", "DEBEZIUM_PASSWORD", "POSTGRES_PASSWORD", "CASSANDRA_PASSWORD")
MASK = "******"
# Where the native stack logs (infra/native/stack.sh): its own directory, and PostgreSQL's cluster log.
STACK_LOGS = ROOT / ".stack" / "logs"
POSTGRES_LOGS = Path("/var/log/postgresql")


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    values = {name: os.environ.get(name, "") for name in PASSWORD_VARS}
    short = [name for name, value in values.items() if len(value) < 8]
    assert not short, f"{short}: not set, or too short for a search to mean anything (see .env)"
    return values


def leaks(text: str, passwords: Mapping[str, str], where: str) -> list[str]:
    """Each line holding a password, as '<where> line N: VAR in: <the line, value masked>'."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for name, value in passwords.items():
            if value in line:
                masked = line
                for other in passwords.values():
                    masked = masked.replace(other, MASK)
                found.append(f"{where} line {number}: {name} in: {masked[:300]}")
    return found


def run(args: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


# --- the programs --------------------------------------------------------------------------------


@pytest.fixture
def debug_producer_env(pg_config: PipelineConfig) -> Iterator[tuple[dict[str, str], list[str]]]:
    """`python -m producer` settings at DEBUG against a simulator that fails now and then (error paths are
    where a password would be formatted into a message)."""
    symbols = fresh_symbols()
    server, base_url = start_simulator(port=0, seed=9, symbols=symbols)
    server.sim.add_faults([
        Fault.parse({"mode": "503", "endpoint": "/api/v3/ticker/price", "symbol": symbols[0]}),
        Fault.parse({"mode": "malformed", "endpoint": "/api/v3/depth"}),
        Fault.parse({"mode": "garbage_numbers", "endpoint": "/api/v3/trades", "symbol": symbols[1]}),
        Fault.parse({"mode": "error", "status": 400, "code": -1100, "msg": "Illegal characters found.",
                     "endpoint": "/api/v3/ticker/24hr", "symbol": symbols[1]}),
    ])
    env = cli_env(pg_config, base_url, symbols, PIPELINE__PRODUCER__LOG_LEVEL="DEBUG",
                  PIPELINE__BINANCE__MAX_ATTEMPTS="2", PIPELINE__BINANCE__BACKOFF_INITIAL_SECONDS="0.01",
                  PIPELINE__BINANCE__BACKOFF_MAX_SECONDS="0.05")
    # The password as a deployment gives it: ${PRODUCER_PASSWORD} in config/pipeline.yaml.
    del env["PIPELINE__POSTGRES__PASSWORD"]
    try:
        yield env, symbols
    finally:
        server.stop()


def test_a_debug_producer_cycle_logs_no_password(
    debug_producer_env: tuple[dict[str, str], list[str]], passwords: dict[str, str]
) -> None:
    env, _ = debug_producer_env
    proc = run(["-m", "producer", "--once"], env)
    text = output(proc)
    assert proc.returncode == 0, text
    # It did run a whole cycle at DEBUG, through the faults.
    assert " DEBUG " in text and "producer: ticker_24hr: symbols=" in text, text[-2000:]
    assert "rejected record: trades" in text and "HTTP 503" in text
    assert leaks(text, passwords, "python -m producer --once") == []


def test_a_producer_that_cannot_log_in_does_not_say_with_what(
    debug_producer_env: tuple[dict[str, str], list[str]], passwords: dict[str, str]
) -> None:
    env, _ = debug_producer_env
    wrong = "wrong-" + secrets.token_urlsafe(16)
    refused = run(["-m", "producer", "--once"], {**env, "PRODUCER_PASSWORD": wrong})
    text = output(refused)
    assert refused.returncode == 1, text
    assert text.count("load FAILED: cannot connect") == 5 and "password authentication failed" in text
    assert leaks(text, {**passwords, "the wrong PRODUCER_PASSWORD": wrong}, "wrong password") == []
    unreachable = run(["-m", "producer", "--once"], {**env, "PIPELINE__POSTGRES__PORT": "1"})
    text = output(unreachable)
    assert unreachable.returncode == 1 and "load FAILED: cannot connect" in text, text
    assert leaks(text, passwords, "no PostgreSQL") == []


@pytest.mark.parametrize(
    ("args", "shows"),
    [
        (["-m", "pipeline", "show"], '"password": "******"'),
        (["-m", "pipeline", "check"], ": ok"),
        (["-m", "pipeline.connector", "show"], '"database.password": "${env:DEBEZIUM_PASSWORD}"'),
        (["-m", "pipeline.connector", "status"], "binance-postgres"),
        (["-m", "pipeline.status"], "postgres"),
    ],
    ids=["pipeline show", "pipeline check", "connector show", "connector status", "status"],
)
def test_the_pipeline_tools_print_no_password(
    postgres: PipelineConfig, passwords: dict[str, str], args: list[str], shows: str
) -> None:
    proc = run(args, os.environ, timeout=120)
    text = output(proc)
    assert shows in text, text[-2000:]  # it ran, and printed what it is for
    assert leaks(text, passwords, "python " + " ".join(args)) == []


# --- config errors -----------------------------------------------------------------------------------


def _bad_configs(passwords: Mapping[str, str]) -> list[tuple[str, str, dict[str, str], str]]:
    """(what, YAML text, extra environment, the key the error must name)."""
    base = CONFIG_PATH.read_text()
    producer_pw, debezium_pw = passwords["PRODUCER_PASSWORD"], passwords["DEBEZIUM_PASSWORD"]
    postgres_pw = passwords["POSTGRES_PASSWORD"]
    assert "  password: ${PRODUCER_PASSWORD}\n" in base and "  password: ${DEBEZIUM_PASSWORD}\n" in base

    def with_(old: str, new: str, text: str = base) -> str:
        return text.replace(old, new, 1)

    return [
        ("a list for a Secret",
         with_("password: ${PRODUCER_PASSWORD}", 'password: ["${PRODUCER_PASSWORD}"]'),
         {}, "postgres.password"),
        ("a mapping for a Secret",
         with_("password: ${DEBEZIUM_PASSWORD}", "password: {value: '${DEBEZIUM_PASSWORD}'}"),
         {}, "debezium.password"),
        ("a literal list for an optional Secret",
         with_("kafka:\n", f"kafka:\n  sasl_password: [{postgres_pw}]\n"),
         {}, "kafka.sasl_password"),
        ("a misspelt key",
         with_("password: ${PRODUCER_PASSWORD}", f"pasword: {producer_pw}"),
         {}, "postgres.pasword"),
        ("an override below a Secret", base, {"PIPELINE__POSTGRES__PASSWORD__VALUE": producer_pw},
         "postgres.password.value"),
        ("an override of a setting that does not exist", base, {"PIPELINE__POSTGRES__PASSWD": debezium_pw},
         "postgres.passwd"),
        # A literal password in the file, on a line that is not valid YAML.
        ("an unterminated quote",
         with_("password: ${PRODUCER_PASSWORD}", f'password: "{producer_pw}'),
         {}, "not valid YAML"),
        ("a colon after the value",
         with_("password: ${DEBEZIUM_PASSWORD}", f"password: {debezium_pw}: x"),
         {}, "not valid YAML"),
    ]


def test_a_config_error_about_a_password_never_echoes_it(
    passwords: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE__")}
    for what, text, extra, names in _bad_configs(passwords):
        path = tmp_path / "pipeline.yaml"
        path.write_text(text)
        path.chmod(0o600)
        if "not valid YAML" not in names:
            yaml.safe_load(text)  # the case is about the value, not the YAML
        with pytest.raises(ConfigError) as caught:
            load(path, environ={**env, **extra})
        message = str(caught.value)
        assert names in message, (what, [leaks(p, passwords, "") or p for p in caught.value.problems])
        assert leaks(message, passwords, f"ConfigError for {what}") == []
        for args in (["-m", "pipeline", "--config", str(path), "check"],
                     ["-m", "producer", "--config", str(path), "--once"]):
            proc = run(args, {**env, **extra})
            out = output(proc)
            assert proc.returncode == 2, (what, args, proc.returncode)
            assert names in out and "Traceback" not in out, (what, args)
            assert leaks(out, passwords, f"python {' '.join(args[:2])} with {what}") == []


# --- the stack's logs and the repository ------------------------------------------------------------


def _log_files() -> list[Path]:
    files = sorted(p for p in STACK_LOGS.glob("*") if p.is_file()) if STACK_LOGS.is_dir() else []
    files += sorted(p for p in POSTGRES_LOGS.glob("postgresql-*.log") if os.access(p, os.R_OK))
    return files


def test_the_native_stacks_logs_hold_no_password(passwords: dict[str, str]) -> None:
    files = _log_files()
    found = []
    for path in files:
        data = path.read_bytes()
        for name, value in passwords.items():
            at = data.find(value.encode())
            if at >= 0:
                line = data.count(b"\n", 0, at) + 1
                found.append(f"{path}: {name} at byte {at} (line {line})")
    assert found == [], found


def test_the_repository_holds_no_password(passwords: dict[str, str], tmp_path: Path) -> None:
    """Tracked and untracked (not ignored) files, and every commit: a committed .env shows here."""
    patterns = tmp_path / "patterns"  # a file, not the command line, which other users may read
    patterns.write_text("".join(value + "\n" for value in passwords.values()))
    patterns.chmod(0o600)
    git = ["git", "-C", str(ROOT)]
    work_tree = subprocess.run([*git, "grep", "-l", "-F", "-I", "--untracked", "-f", str(patterns)],
                               capture_output=True, text=True, check=False)
    assert work_tree.returncode in (0, 1), work_tree.stderr  # 1: nothing found
    revisions = subprocess.run([*git, "rev-list", "--all"], capture_output=True, text=True, check=True)
    history = subprocess.run([*git, "grep", "-l", "-F", "-I", "-f", str(patterns), *revisions.stdout.split()],
                             capture_output=True, text=True, check=False)
    assert history.returncode in (0, 1), history.stderr
    assert revisions.stdout.split(), "no commit to search"
    # File names only: git grep -l never prints the matching text.
    assert work_tree.stdout.split() == [], f"a password is in these files: {work_tree.stdout.split()}"
    assert history.stdout.split() == [], f"a password was committed in: {history.stdout.split()}"
