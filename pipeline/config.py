"""The pipeline's configuration: `config/pipeline.yaml`, validated once into frozen typed objects.

This is the one place that reads the environment: `${VAR}` / `${VAR:-default}` interpolation in YAML
strings, and `PIPELINE__<SECTION>__<KEY>=value` overrides of any setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.schema import ConfigError, FieldError, Secret, build, join_path, setting, to_plain
from producer.ratelimit import (
    DEPTH,
    DEPTH_LIMITS,
    KLINES,
    TICKER_24HR,
    TICKER_PRICE,
    TRADES,
    request_weight,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BinanceConfig",
    "CassandraConfig",
    "ConfigError",
    "ConsumerConfig",
    "DebeziumConfig",
    "KafkaConfig",
    "MappingConfig",
    "PipelineConfig",
    "PostgresConfig",
    "ProducerConfig",
    "Secret",
    "load",
    "to_plain",
]

DEFAULT_CONFIG_PATH = Path("config/pipeline.yaml")
ENV_PREFIX = "PIPELINE__"

KlineInterval = Literal[
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"
]
SYMBOL = r"[A-Z0-9]{2,20}"
HOSTPORT = r"[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}"
IDENT = r"[a-z_][a-z0-9_]{0,47}"
# The producer's tables, created by infra/init-db.sql and published to Debezium.
CAPTURED_TABLES = ("latest_prices", "order_book_levels", "trades", "klines", "ticker_24hr")


# --- Binance and the producer -------------------------------------------------------------------

def _duplicates(items: Iterable[str]) -> list[str]:
    """The items that occur more than once, sorted."""
    return sorted(item for item, n in Counter(items).items() if n > 1)


@dataclass(frozen=True)
class TickerPriceEndpoint:
    interval_seconds: float = setting(10.0, min=0.1, max=86400)


@dataclass(frozen=True)
class DepthEndpoint:
    interval_seconds: float = setting(30.0, min=0.1, max=86400)
    limit: int = setting(20, min=1, max=5000)


@dataclass(frozen=True)
class TradesEndpoint:
    interval_seconds: float = setting(15.0, min=0.1, max=86400)
    limit: int = setting(500, min=1, max=1000)


@dataclass(frozen=True)
class KlinesEndpoint:
    interval_seconds: float = setting(60.0, min=0.1, max=86400)
    intervals: tuple[KlineInterval, ...] = setting(("1m", "1h"), min_items=1)
    limit: int = setting(100, min=1, max=1000)

    def __post_init__(self) -> None:
        # The same interval twice would fetch and load every candle twice a cycle.
        dupes = _duplicates(self.intervals)
        if dupes:
            raise FieldError(("intervals", f"expected each interval once, got {', '.join(dupes)} more than "
                                           f"once in {list(self.intervals)}"))


@dataclass(frozen=True)
class Ticker24hrEndpoint:
    interval_seconds: float = setting(60.0, min=0.1, max=86400)


@dataclass(frozen=True)
class Endpoints:
    ticker_price: TickerPriceEndpoint = TickerPriceEndpoint()
    depth: DepthEndpoint = DepthEndpoint()
    trades: TradesEndpoint = TradesEndpoint()
    klines: KlinesEndpoint = KlinesEndpoint()
    ticker_24hr: Ticker24hrEndpoint = Ticker24hrEndpoint()


@dataclass(frozen=True)
class BinanceConfig:
    base_url: str = setting("https://api.binance.com", pattern=r"https?://[^\s/]+(/[^\s]*)?")
    symbols: tuple[str, ...] = setting(("BTCUSDT", "ETHUSDT"), pattern=SYMBOL, min_items=1)
    connect_timeout_seconds: float = setting(3.05, min=0.01, max=300)
    read_timeout_seconds: float = setting(10.0, min=0.01, max=300)
    max_attempts: int = setting(5, min=1, max=100)
    backoff_initial_seconds: float = setting(0.5, min=0, max=600)
    backoff_max_seconds: float = setting(30.0, min=0, max=3600)
    # Binance allows 6000 weight a minute per IP; staying well below leaves room for other clients.
    weight_budget_per_minute: int = setting(1200, min=1, max=6000)
    endpoints: Endpoints = Endpoints()

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        dupes = _duplicates(self.symbols)
        if dupes:
            problems.append(("symbols", f"duplicate symbol {', '.join(dupes)} in {list(self.symbols)}"))
        problems += self._weight_problems()
        if problems:
            raise FieldError(*problems)

    def _weight_problems(self) -> list[tuple[str, str]]:
        """Requests heavier than the budget could never be sent: say so at load, not every cycle."""
        budget = self.weight_budget_per_minute
        depth_weight = request_weight(DEPTH, self.endpoints.depth.limit)
        problems = []
        if depth_weight > budget:
            fitting = max((top for top in DEPTH_LIMITS if request_weight(DEPTH, top) <= budget), default=None)
            expected = f"a limit of at most {fitting}" if fitting else "a larger weight_budget_per_minute"
            problems.append((
                "endpoints.depth.limit",
                f"a depth request with limit {self.endpoints.depth.limit} weighs {depth_weight}, more than "
                f"weight_budget_per_minute {budget}: expected {expected}, got {self.endpoints.depth.limit}",
            ))
        fixed = {"ticker_price": TICKER_PRICE, "trades": TRADES, "klines": KLINES, "ticker_24hr": TICKER_24HR}
        weights = {name: request_weight(endpoint) for name, endpoint in fixed.items()}
        heaviest = max(weights, key=weights.__getitem__)
        need = weights[heaviest]
        if need > budget:
            problems.append((
                "weight_budget_per_minute",
                f"expected an integer >= {need} (one {heaviest} request weighs {need}), got {budget}",
            ))
        return problems


@dataclass(frozen=True)
class ProducerConfig:
    orderbook_retention_seconds: int = setting(3600, min=1, max=366 * 86400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# --- Services ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostgresConfig:
    host: str = setting("127.0.0.1", pattern=r"[^\s]+")
    port: int = setting(5432, min=1, max=65535)
    dbname: str = setting("binance", pattern=r"[^\s]+")
    user: str = setting("producer", pattern=r"[^\s]+")
    password: Secret = Secret("")  # noqa: RUF009 - Secret is immutable
    connect_timeout_seconds: int = setting(10, min=1, max=600)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: tuple[str, ...] = setting(("127.0.0.1:9092",), pattern=HOSTPORT, min_items=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None


@dataclass(frozen=True)
class DebeziumConfig:
    connect_url: str = setting("http://127.0.0.1:8083", pattern=r"https?://[^\s]+")
    connector_name: str = setting("binance-postgres", pattern=r"[A-Za-z0-9_.\-]+")
    topic_prefix: str = setting("binance", pattern=r"[A-Za-z0-9_.\-]+")
    slot_name: str = setting("debezium_binance", pattern=IDENT)
    publication_name: str = setting("debezium_binance", pattern=IDENT)
    user: str = setting("debezium", pattern=r"[^\s]+")
    password: Secret = Secret("")  # noqa: RUF009 - Secret is immutable
    # The host Connect itself uses to reach PostgreSQL: inside compose that is "postgres", not localhost.
    database_host: str | None = None
    database_port: int | None = setting(None, min=1, max=65535)
    decimal_handling_mode: Literal["precise", "string", "double"] = "precise"
    time_precision_mode: Literal["adaptive", "adaptive_time_microseconds", "connect"] = (
        "adaptive_time_microseconds"
    )
    schema: str = setting("public", pattern=IDENT)
    tables: tuple[str, ...] = setting(CAPTURED_TABLES, pattern=IDENT, min_items=1)
    heartbeat_table: str = setting("debezium_heartbeat", pattern=IDENT)
    snapshot_mode: Literal["initial", "no_data", "never", "when_needed", "always"] = "initial"
    heartbeat_interval_ms: int = setting(10000, min=100, max=3_600_000)
    # Members of a consumer group share a topic's partitions (range assignment, topic by topic): a multiple
    # of the members you run balances them; 6 splits evenly among 1, 2, 3 or 6.
    topic_partitions: int = setting(6, min=1, max=1000)
    schemas_enable: bool = True
    # How Connect's producer compresses the change topics (producer.override.compression.type). JSON
    # with schemas repeats each schema in every record: lz4 cuts the bytes ~10x, and the consumer, which
    # unpacks batches in C, spends far less of its single core receiving them.
    compression_type: Literal["lz4", "gzip", "none"] = "lz4"
    register_timeout_seconds: float = setting(120.0, min=1, max=3600)


@dataclass(frozen=True)
class CassandraConfig:
    contact_points: tuple[str, ...] = setting(("127.0.0.1",), pattern=r"[^\s:]+", min_items=1)
    port: int = setting(9042, min=1, max=65535)
    keyspace: str = setting("binance", pattern=IDENT)
    local_datacenter: str = "datacenter1"
    username: str | None = None
    password: Secret | None = None
    ssl_cafile: str | None = None
    request_timeout_seconds: float = setting(10.0, min=0.1, max=600)
    # lz4 compression of the native protocol (the driver uses it whenever lz4 is installed, as it is for
    # Kafka): worth it across a slow network, CPU spent for nothing on loopback or a LAN.
    compression: bool = False


# --- The consumer --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsumerConfig:
    group_id: str = setting("binance-cassandra-sink", pattern=r"[A-Za-z0-9_.\-]+")
    dead_letter_topic: str = setting("binance.dead-letter", pattern=r"[A-Za-z0-9_.\-]+")
    metrics_port: int = setting(9108, min=0, max=65535)
    commit_interval_ms: int = setting(1000, min=10, max=600_000)
    commit_every: int = setting(5000, min=1, max=10_000_000)
    max_in_flight: int = setting(128, min=1, max=10_000)
    max_poll_records: int = setting(2000, min=1, max=100_000)
    truncate: Literal["ignore", "apply"] = "ignore"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Rows of one Cassandra partition sent as one unlogged batch (1: every row is its own request).
    batch_max_rows: int = setting(16, min=1, max=1000)
    # Backoff between retries while Cassandra or Kafka fails (exponential with jitter, capped).
    retry_backoff_initial_seconds: float = setting(0.5, min=0.01, max=600)
    retry_backoff_max_seconds: float = setting(30.0, min=0.01, max=3600)
    # On SIGTERM/SIGINT and on revocation: how long to wait for in-flight writes before committing
    # only what is durable.
    shutdown_timeout_seconds: float = setting(30.0, min=0, max=3600)
    session_timeout_ms: int = setting(45000, min=1000, max=3_600_000)
    # `python -m consumer verify`: the PostgreSQL role that reads the tables (default: postgres.user).
    verify_user: str | None = None
    verify_password: Secret | None = None
    verify_max_differences: int = setting(20, min=1, max=1_000_000)
    # Added to every write timestamp (USING TIMESTAMP = offset + source.lsn): see consumer/mapping.py.
    timestamp_offset: int = setting(0, min=0, max=2**62)


@dataclass(frozen=True)
class MappingConfig:
    """One captured PostgreSQL table carried into one Cassandra table (see consumer/mapping.py).

    Column names in `rename` keys, `day_buckets` values, `ignore_columns`, `decimal_scales`,
    `timestamp_units` and `bucket_unit_by` are PostgreSQL's; in `key`, `rename` values and `day_buckets`
    keys they are Cassandra's.
    """

    table: str = setting(pattern=IDENT)
    target: str = setting(pattern=IDENT)
    # The Cassandra table's primary key, partition key columns first, in Cassandra names.
    key: tuple[str, ...] = setting(pattern=IDENT, min_items=1)
    rename: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    # Cassandra column <- day bucket (a date) of the named timestamp column, for bounded partitions.
    # The bucket is the start of the timestamp's UTC hour, day, month or year: see bucket_unit.
    day_buckets: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    ttl_seconds: int = setting(0, min=0, max=630_720_000)
    # The Kafka topic; default <debezium.topic_prefix>.<debezium.schema>.<table>.
    topic: str | None = setting(None, pattern=r"[A-Za-z0-9_.\-]+")
    # Must match ALTER TABLE ... REPLICA IDENTITY: what a delete (and an update's before) carries.
    replica_identity: Literal["default", "full"] = "default"
    # PostgreSQL columns not carried to Cassandra; any other column Cassandra lacks is a poison message.
    ignore_columns: tuple[str, ...] = setting((), pattern=IDENT)
    # Scale of NUMERIC columns, needed only when messages carry no schema (debezium.schemas_enable
    # false) in decimal_handling_mode precise: one scale for the table, and per-column overrides.
    decimal_scale: int | None = setting(None, min=-1000, max=1000)
    decimal_scales: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), metadata={"min": -1000, "max": 1000}
    )
    # Unit of integer timestamp/time values when messages carry no schema (timestamptz columns are
    # ISO strings and need none): PostgreSQL timestamp(0-3) -> ms, timestamp(4-6) -> us.
    timestamp_units: Mapping[str, Literal["ms", "us", "ns"]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    # Size of every day_buckets bucket: an hour (a timestamp column), a day, a month or a year, optionally
    # picked per row by the value of the column bucket_unit_by (klines: interval 1s -> day, 1m -> month).
    bucket_unit: Literal["hour", "day", "month", "year"] = "day"
    bucket_unit_by: str | None = setting(None, pattern=IDENT)
    bucket_units: Mapping[str, Literal["hour", "day", "month", "year"]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )


@dataclass(frozen=True)
class PipelineConfig:
    binance: BinanceConfig = BinanceConfig()
    producer: ProducerConfig = ProducerConfig()
    postgres: PostgresConfig = PostgresConfig()
    kafka: KafkaConfig = KafkaConfig()
    debezium: DebeziumConfig = DebeziumConfig()
    cassandra: CassandraConfig = CassandraConfig()
    consumer: ConsumerConfig = ConsumerConfig()
    mappings: tuple[MappingConfig, ...] = ()

    def __post_init__(self) -> None:
        dupes = _duplicates(m.table for m in self.mappings)
        if dupes:
            raise ValueError(f"mappings: table mapped more than once: {', '.join(dupes)}")


# --- Loading -------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load(
    path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH, environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Read, interpolate, override and validate the config; raise ConfigError naming every bad path."""
    env = os.environ if environ is None else environ
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        # Not the byte itself: it may be part of a password.
        raise ConfigError([
            f"{path}: not valid UTF-8 at byte offset {exc.start} (line {line}): {exc.reason}; "
            "save the file as UTF-8"
        ]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}:{where} not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of sections at the top level"])
    problems: list[str] = []
    raw = _interpolate(raw, "", env, problems)
    _apply_overrides(raw, env, problems)
    try:
        config = build(PipelineConfig, raw)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _interpolate(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, join_path(path, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if default is not None and "${" in default:
            # The pattern ends at the first "}": with A unset, ${A:-${B}} would become the literal text
            # "${B}", silently.
            found = "a default with ${...} in it" if _is_secret(path) else f'"{value}"'
            problems.append(f"{path}: expected a ${{{name}:-default}} whose default has no ${{...}} "
                            f"(nested defaults are not supported), got {found}")
            return ""
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set (and ${{{name}}} has no :-default)")
        return ""

    return _VAR.sub(substitute, value)


def _is_secret(path: str) -> bool:
    """Whether the setting at a YAML path (`postgres.password`, `mappings[0].table`) is a Secret."""
    return _type_at(PipelineConfig, re.sub(r"\[\d+\]", "", path).split(".")) is Secret


def _apply_overrides(raw: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            problems.append(f"{name}: expected PIPELINE__<SECTION>__<KEY>, got an empty part")
            continue
        target_type = _type_at(PipelineConfig, parts)
        if target_type is None:
            problems.append(f"{'.'.join(parts)} (from {name}): no such setting")
            continue
        node: Any = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{'.'.join(parts)} (from {name}): cannot override inside a non-mapping")
                break
            node = child
        else:
            node[parts[-1]] = _parse_env_value(env[name], target_type)


def _type_at(cls: Any, parts: list[str]) -> Any:
    for part in parts:
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            return None
        hints = get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
        args = [a for a in get_args(cls) if a is not type(None)]
        if get_origin(cls) in (types.UnionType, Union) and len(args) == 1:
            cls = args[0]
    return cls


def _parse_env_value(text: str, target_type: Any) -> Any:
    """Environment values are YAML scalars; a list setting also takes `a,b,c`."""
    if get_origin(target_type) is tuple and not text.lstrip().startswith("["):
        return [item.strip() for item in text.split(",") if item.strip()]
    if target_type in (str, Secret):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
