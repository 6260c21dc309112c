"""Cassandra writes: prepared statements, single-partition unlogged batches, bounded async execution.

Every write carries its own timestamp (`USING TIMESTAMP`, derived from the WAL position by the mapper),
so a replayed or reordered write can never overwrite a newer one or resurrect a deleted row: requests
may complete in any order and any number of times. That is what lets the consumer keep
`consumer.max_in_flight` requests outstanding and retry freely.

Threading: `submit()` is called by the consumer thread; completions arrive on the driver's IO thread,
which only appends them to a queue (`completed`) and frees the in-flight slot. The consumer thread
applies them (`drain()`): offsets, metrics, retries.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import cassandra
from cassandra import ConsistencyLevel, ProtocolVersion
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError
from cassandra.query import (
    BatchStatement,
    BatchType,
    BoundStatement,
    PreparedStatement,
    Statement,
    dict_factory,
)
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from consumer.encode import Encoder, bind, encoders
from consumer.errors import PermanentError, SinkUnavailableError
from pipeline.config import CassandraConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# Execution profile whose rows are dicts (verification reads).
DICT_ROWS = "dict_rows"

# Errors after which the same request can succeed later: the cluster is down, busy or slow.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    cassandra.Unavailable,
    cassandra.Timeout,  # WriteTimeout, ReadTimeout
    cassandra.CoordinationFailure,  # WriteFailure, ReadFailure: a replica failed, not the request
    cassandra.OperationTimedOut,
    NoHostAvailable,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ServerError,
    OSError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def _login_refused(exc: BaseException) -> bool:
    """Every node answered, and refused the credentials (the driver wraps that in NoHostAvailable)."""
    if isinstance(exc, cassandra.AuthenticationFailed):
        return True
    if not isinstance(exc, NoHostAvailable):
        return False
    errors: dict[Any, BaseException] = getattr(exc, "errors", None) or {}
    return bool(errors) and all(isinstance(e, cassandra.AuthenticationFailed) for e in errors.values())


class WriteLike(Protocol):
    """What the sink needs of a `consumer.mapping.Write`."""

    @property
    def keyspace(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> Mapping[str, Any]: ...
    @property
    def values(self) -> Mapping[str, Any]: ...
    @property
    def timestamp_us(self) -> int: ...
    @property
    def ttl(self) -> int | None: ...


@dataclass(frozen=True)
class TableSchema:
    """A Cassandra table as the live cluster describes it."""

    keyspace: str
    table: str
    columns: Mapping[str, str]  # name -> CQL type, in the table's order
    partition_key: tuple[str, ...]
    clustering_key: tuple[str, ...]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering_key


@dataclass(eq=False)
class Request(Generic[T]):
    """One CQL request (a row or a single-partition batch) and the records it acknowledges."""

    statement: Statement
    origins: list[T]
    rows: int
    attempts: int = 0
    sent_at: float = 0.0
    latency: float = 0.0
    acked_at: float = 0.0  # wall clock, for end-to-end latency
    error: BaseException | None = None
    describe: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class CassandraSink(Generic[T]):
    def __init__(
        self,
        config: CassandraConfig,
        *,
        max_in_flight: int = 128,
        batch_max_rows: int = 16,
        consistency: int = ConsistencyLevel.LOCAL_QUORUM,
        on_submit: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.max_in_flight = max_in_flight
        self.batch_max_rows = max(1, batch_max_rows)
        self.consistency = consistency
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        # (keyspace, table, kind, columns) -> the statement and its value encoders (None: driver binds)
        self._prepared: dict[tuple[str, str, str, tuple[str, ...]],
                             tuple[PreparedStatement, tuple[Encoder, ...] | None]] = {}
        self._schemas: dict[tuple[str, str], TableSchema] = {}
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Completed requests, appended by the driver's thread, popped by the consumer thread.
        self.completed: deque[Request[T]] = deque()
        self._on_submit = on_submit

    # --- connection ----------------------------------------------------------------------------

    def _build_cluster(self) -> Cluster:
        c = self.config
        auth = None
        if c.username:
            password = c.password.reveal() if c.password else ""
            auth = PlainTextAuthProvider(username=c.username, password=password)
        ssl_context = None
        if c.ssl_cafile:
            ssl_context = ssl.create_default_context(cafile=c.ssl_cafile)
        def profile(**extra: Any) -> ExecutionProfile:
            return ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c.local_datacenter)),
                consistency_level=self.consistency,
                request_timeout=c.request_timeout_seconds,
                **extra,
            )

        return Cluster(
            contact_points=list(c.contact_points),
            port=c.port,
            auth_provider=auth,
            ssl_context=ssl_context,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: profile(), DICT_ROWS: profile(row_factory=dict_factory)
            },
            # Cassandra 4.0 and later speak v5 (5.0 is the target): no version negotiation on connect.
            protocol_version=ProtocolVersion.V5,
            # Come back quickly once Cassandra is up again (the default waits up to 10 minutes).
            reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=10.0),
            connect_timeout=min(10.0, c.request_timeout_seconds),
            control_connection_timeout=min(10.0, c.request_timeout_seconds),
            idle_heartbeat_interval=10,
            compression=c.compression,
        )

    def connect(self) -> None:
        """Open the session (one attempt); SinkUnavailableError while Cassandra cannot be reached."""
        if self._session is not None:
            return
        try:
            cluster = self._build_cluster()
        except cassandra.UnresolvableContactPoints as exc:   # DNS may not know them yet (compose start)
            raise SinkUnavailableError(
                f"Cassandra contact points {', '.join(self.config.contact_points)} do not resolve") from exc
        try:
            self._session = cluster.connect()
        except (NoHostAvailable, OSError, cassandra.OperationTimedOut, cassandra.AuthenticationFailed) as exc:
            cluster.shutdown()
            where = f"{','.join(self.config.contact_points)}:{self.config.port}"
            if _login_refused(exc):   # retrying cannot help: the credentials are wrong or missing
                user = self.config.username
                who = f"role {user!r}" if user else "a login without credentials"
                raise PermanentError(
                    f"Cassandra {where} refused {who}: check cassandra.username and cassandra.password "
                    f"(CASSANDRA_PASSWORD): {exc}") from exc
            raise SinkUnavailableError(f"Cassandra {where}: {exc}") from exc
        self._cluster = cluster
        log.info("connected to Cassandra %s:%d (dc %s)", ",".join(self.config.contact_points),
                 self.config.port, self.config.local_datacenter)

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("CassandraSink.connect() first")
        return self._session

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = None
        self._session = None

    # --- metadata ------------------------------------------------------------------------------

    def table_metadata(self, keyspace: str, table: str) -> Any:
        """The driver's TableMetadata of a table, fresh from the cluster; None if it does not exist."""
        assert self._cluster is not None, "connect() first"
        try:
            self._cluster.refresh_table_metadata(keyspace, table)
        except Exception as exc:  # the driver raises plain Exceptions for unknown tables
            log.debug("refreshing %s.%s: %s", keyspace, table, exc)
        ks = self._cluster.metadata.keyspaces.get(keyspace)
        return None if ks is None else ks.tables.get(table)

    def table_schema(self, keyspace: str, table: str, *, refresh: bool = False) -> TableSchema:
        """The table as the live cluster has it; PermanentError if it does not exist."""
        key = (keyspace, table)
        if not refresh and key in self._schemas:
            return self._schemas[key]
        assert self._cluster is not None, "connect() first"
        if refresh:
            try:
                self._cluster.refresh_table_metadata(keyspace, table)
            except Exception as exc:  # the driver raises plain Exceptions for unknown tables
                log.debug("refreshing %s.%s: %s", keyspace, table, exc)
        ks = self._cluster.metadata.keyspaces.get(keyspace)
        if ks is None:
            raise PermanentError(f"Cassandra keyspace {keyspace} does not exist")
        meta = ks.tables.get(table)
        if meta is None:
            raise PermanentError(f"Cassandra table {keyspace}.{table} does not exist")
        schema = TableSchema(
            keyspace=keyspace,
            table=table,
            columns={name: col.cql_type for name, col in meta.columns.items()},
            partition_key=tuple(c.name for c in meta.partition_key),
            clustering_key=tuple(c.name for c in meta.clustering_key),
        )
        self._schemas[key] = schema
        return schema

    # --- statements ----------------------------------------------------------------------------

    def _prepare(
        self, keyspace: str, table: str, kind: str, columns: tuple[str, ...]
    ) -> tuple[PreparedStatement, tuple[Encoder, ...] | None]:
        key = (keyspace, table, kind, columns)
        known = self._prepared.get(key)
        if known is not None:
            return known
        target = f"{_quote(keyspace)}.{_quote(table)}"
        if kind == "upsert":
            names = ", ".join(_quote(c) for c in columns)
            marks = ", ".join("?" for _ in columns)
            cql = f"INSERT INTO {target} ({names}) VALUES ({marks}) USING TIMESTAMP ? AND TTL ?"
        elif kind == "delete":
            where = " AND ".join(f"{_quote(c)} = ?" for c in columns)
            cql = f"DELETE FROM {target} USING TIMESTAMP ? WHERE {where}"
        else:
            raise ValueError(f"unknown write kind {kind!r}")
        stmt: PreparedStatement | None = None
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(TRANSIENT_ERRORS),
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.2, max=2.0) + wait_random(0, 0.2),
                reraise=True,
            ):
                with attempt:
                    stmt = self.session.prepare(cql)
        except TRANSIENT_ERRORS as exc:
            raise SinkUnavailableError(f"preparing {cql}: {exc}") from exc
        except cassandra.RequestValidationException as exc:
            raise PermanentError(f"Cassandra rejects {cql}: {exc}") from exc
        assert stmt is not None
        stmt.is_idempotent = True  # explicit timestamps: running a write twice changes nothing
        stmt.consistency_level = self.consistency
        known = self._prepared[key] = (stmt, encoders(stmt))
        return known

    def bind(self, write: WriteLike) -> BoundStatement:
        """The write as a bound statement. ValueError/TypeError when a value doesn't fit its column."""
        key, kind = write.key, write.kind
        if kind == "upsert":
            values = write.values
            columns = tuple(key) + tuple(c for c in values if c not in key)
            stmt, encode = self._prepare(write.keyspace, write.table, kind, columns)
            params = [key[c] for c in key]
            params.extend(values[c] for c in columns[len(key):])
            params.append(write.timestamp_us)
            params.append(write.ttl or 0)
        else:
            columns = tuple(key)
            stmt, encode = self._prepare(write.keyspace, write.table, kind, columns)
            params = [write.timestamp_us]
            params.extend(key.values())
        if encode is not None:
            try:
                return bind(stmt, encode, params)
            except ValueError as exc:
                raise ValueError(f"{write.keyspace}.{write.table}: {exc}") from exc
        bound = BoundStatement(stmt)
        try:
            bound.bind(params)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{write.keyspace}.{write.table}: {exc}") from exc
        except Exception as exc:  # struct.error and the driver's own serialisation errors
            raise ValueError(f"{write.keyspace}.{write.table}: {type(exc).__name__}: {exc}") from exc
        return bound

    def _partition_of(self, write: WriteLike) -> tuple[Any, ...] | None:
        try:
            schema = self.table_schema(write.keyspace, write.table)
            key = write.key
            return (write.keyspace, write.table, *(key[c] for c in schema.partition_key))
        except (KeyError, PermanentError):
            return None

    def build(
        self, items: Iterable[tuple[WriteLike, T]]
    ) -> tuple[list[Request[T]], list[tuple[T, WriteLike, Exception]]]:
        """Requests for `items`: rows of one Cassandra partition share unlogged batches of at most
        batch_max_rows; every other row is its own request. Returns (requests, rejected) where rejected
        are the origins with a write whose values cannot be bound (poison): each such origin once, with
        the first failure, and none of its writes in the requests (a record is applied whole or not at
        all). SinkUnavailableError/PermanentError propagate."""
        requests: list[Request[T]] = []
        rejected: list[tuple[T, WriteLike, Exception]] = []
        bound_items: list[tuple[WriteLike, BoundStatement, T]] = []
        failed: set[int] = set()   # ids of the origins rejected (None stands for no origin, each its own)
        for write, origin in items:
            try:
                bound_items.append((write, self.bind(write), origin))
            except ValueError as exc:
                if origin is None or id(origin) not in failed:
                    rejected.append((origin, write, exc))
                    if origin is not None:
                        failed.add(id(origin))
        if failed:
            bound_items = [item for item in bound_items if id(item[2]) not in failed]
        groups: dict[tuple[Any, ...], list[tuple[BoundStatement, T]]] = {}
        single = self.batch_max_rows <= 1
        for write, bound, origin in bound_items:
            part = None if single else self._partition_of(write)
            if part is None:
                requests.append(Request(bound, [origin], 1))
                continue
            try:
                groups.setdefault(part, []).append((bound, origin))
            except TypeError:  # an unhashable key value: no batching for it
                requests.append(Request(bound, [origin], 1))
        size = self.batch_max_rows
        for rows in groups.values():
            for i in range(0, len(rows), size):
                chunk = rows[i:i + size]
                if len(chunk) == 1:
                    requests.append(Request(chunk[0][0], [chunk[0][1]], 1))
                    continue
                batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self.consistency)
                for bound, _ in chunk:
                    batch.add(bound)
                batch.is_idempotent = True
                requests.append(Request(batch, [o for _, o in chunk], len(chunk)))
        return requests, rejected

    # --- execution -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, request: Request[T], timeout: float | None = None) -> bool:
        """Send `request` once a slot is free; False if none freed within `timeout` seconds."""
        if not self._slots.acquire(timeout=timeout if timeout is not None else -1):
            return False
        with self._lock:
            self._in_flight += 1
        request.attempts += 1
        request.error = None
        request.sent_at = time.perf_counter()
        try:
            future = self.session.execute_async(request.statement)
        except Exception as exc:  # e.g. the session is shutting down
            self._done(request, exc)
            return True
        future.add_callbacks(
            self._on_success, self._on_error, callback_args=(request,), errback_args=(request,)
        )
        if self._on_submit is not None:
            self._on_submit(self._in_flight)
        return True

    def _on_success(self, _rows: Any, request: Request[T]) -> None:
        self._done(request, None)

    def _on_error(self, exc: BaseException, request: Request[T]) -> None:
        self._done(request, exc)

    def _done(self, request: Request[T], exc: BaseException | None) -> None:
        request.latency = time.perf_counter() - request.sent_at
        request.acked_at = time.time()
        request.error = exc
        self.completed.append(request)
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()
        self._slots.release()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (True) or `timeout` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def execute(self, cql: str, params: Sequence[Any] | None = None, timeout: float | None = None) -> Any:
        """A synchronous statement (truncate, verification reads)."""
        return self.session.execute(cql, params, timeout=timeout or self.config.request_timeout_seconds)

    def truncate(self, keyspace: str, table: str) -> None:
        timeout = max(60.0, self.config.request_timeout_seconds)
        self.execute(f"TRUNCATE {_quote(keyspace)}.{_quote(table)}", timeout=timeout)
