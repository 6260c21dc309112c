"""Command-line plumbing every stage shares: `--config`, logging, and exit status 2 for bad config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence

from pipeline.config import DEFAULT_CONFIG_PATH, ConfigError, PipelineConfig, load, to_plain

EXIT_CONFIG = 2


class StopSignals:
    """Counts SIGTERM/SIGINT: the first asks for a clean stop, a later one for an immediate exit.

    A signal within REPEAT_WINDOW seconds of the first is the same request delivered twice, not a second
    one: a terminal's Ctrl-C reaches every process of the group (make and its child; the consumer's
    `--workers` parent, which also forwards it), and GNU timeout signals both the child and its group."""

    REPEAT_WINDOW = 1.0

    def __init__(self) -> None:
        self.first: float | None = None

    def is_second(self) -> bool:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            return False
        return now - self.first >= self.REPEAT_WINDOW


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        metavar="PATH",
        help=f"pipeline YAML (default: {DEFAULT_CONFIG_PATH})",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_or_exit(path: str) -> PipelineConfig:
    """Load the config; on any problem print every message and exit 2, never a traceback."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"config error in {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def show_config(config: PipelineConfig) -> str:
    """The effective config as JSON, secrets masked."""
    return json.dumps(to_plain(config), indent=2)


def main_config(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline [check|show|get KEY [--reveal]]`: validate and print the effective config.

    Secrets are masked, also by `get`, unless `--reveal` is given.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=main_config.__doc__)
    add_config_argument(parser)
    parser.add_argument("command", choices=["check", "show", "get"], nargs="?", default="show")
    parser.add_argument("key", nargs="?", help="dotted key for `get`, e.g. postgres.port")
    parser.add_argument("--reveal", action="store_true",
                        help="`get` prints a secret in clear (for scripts); masked otherwise")
    args = parser.parse_args(argv)
    config = load_or_exit(args.config)
    if args.command == "show":
        print(show_config(config))
    elif args.command == "get":
        # A terminal, a CI log or a shell history is no place for a password unless asked for by name.
        value = to_plain(config, reveal=args.reveal)
        for part in (args.key or "").split("."):
            if not isinstance(value, dict) or part not in value:
                print(f"{args.key}: no such setting", file=sys.stderr)
                return EXIT_CONFIG
            value = value[part]
        print(" ".join(map(str, value)) if isinstance(value, list) else value)
    else:
        print(f"{args.config}: ok")
    return 0


def run(main: Callable[[], int]) -> None:
    """Run a program's main, turning Ctrl-C before the program installs its handlers into exit 130."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
