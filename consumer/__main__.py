"""`python -m consumer`: run members of the consumer group, or verify Cassandra against PostgreSQL.

    python -m consumer [--config PATH] [--workers N]     N members (processes) of consumer.group_id
    python -m consumer verify [--config PATH] [...]      compare every mapped table; exit 1 on differences

Exit status: 0 after a clean stop (SIGTERM/SIGINT: drain, commit, close), 1 on a fatal error,
2 on a bad config; a second signal exits at once with 128+signal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from consumer.app import Member, quiet_kafka_logging, worker_main
from pipeline.cli import StopSignals, add_config_argument, load_or_exit, run, setup_logging

log = logging.getLogger("consumer")


def run_members(config_path: str, workers: int) -> int:
    config = load_or_exit(config_path)
    setup_logging(config.consumer.log_level)
    quiet_kafka_logging()
    if workers == 1:
        return Member(config).run()

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=worker_main, args=(config_path, i, os.getpid()), name=f"consumer-{i}", daemon=False
        )
        for i in range(workers)
    ]
    stopping = False   # the members were told to stop (a signal, or one member failed)
    stop_signals = StopSignals()

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        second = stop_signals.is_second()
        log.info("%s: forwarding to %d workers", signal.Signals(signum).name, len(procs))
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)
        if second:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.start()
    log.info("started %d members of group %s: pids %s", workers, config.consumer.group_id,
             ", ".join(str(p.pid) for p in procs))
    code = 0
    while any(p.is_alive() for p in procs):
        for p in procs:
            p.join(timeout=0.2)
            if not p.is_alive() and p.exitcode not in (0, None) and code == 0:
                code = p.exitcode if p.exitcode > 0 else 128 - p.exitcode
                if not stopping:
                    log.error("%s exited with %s; stopping the other members", p.name, p.exitcode)
                    for other in procs:
                        if other.is_alive() and other.pid is not None:
                            os.kill(other.pid, signal.SIGTERM)
                    stopping = True
        time.sleep(0.05)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "verify":
        from consumer.verify import main as verify_main

        return verify_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="python -m consumer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(parser)
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="members of the consumer group to run as processes (default 1)")
    args = parser.parse_args(args_list)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return run_members(args.config, args.workers)


if __name__ == "__main__":
    run(main)
