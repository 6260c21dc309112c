"""The consumer's exceptions: one root; transient (retry) and permanent (dead-letter) told apart.

    ConsumerError
    ├── TransientError            retry the same batch later: nothing is wrong with the data
    │   ├── SinkUnavailableError  Cassandra is down, overloaded or timing out
    │   └── KafkaUnavailableError the brokers are unreachable
    └── PermanentError            retrying the same message cannot help
        └── PoisonMessageError    one message cannot be decoded or mapped: dead-letter it, go on

`PoisonMessageError.reason` is a short slug from a small fixed set (safe as a metric label and a
dead-letter header); `where` names the part of the message at fault (e.g. `value.payload.after.price`);
`detail` says what exactly was wrong, for people.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Root of every error the consumer raises."""


class TransientError(ConsumerError):
    """Worth retrying later, with the same messages: a service is away, not the data wrong."""


class SinkUnavailableError(TransientError):
    """Cassandra refused, timed out or is unreachable."""


class KafkaUnavailableError(TransientError):
    """The Kafka brokers are unreachable or refuse the consumer."""


class PermanentError(ConsumerError):
    """Retrying cannot help."""


class PoisonMessageError(PermanentError):
    """One Kafka message cannot be decoded or mapped to a Cassandra write: dead-letter it.

    `reason` is one of REASONS; `where` is a dotted path into the message (`key`, `value.payload.op`,
    `value.payload.after.price`, ...) or a column name; `detail` is free text.
    """

    REASONS = frozenset({
        "not_json",        # the key or value is not valid JSON
        "bad_envelope",    # valid JSON, but not a Debezium change event (schema/payload/op/source shape)
        "bad_op",          # an op other than c, u, d, r, t, m
        "bad_value",       # a column value does not fit its type (bad base64, bad timestamp, overflow ...)
        "missing_value",   # a value the mapping needs is absent (a key column, a bucket's timestamp)
        "no_scale",        # a precise decimal without a schema and without a configured scale
        "no_unit",         # an integer time without a schema and without a configured unit
        "unknown_column",  # a column the Cassandra table does not have and the mapping does not ignore
        "no_position",     # no usable source.lsn, so the change cannot be ordered
        "wrong_table",     # source.table is not the table the record's topic is mapped from
        "undecodable",     # anything else that went wrong while decoding (a bug, or a very odd message)
    })

    def __init__(self, reason: str, where: str = "", detail: str = "") -> None:
        self.reason = reason if reason in self.REASONS else "undecodable"
        self.where = where
        self.detail = detail
        self.topic: str | None = None
        self.partition: int | None = None
        self.offset: int | None = None
        super().__init__(self._text())

    def locate(self, topic: str, partition: int, offset: int) -> PoisonMessageError:
        """Record which Kafka message this is about (done by `decode`); returns self."""
        self.topic, self.partition, self.offset = topic, partition, offset
        self.args = (self._text(),)
        return self

    def _text(self) -> str:
        at = f"{self.topic}[{self.partition}]@{self.offset} " if self.topic is not None else ""
        where = f"{self.where}: " if self.where else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{at}{where}{self.reason}{detail}"
