#!/usr/bin/env python3
"""Apply a CQL file (e.g. infra/cassandra-init.cql) to a Cassandra node.

    apply_cql.py [--host H] [--port P] [--wait SECONDS] FILE

Statements are split on ';' (a ';' inside a quoted string or after a
-- or // comment does not split). --wait keeps retrying the first connection,
so this can run while the node is still starting (as in a compose service).
Defaults come from CASSANDRA_HOST / CASSANDRA_PORT, else 127.0.0.1:9042.
Needs the cassandra-driver package.

Authentication: with CASSANDRA_PASSWORD set, it logs in as CASSANDRA_USER
(default binance) with that password. On a node with PasswordAuthenticator
where that role does not exist yet, it logs in once as the built-in
cassandra/cassandra superuser, creates the role (LOGIN, SUPERUSER), and then,
as the new role, gives `cassandra` a random password and LOGIN = false, so
the well-known default login is closed. Passwords are read from the
environment only, never from the command line, and never printed.
"""

import argparse
import os
import secrets
import sys
import time

DEFAULT_SUPERUSER = ("cassandra", "cassandra")


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


def _auth_failed(exc):
    """True when the node answered but refused the credentials (not: not there yet)."""
    from cassandra import AuthenticationFailed
    from cassandra.cluster import NoHostAvailable

    if isinstance(exc, AuthenticationFailed):
        return True
    errors = getattr(exc, "errors", None) if isinstance(exc, NoHostAvailable) else None
    return bool(errors) and all(isinstance(e, AuthenticationFailed) for e in errors.values())


def _open(host, port, credentials):
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    auth = PlainTextAuthProvider(*credentials) if credentials else None
    cluster = Cluster([host], port=port, connect_timeout=5, auth_provider=auth)
    try:
        return cluster, cluster.connect()
    except Exception:
        cluster.shutdown()
        raise


def _create_role(host, port, user, password):
    """As the default superuser: create `user`; then, as `user`, close the default login."""
    cluster, session = _open(host, port, DEFAULT_SUPERUSER)
    try:
        # Role options take literals, not bind markers: the driver quotes the value client-side.
        session.execute(
            f'CREATE ROLE IF NOT EXISTS "{user}" WITH PASSWORD = %s AND LOGIN = true AND SUPERUSER = true',
            [password],
        )
    finally:
        cluster.shutdown()
    cluster, session = _open(host, port, (user, password))
    try:
        session.execute(
            "ALTER ROLE cassandra WITH PASSWORD = %s AND LOGIN = false", [secrets.token_urlsafe(24)]
        )
    finally:
        cluster.shutdown()
    print(f"created Cassandra role {user}; the default cassandra login is disabled")


def connect(host, port, wait, user=None, password=None):
    credentials = (user, password) if password else None
    deadline = time.monotonic() + wait
    while True:
        try:
            # Inside the loop: in a compose network the host name may not resolve yet.
            return _open(host, port, credentials)
        except Exception as exc:  # the driver raises several types for "not there yet"
            if credentials and _auth_failed(exc):
                try:
                    _create_role(host, port, user, password)
                    continue
                except Exception as default_exc:
                    # Right after start the default role is created after a delay: retry until
                    # the deadline; past it, say plainly that both logins were refused.
                    if time.monotonic() >= deadline:
                        if _auth_failed(default_exc):
                            raise RuntimeError(
                                f"Cassandra refused role {user} with CASSANDRA_PASSWORD, and the default "
                                "superuser: if CASSANDRA_PASSWORD changed since the role was created, "
                                f"ALTER ROLE {user} WITH PASSWORD = '...' or wipe Cassandra's data"
                            ) from exc
                        raise
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
        cluster, session = connect(
            args.host, args.port, args.wait,
            os.environ.get("CASSANDRA_USER") or "binance", os.environ.get("CASSANDRA_PASSWORD") or None,
        )
    except Exception as exc:  # the driver wraps every cause in its own types
        where = f"{args.host}:{args.port}"
        print(f"error: Cassandra at {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
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
