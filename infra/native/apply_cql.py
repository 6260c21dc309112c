#!/usr/bin/env python3
"""Apply a CQL file (e.g. infra/cassandra-init.cql) to a Cassandra node.

    apply_cql.py [--host H] [--port P] [--wait SECONDS] FILE

Statements are split on ';' (a ';' inside a quoted string or after a
-- or // comment does not split). --wait keeps retrying the first connection,
so this can run while the node is still starting (as in a compose service).
Defaults come from CASSANDRA_HOST / CASSANDRA_PORT, else 127.0.0.1:9042.
Needs the cassandra-driver package.
"""

import argparse
import os
import sys
import time


def split_statements(text):
    statements, current, quote, i = [], [], None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            current.append(ch)
        elif text.startswith("--", i) or text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            continue
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def connect(host, port, wait):
    from cassandra.cluster import Cluster

    deadline = time.monotonic() + wait
    while True:
        cluster = None
        try:
            # Inside the loop: in a compose network the host name may not resolve yet.
            cluster = Cluster([host], port=port, connect_timeout=5)
            return cluster, cluster.connect()
        except Exception:  # the driver raises several types for "not there yet"
            if cluster is not None:
                cluster.shutdown()
            if time.monotonic() >= deadline:
                raise
            time.sleep(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--host", default=os.environ.get("CASSANDRA_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CASSANDRA_PORT", "9042")))
    parser.add_argument("--wait", type=float, default=0, help="seconds to keep retrying the connection")
    args = parser.parse_args()

    try:
        import cassandra  # noqa: F401
    except ImportError:
        print(
            "error: python package cassandra-driver is missing (pip install cassandra-driver)",
            file=sys.stderr,
        )
        return 1

    with open(args.file, encoding="utf-8") as f:
        statements = split_statements(f.read())
    try:
        cluster, session = connect(args.host, args.port, args.wait)
    except Exception as exc:  # the driver wraps every cause in its own types
        where = f"{args.host}:{args.port}"
        print(f"error: cannot reach Cassandra at {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        for n, statement in enumerate(statements, 1):
            try:
                # Schema changes wait for agreement inside execute(), so a
                # CREATE TABLE may rely on the CREATE KEYSPACE before it.
                session.execute(statement, timeout=60)
            except Exception as exc:
                first_line = statement.splitlines()[0]
                print(f"error: {args.file} statement {n} ({first_line}...): {exc}", file=sys.stderr)
                return 1
    finally:
        cluster.shutdown()
    print(f"applied {len(statements)} statement(s) from {args.file} to {args.host}:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
