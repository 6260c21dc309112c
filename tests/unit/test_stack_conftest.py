"""tests/conftest.py in compose mode, against a fake `docker` on PATH that logs its arguments: a session
reuses a running compose stack and leaves it alone, builds the image when it starts one, and never
removes the volumes (the project is the one `make up` uses, so they may hold a user's data)."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_conftest() -> ModuleType:
    """A private copy of the module, so its session state is not the real session's."""
    spec = importlib.util.spec_from_file_location("conftest_under_test", ROOT / "tests" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def docker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    # `ps --quiet` lists a container id when FAKE_RUNNING=1; everything else only logs.
    fake.write_text(f"""#!/usr/bin/env bash
echo "docker $*" >>{log}
if [[ " $* " == *" ps "* && ${{FAKE_RUNNING:-0}} == 1 ]]; then echo 0123456789ab; fi
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def compose_stack(monkeypatch: pytest.MonkeyPatch, *, running: bool) -> Any:
    """The fixture layer's stack in compose mode, with the fake docker saying whether one runs."""
    monkeypatch.setenv("FAKE_RUNNING", "1" if running else "0")
    conftest = load_conftest()
    monkeypatch.setattr(conftest, "STACK_MODE", "compose")
    return conftest._Stack()


def test_a_running_compose_stack_is_reused_and_left_running(
    docker_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = compose_stack(monkeypatch, running=True)
    stack.ensure("postgres", "kafka")
    stack.stop()
    seen = calls(docker_log)
    assert any(" ps " in c for c in seen), seen
    assert not [c for c in seen if " up " in f"{c} " or " down " in f"{c} "], seen


def test_a_stack_the_session_starts_is_built_and_stopped_without_removing_volumes(
    docker_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = compose_stack(monkeypatch, running=False)
    stack.ensure("postgres")
    stack.ensure("cassandra")  # one compose start per session
    stack.stop()
    seen = calls(docker_log)
    ups = [c for c in seen if " up " in f"{c} "]
    assert len(ups) == 1, seen
    assert "-f infra/docker-compose.yml" in ups[0] and "--build" in ups[0] and "--wait" in ups[0]
    downs = [c for c in seen if " down " in f"{c} "]
    assert len(downs) == 1 and downs[0].endswith(" down"), seen
    assert not [c for c in seen if "--volumes" in c or " -v" in c], seen
