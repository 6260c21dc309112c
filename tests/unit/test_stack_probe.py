"""infra/native/probe.py's CQL readiness against a fake node speaking the native protocol (v4): ready means
logged in and a query answered, not merely asked for a login."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from fake_secrets import fake_secret

ROOT = Path(__file__).resolve().parents[2]
SECRET = fake_secret("pipeline")


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("probe", ROOT / "infra" / "native" / "probe.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class FakeNode:
    """Serves CQL frames: AUTHENTICATE if `logins` is not None (accepting exactly those), READY otherwise;
    a query answers RESULT, or an ERROR when `query_fails`."""

    logins: set[tuple[str, str]] | None
    query_fails: bool = False
    tried: list[str] = field(default_factory=list)  # user names, in order
    queries: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @staticmethod
    def recv(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    @staticmethod
    def send(conn: socket.socket, opcode: int, body: bytes) -> None:
        conn.sendall(struct.pack(">BBhBi", 0x84, 0, 1, opcode, len(body)) + body)

    @staticmethod
    def error(code: int, message: str) -> bytes:
        return struct.pack(">iH", code, len(message)) + message.encode()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            # The probe hangs up after its query.
            with conn, contextlib.suppress(ConnectionError):
                self.session(conn)

    def session(self, conn: socket.socket) -> None:
        while True:
            _v, _f, _s, opcode, length = struct.unpack(">BBhBi", self.recv(conn, 9))
            body = self.recv(conn, length)
            if opcode == 0x01:  # STARTUP
                if self.logins is None:
                    self.send(conn, 0x02, b"")
                else:
                    authenticator = b"org.apache.cassandra.auth.PasswordAuthenticator"
                    self.send(conn, 0x03, struct.pack(">H", len(authenticator)) + authenticator)
            elif opcode == 0x0F:  # AUTH_RESPONSE: [bytes] \0user\0password
                _, user, password = body[4:].split(b"\0")
                self.tried.append(user.decode())
                if self.logins is not None and (user.decode(), password.decode()) in self.logins:
                    self.send(conn, 0x10, struct.pack(">i", -1))
                else:
                    self.send(conn, 0x00, self.error(0x0100, f"Provided username {user.decode()} and/or "
                                                             "password are incorrect"))
            elif opcode == 0x07:  # QUERY
                self.queries += 1
                if self.query_fails:
                    self.send(conn, 0x00, self.error(0x1000, "Cannot achieve consistency level ONE"))
                else:
                    self.send(conn, 0x08, struct.pack(">i", 1))  # RESULT, kind Void

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("CASSANDRA_USER", "binance")
    monkeypatch.setenv("CASSANDRA_PASSWORD", SECRET)
    return load_probe()


@pytest.fixture
def nodes() -> Iterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for node in made:
        node.close()


def check(probe: ModuleType, node: FakeNode) -> int:
    return int(probe.main(["probe.py", "cql", f"127.0.0.1:{node.port}"]))


def test_a_node_asking_for_a_login_is_not_ready_until_a_query_answers(
    probe: ModuleType, nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = FakeNode({("binance", SECRET)}, query_fails=True)
    nodes.append(node)
    assert check(probe, node) == 1
    assert node.queries == 1
    assert "Cannot achieve consistency level" in capsys.readouterr().err


def test_the_pipeline_role_logs_in(probe: ModuleType, nodes: list[FakeNode]) -> None:
    node = FakeNode({("binance", SECRET)})
    nodes.append(node)
    assert check(probe, node) == 0
    assert node.tried == ["binance"] and node.queries == 1


def test_a_new_node_is_ready_with_the_default_login_before_the_role_exists(
    probe: ModuleType, nodes: list[FakeNode]
) -> None:
    node = FakeNode({("cassandra", "cassandra")})
    nodes.append(node)
    assert check(probe, node) == 0
    assert node.tried == ["binance", "cassandra"]


def test_refused_logins_are_not_ready_and_print_no_password(
    probe: ModuleType, nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]
) -> None:
    node = FakeNode(set())
    nodes.append(node)
    assert check(probe, node) == 1
    err = capsys.readouterr().err
    assert "login as binance refused" in err and "login as cassandra refused" in err
    assert SECRET not in err and err.count("\n") == 1
    assert node.queries == 0


def test_a_node_without_authentication_answers_the_query(probe: ModuleType, nodes: list[FakeNode]) -> None:
    node = FakeNode(None)
    nodes.append(node)
    assert check(probe, node) == 0
    assert node.tried == [] and node.queries == 1


def test_nothing_listening_is_not_ready(probe: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    assert probe.main(["probe.py", "cql", f"127.0.0.1:{port}"]) == 1
    assert "not ready" in capsys.readouterr().err
