"""`python -m producer [--config PATH] [--once]`, and `python -m producer backfill ...`."""

from __future__ import annotations

import sys

from pipeline.cli import run


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["backfill"]:
        from producer.backfill import main as backfill_main

        return backfill_main(argv[1:])
    from producer.app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    run(main)
