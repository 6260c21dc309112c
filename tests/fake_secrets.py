"""Made-up secrets for tests, drawn at import: no password-like literal is committed, and a test that
checks a secret is masked cannot pass by luck of a fixed string. (tests/ is on sys.path: its conftest.)"""

from __future__ import annotations

import secrets


def fake_secret(label: str = "secret") -> str:
    """A new random stand-in password, e.g. 'debezium-3f9a0c1d2e4b5a69'."""
    return f"{label}-{secrets.token_hex(8)}"


# The variables config/pipeline.yaml reads, as a test hands them to pipeline.config.load.
PIPELINE_ENV: dict[str, str] = {
    name: fake_secret(name.removesuffix("_PASSWORD").lower())
    for name in ("PRODUCER_PASSWORD", "DEBEZIUM_PASSWORD", "CASSANDRA_PASSWORD")
}
# And the stack's own (.env): the PostgreSQL superuser's too.
STACK_ENV: dict[str, str] = {"POSTGRES_PASSWORD": fake_secret("postgres"), **PIPELINE_ENV}
