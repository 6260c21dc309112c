"""Micro-benchmark of consumer.decode.decode on real captured Debezium messages (no stack needed).

    .venv/bin/python bench/decode_micro.py [--records 20000] [--repeat 5] [--no-cache]

Decodes the records of the schemas-enabled captures (tests/fixtures/debezium/captured_schemas-true_*.jsonl:
the JsonConverter bytes exactly as Kafka held them), cycled up to --records, with the pipeline's decode
hints (config/pipeline.yaml + infra/cassandra-init.cql), and prints the best of --repeat runs in
µs/record. --no-cache turns decode's schema cache off (the full parse of every message, as before).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer import decode as decode_module  # noqa: E402
from consumer.decode import DecodeHints, decode  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from fake_secrets import PIPELINE_ENV  # type: ignore[import-not-found]  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "debezium"


def load_records() -> list[tuple[str, int, int, bytes | None, bytes | None]]:
    out = []
    for path in sorted(FIXTURES.glob("captured_schemas-true_*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if r["value"] is None or r["topic"].startswith("__debezium-heartbeat"):
                continue
            key = r["key"].encode() if r["key"] is not None else None
            out.append((r["topic"], r.get("partition", 0), r.get("offset", 0), key, r["value"].encode()))
    return out


def pipeline_hints() -> DecodeHints | None:
    try:
        from consumer.mapping import build_mappings, parse_cql
        from pipeline.config import load

        # The config needs its ${...} variables set; this bench connects to nothing, so stand-ins do.
        config = load(ROOT / "config" / "pipeline.yaml", PIPELINE_ENV)
        cql = parse_cql((ROOT / "infra" / "cassandra-init.cql").read_text())
        hints: Any = build_mappings(config, cql).decode_hints
        return hints  # type: ignore[no-any-return]
    except Exception as exc:   # the bench still runs, without hints
        print(f"(no pipeline hints: {type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-cache", action="store_true", help="disable decode's schema cache")
    args = ap.parse_args()

    configure = getattr(decode_module, "configure_schema_cache", None)
    if configure is not None:
        configure(0 if args.no_cache else 256)
        mode = "cache off" if args.no_cache else "cache on"
    else:
        mode = "no schema cache in this decode.py"
    records = load_records()
    work = list(itertools.islice(itertools.cycle(records), args.records))
    hints = pipeline_hints()
    changes = sum(1 for r in records if decode(*r, hints) is not None)

    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for topic, partition, offset, key, value in work:
            decode(topic, partition, offset, key, value, hints)
        best = min(best, time.perf_counter() - t0)
    avg_bytes = sum(len(r[4] or b"") + len(r[3] or b"") for r in records) / len(records)
    print(
        f"decode ({mode}): {best / len(work) * 1e6:.1f} µs/record  "
        f"[{len(records)} distinct captured records ({changes} changes, avg {avg_bytes:.0f} B key+value), "
        f"{len(work)} decodes, best of {args.repeat}]"
    )


if __name__ == "__main__":
    main()
