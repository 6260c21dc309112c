#!/usr/bin/env python3
"""Readiness probes that need nothing beyond the standard library.

    probe.py kafka [HOST:PORT]   exit 0 once the broker lists itself in a Metadata answer
    probe.py cql   [HOST:PORT]   exit 0 once a CQL session opens and answers a query (or asks for a login)
    probe.py connect [HOST:PORT] exit 0 once Connect's REST API lists the Debezium PostgreSQL plugin

A bare TCP connect is not enough: both servers accept connections before
they can serve requests.
"""

import socket
import struct
import sys
import urllib.request


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


def _cql_frame(opcode, body):
    # Native protocol v4 frame: version, flags, stream, opcode, length.
    return struct.pack(">BBhBi", 0x04, 0, 1, opcode, len(body)) + body


def _cql_read(sock):
    _version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", _recv_exact(sock, 9))
    return opcode, _recv_exact(sock, length)


def cql_ready(host, port):
    def cql_string(s):
        b = s.encode()
        return struct.pack(">H", len(b)) + b

    startup = struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0")
    query = b"SELECT release_version FROM system.local"
    query_body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(_cql_frame(0x01, startup))
        opcode, _ = _cql_read(sock)
        if opcode == 0x03:  # AUTHENTICATE: the node serves CQL and wants a login (PasswordAuthenticator)
            return True
        if opcode != 0x02:  # READY
            return False
        sock.sendall(_cql_frame(0x07, query_body))
        opcode, _ = _cql_read(sock)
        return opcode == 0x08  # RESULT


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
    except (OSError, ConnectionError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
