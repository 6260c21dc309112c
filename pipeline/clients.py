"""Client settings derived from the config, shared by every program that talks to the services."""

from __future__ import annotations

from typing import Any

from pipeline.config import KafkaConfig


def kafka_client_options(kafka: KafkaConfig) -> dict[str, Any]:
    """kafka-python settings for the configured cluster and its security (SASL, TLS)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.reveal() if kafka.sasl_password else None
    if kafka.ssl_cafile:
        options["ssl_cafile"] = kafka.ssl_cafile
    return options
