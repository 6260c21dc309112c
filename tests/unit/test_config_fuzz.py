"""Random wrong values and shapes in every section of the YAML: always a ConfigError naming a path."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from fake_secrets import PIPELINE_ENV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, PipelineConfig, load

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "config" / "pipeline.yaml").read_text())
ENV = PIPELINE_ENV


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in the project's YAML, mappings and list items alike."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(BASE)
SECTIONS = [f.name for f in dataclasses.fields(PipelineConfig)]

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=6,
)


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    import copy

    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def _render(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=junk)
def test_any_value_anywhere_is_accepted_or_named(tmp_path: Path, path: tuple[Any, ...], value: Any) -> None:
    data = _set(BASE, path, value)
    file = tmp_path / "fuzz.yaml"
    file.write_text(yaml.safe_dump(data))
    try:
        load(file, ENV)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            # Every message starts with a YAML path (or the file) and says what was wrong.
            assert re.match(r"^[A-Za-z_<\[/]", problem), problem
            assert ": " in problem, problem
        section = _render(path).split("[")[0].split(".")[0]
        assert any(p.startswith(section) for p in exc.problems), (path, exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(SECTIONS), value=junk)
def test_any_shape_for_a_whole_section(tmp_path: Path, section: str, value: Any) -> None:
    file = tmp_path / "fuzz.yaml"
    file.write_text(yaml.safe_dump({**BASE, section: value}))
    try:
        load(file, ENV)
    except ConfigError as exc:
        assert all(p.startswith(section) for p in exc.problems), exc.problems


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_as_the_file(tmp_path: Path, text: str) -> None:
    file = tmp_path / "fuzz.yaml"
    file.write_text(text)
    try:
        load(file, {})
    except ConfigError as exc:
        assert exc.problems


def test_cli_exit_status_for_a_sample_of_bad_files(tmp_path: Path) -> None:
    samples = [
        {**BASE, "kafka": "oops"},
        _set(BASE, ("binance", "endpoints", "depth", "limit"), [1]),
        _set(BASE, ("mappings", 0, "key"), None),
        {**BASE, "cassandra": {"port": {"a": 1}}},
    ]
    for i, data in enumerate(samples):
        file = tmp_path / f"bad{i}.yaml"
        file.write_text(yaml.safe_dump(data))
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "--config", str(file), "check"],
            cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **ENV}, check=False,
        )
        assert proc.returncode == 2, (data, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "config error in" in proc.stderr
