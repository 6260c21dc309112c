"""TLS, SASL and login settings in the YAML reach the Kafka and Cassandra drivers as the drivers expect."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import certifi
import pytest
from cassandra.auth import PlainTextAuthProvider
from fake_secrets import fake_secret
from kafka import KafkaConsumer

from consumer.app import kafka_client_config
from consumer.sink import CassandraSink
from pipeline.clients import kafka_client_options
from pipeline.config import PipelineConfig, load

KAFKA_SECRET = fake_secret("kafka")
CQL_SECRET = fake_secret("cql")

CA = certifi.where()   # any valid PEM bundle: the context must load it


def _config(tmp_path: Path, yaml_text: str, env: dict[str, str] | None = None) -> PipelineConfig:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml_text)
    return load(path, environ=env or {})


def test_kafka_sasl_ssl_settings_become_kafka_python_options(tmp_path: Path) -> None:
    config = _config(tmp_path, f"""
kafka:
  bootstrap_servers: [broker-1:9094, broker-2:9094]
  security_protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: pipeline
  sasl_password: ${{KAFKA_PASSWORD}}
  ssl_cafile: {CA}
""", {"KAFKA_PASSWORD": KAFKA_SECRET})
    options = kafka_client_options(config.kafka)
    assert options == {
        "bootstrap_servers": ["broker-1:9094", "broker-2:9094"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pipeline",
        "sasl_plain_password": KAFKA_SECRET,
        "ssl_cafile": CA,
    }
    # The consumer's own settings add reconnection only, and kafka-python accepts every key.
    consumer_options = kafka_client_config(config.kafka)
    assert {k: consumer_options[k] for k in options} == options
    unknown = set(consumer_options) - set(KafkaConsumer.DEFAULT_CONFIG)
    assert not unknown, unknown
    assert KAFKA_SECRET not in repr(config)


def test_plaintext_kafka_sends_no_security_options(tmp_path: Path) -> None:
    options = kafka_client_options(_config(tmp_path, "kafka:\n  bootstrap_servers: [k:9092]\n").kafka)
    assert options == {"bootstrap_servers": ["k:9092"], "security_protocol": "PLAINTEXT"}


def test_cassandra_login_and_tls_reach_the_driver(tmp_path: Path) -> None:
    config = _config(tmp_path, f"""
cassandra:
  contact_points: [127.0.0.1, 127.0.0.2]
  username: pipeline
  password: ${{CASSANDRA_PASSWORD}}
  ssl_cafile: {CA}
""", {"CASSANDRA_PASSWORD": CQL_SECRET})
    cluster: Any = CassandraSink(config.cassandra)._build_cluster()
    try:
        auth = cluster.auth_provider
        assert isinstance(auth, PlainTextAuthProvider)
        assert (auth.username, auth.password) == ("pipeline", CQL_SECRET)
        context = cluster.ssl_context
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.get_ca_certs(), "the CA file was loaded"
        assert cluster.contact_points == ["127.0.0.1", "127.0.0.2"]
    finally:
        cluster.shutdown()


def test_cassandra_without_login_or_tls_sends_neither(tmp_path: Path) -> None:
    cluster: Any = CassandraSink(_config(tmp_path, "cassandra:\n  port: 9042\n").cassandra)._build_cluster()
    try:
        assert cluster.auth_provider is None and cluster.ssl_context is None
    finally:
        cluster.shutdown()


def test_cql_compression_is_off_unless_configured(tmp_path: Path) -> None:
    # The driver turns lz4 on by itself whenever lz4 is installed, as it is for Kafka.
    cases = (("cassandra:\n  port: 9042\n", False), ("cassandra:\n  compression: true\n", True))
    for yaml_text, want in cases:
        cluster: Any = CassandraSink(_config(tmp_path, yaml_text).cassandra)._build_cluster()
        try:
            assert cluster.compression is want
        finally:
            cluster.shutdown()


def test_a_missing_ca_file_is_an_error_naming_it(tmp_path: Path) -> None:
    config = _config(tmp_path, "cassandra:\n  ssl_cafile: /nonexistent/ca.pem\n")
    with pytest.raises((OSError, ssl.SSLError)):
        CassandraSink(config.cassandra)._build_cluster()


def test_contact_points_that_do_not_resolve_are_an_outage_not_a_crash(tmp_path: Path) -> None:
    from consumer.errors import SinkUnavailableError

    config = _config(tmp_path, "cassandra:\n  contact_points: [no-such-host.invalid]\n")
    with pytest.raises(SinkUnavailableError, match=r"no-such-host\.invalid do not resolve"):
        CassandraSink(config.cassandra).connect()
