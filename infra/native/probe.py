#!/usr/bin/env python3
"""Readiness probes that need nothing beyond the standard library.

    probe.py kafka [HOST:PORT]   exit 0 once the broker lists itself in a Metadata answer
    probe.py cql   [HOST:PORT]   exit 0 once a CQL session logs in and answers a query
    probe.py connect [HOST:PORT] exit 0 once Connect's REST API lists the Debezium PostgreSQL plugin

A bare TCP connect is not enough: both servers accept connections before
they can serve requests. While not ready: exit 1, the reason on stderr.

cql logs in when the node asks for it (PasswordAuthenticator): as CASSANDRA_USER
(default binance) with CASSANDRA_PASSWORD, both from the environment; if that
role is refused (or no password is set), as the built-in cassandra/cassandra,
which a new node has until apply_cql.py creates the pipeline's role and closes
the default login. Passwords are never printed.
"""

import os
import socket
import struct
import sys
import urllib.request

DEFAULT_LOGIN = ("cassandra", "cassandra")


class NotReady(Exception):
    """The service answered, but not (yet) as a ready one; the message says how."""


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kafka_ready(host, port):
    # Metadata v4 (the oldest version Kafka 4.x still serves), all topics,
    # no auto-creation. The answer starts with the list of live brokers.
    client_id = b"native-stack-probe"
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">i?", -1, False)
    request = header + body
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        reply = _recv_exact(sock, size)
    correlation, _throttle, brokers = struct.unpack(">iii", reply[:12])
    return correlation == 7 and brokers > 0


# --- CQL (native protocol v4) ----------------------------------------------------------------------

OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_QUERY, OP_RESULT, OP_AUTH_CHALLENGE, OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x07, 0x08, 0x0E, 0x0F, 0x10


def _cql_frame(opcode, body):
    # Version, flags, stream, opcode, length.
    return struct.pack(">BBhBi", 0x04, 0, 1, opcode, len(body)) + body


def _cql_read(sock):
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", _recv_exact(sock, 9))
    return opcode, _recv_exact(sock, length)


def _cql_string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _cql_error(body):
    """An ERROR body: [int code][string message]."""
    if len(body) < 6:
        return "error"
    code, size = struct.unpack(">iH", body[:6])
    return f"error 0x{code:04x}: {body[6:6 + size].decode(errors='replace')}"


def _cql_session(host, port, login):
    """STARTUP, the login if asked for one, a query. True once the query answers."""
    startup = struct.pack(">H", 1) + _cql_string("CQL_VERSION") + _cql_string("3.0.0")
    query = b"SELECT release_version FROM system.local"
    query_body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(_cql_frame(OP_STARTUP, startup))
        opcode, body = _cql_read(sock)
        if opcode == OP_AUTHENTICATE:
            user, password = login
            # SASL PLAIN, as PasswordAuthenticator expects: \0user\0password.
            token = b"\0" + user.encode() + b"\0" + password.encode()
            sock.sendall(_cql_frame(OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token))
            opcode, body = _cql_read(sock)
            if opcode == OP_ERROR and body[:4] == b"\x00\x00\x01\x00":  # bad credentials
                raise PermissionError(f"login as {user} refused ({_cql_error(body)})")
            if opcode == OP_ERROR:  # e.g. the auth tables not readable yet on a starting node
                raise NotReady(f"login as {user} failed ({_cql_error(body)})")
            if opcode != OP_AUTH_SUCCESS:
                raise NotReady(f"login as {user}: unexpected answer 0x{opcode:02x}")
        elif opcode == OP_ERROR:
            raise NotReady(f"STARTUP: {_cql_error(body)}")
        elif opcode != OP_READY:
            raise NotReady(f"STARTUP: unexpected answer 0x{opcode:02x}")
        sock.sendall(_cql_frame(OP_QUERY, query_body))
        opcode, body = _cql_read(sock)
        if opcode != OP_RESULT:
            raise NotReady(f"query: {_cql_error(body) if opcode == OP_ERROR else f'answer 0x{opcode:02x}'}")
        return True


def cql_ready(host, port):
    logins = []
    password = os.environ.get("CASSANDRA_PASSWORD")
    if password:
        logins.append((os.environ.get("CASSANDRA_USER") or "binance", password))
    logins.append(DEFAULT_LOGIN)
    refused = []
    for login in logins:
        try:
            return _cql_session(host, port, login)
        except PermissionError as exc:
            # Right after the first start the roles may not exist yet: the next login, or the next
            # probe, may succeed.
            refused.append(str(exc))
    raise NotReady("; ".join(refused))


def connect_ready(host, port):
    # The REST API answers before plugin scanning is done; wait for the plugin itself.
    with urllib.request.urlopen(f"http://{host}:{port}/connector-plugins", timeout=5) as reply:
        return b"io.debezium.connector.postgresql.PostgresConnector" in reply.read()


def main(argv):
    checks = {
        "kafka": (kafka_ready, "127.0.0.1:9092"),
        "cql": (cql_ready, "127.0.0.1:9042"),
        "connect": (connect_ready, "127.0.0.1:8083"),
    }
    if len(argv) < 2 or argv[1] not in checks:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    check, default = checks[argv[1]]
    host, _, port = (argv[2] if len(argv) > 2 else default).rpartition(":")
    try:
        return 0 if check(host, int(port)) else 1
    except NotReady as exc:
        print(f"{argv[1]} at {host}:{port}: not ready: {exc}", file=sys.stderr)
        return 1
    except (OSError, struct.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        print(f"{argv[1]} at {host}:{port}: not ready: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
