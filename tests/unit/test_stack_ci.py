""".ci/run's choice of system packages and Java, on a fake machine: every command it calls is a script
on PATH that logs its arguments (apt-get "installs" by adding more such scripts), so nothing is installed
and no service starts."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What .ci/run needs besides the commands under test.
BASICS = ("bash", "dirname", "sed", "cat", "mkdir", "chmod")
ALL_TOOLS = ("make", "pg_createcluster", "mvn", "ss", "ps")


class FakeMachine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.log"
        self.jdk17 = root / "jvm" / "java-17"
        (root / "repo" / ".ci").mkdir(parents=True)
        (root / "repo" / "infra" / "native").mkdir(parents=True)
        shutil.copy(ROOT / ".ci" / "run", root / "repo" / ".ci" / "run")
        # stack.sh only logs what CI asks of it, except the Java version, which its real code tells.
        real = ROOT / "infra" / "native" / "stack.sh"
        self.script(root / "repo" / "infra" / "native" / "stack.sh",
                    f'[ "$1" = java-major ] && exec bash {real} "$@"\necho "stack.sh $*" >>{self.log}\n')
        for name in BASICS:
            target = shutil.which(name)
            assert target, name
            (self.bin / name).symlink_to(target)
        self.script(self.bin / "dpkg", "echo amd64\n")
        # python3 with or without venv: FAKE_VENV=0 makes `import ensurepip, venv` fail.
        self.script(self.bin / "python3", 'exit $(( ${FAKE_VENV:-1} == 1 ? 0 : 1 ))\n')
        # apt-get install: log, then make each package's command exist.
        self.script(self.bin / "apt-get", f"""echo "apt-get $*" >>{self.log}
[[ $1 == install ]] || exit 0
for pkg in "$@"; do
  case $pkg in
    make) {self.tool_body("make")} ;;
    openjdk-17-jdk-headless)
      mkdir -p {self.jdk17}/bin
      printf '%s\\n' '#!/usr/bin/env bash' 'echo "    java.specification.version = 17" >&2' \
        >{self.jdk17}/bin/java
      chmod +x {self.jdk17}/bin/java ;;
  esac
done
""")

    def tool_body(self, name: str) -> str:
        """Shell that writes the fake `name` (make logs the environment the stack would get)."""
        body = f'echo "{name} $* JAVA_HOME=${{JAVA_HOME:-}} STACK=${{STACK:-}}" >>{self.log}'
        path = self.bin / name
        return f"printf '%s\\n' '#!/usr/bin/env bash' '{body}' >{path} && chmod +x {path}"

    @staticmethod
    def script(path: Path, body: str) -> None:
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    def tools(self, *names: str) -> None:
        for name in names:
            subprocess.run(["bash", "-c", self.tool_body(name)], check=True)

    def java(self, major: int, where: Path | None = None) -> Path:
        """A java that reports `major`, on PATH (or in `where`/bin)."""
        path = (where / "bin" / "java") if where else (self.bin / "java")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.script(path, f'echo "    java.specification.version = {major}" >&2\n')
        return path

    def run(self, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        full = {"PATH": str(self.bin), "HOME": str(self.root), "JDK17_HOME": str(self.jdk17), **env}
        proc = subprocess.run(["bash", str(self.root / "repo" / ".ci" / "run")], env=full,
                              capture_output=True, text=True, timeout=60, check=False)
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        return proc, calls


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    return FakeMachine(tmp_path)


def installed(calls: list[str]) -> list[str]:
    lines = [c for c in calls if c.startswith("apt-get install")]
    return lines[0].split()[2:] if lines else []


def makes(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("make ")]


def test_a_bare_machine_gets_every_package_and_java_17(machine: FakeMachine) -> None:
    proc, calls = machine.run(FAKE_VENV="0")
    assert proc.returncode == 0, proc.stderr
    packages = [p for p in installed(calls) if not p.startswith("-")]
    for package in ("make", "python3-venv", "postgresql", "maven", "iproute2", "procps",
                    "openjdk-17-jdk-headless"):
        assert package in packages, (package, packages)
    jdk = f"JAVA_HOME={machine.jdk17} STACK=native"
    assert makes(calls) == [f"make install {jdk}", f"make test {jdk}", f"make down {jdk}"]
    assert "stack.sh wipe postgres" in calls


def test_a_java_other_than_17_gets_17_beside_it(machine: FakeMachine) -> None:
    machine.tools(*ALL_TOOLS)
    machine.java(21)
    proc, calls = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert [p for p in installed(calls) if not p.startswith("-")] == ["openjdk-17-jdk-headless"]
    assert all(f"JAVA_HOME={machine.jdk17} " in c for c in makes(calls)), calls


def test_java_home_pointing_at_another_version_is_replaced(machine: FakeMachine) -> None:
    machine.tools(*ALL_TOOLS)
    machine.java(17)  # on PATH, but JAVA_HOME wins in stack.sh
    other = machine.root / "jvm" / "java-11"
    machine.java(11, other)
    proc, calls = machine.run(JAVA_HOME=str(other))
    assert proc.returncode == 0, proc.stderr
    assert "openjdk-17-jdk-headless" in installed(calls)
    assert all(f"JAVA_HOME={machine.jdk17} " in c for c in makes(calls)), calls


def test_an_installed_jdk_17_is_used_without_apt(machine: FakeMachine) -> None:
    machine.tools(*ALL_TOOLS)
    machine.java(21)
    machine.java(17, machine.jdk17)
    proc, calls = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]
    assert all(f"JAVA_HOME={machine.jdk17} " in c for c in makes(calls)), calls


def test_java_17_on_path_is_left_as_it_is(machine: FakeMachine) -> None:
    machine.tools(*ALL_TOOLS)
    machine.java(17)
    proc, calls = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]
    assert makes(calls) == ["make install JAVA_HOME= STACK=native", "make test JAVA_HOME= STACK=native",
                            "make down JAVA_HOME= STACK=native"]


def test_the_maven_cache_is_not_touched(machine: FakeMachine) -> None:
    m2 = machine.root / ".m2" / "repository"
    m2.mkdir(parents=True)
    (m2 / "kept").write_text("jar")
    machine.tools(*ALL_TOOLS)
    machine.java(17)
    proc, _ = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert (m2 / "kept").read_text() == "jar"
    assert ".m2" not in (ROOT / ".ci" / "run").read_text().replace("~/.m2 is left alone", "")


def test_ci_run_is_executable() -> None:
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
