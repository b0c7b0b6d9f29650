"""``metatune bench …``: benchmarks that print figures (recorded with their commands in BENCHMARKS.md).

Speed and memory targets live here, not in timed tests.
"""

from __future__ import annotations

import argparse

from metatune.bench import cost, hypergrad, population, ray, service, tuning

BENCHMARKS = (hypergrad, population, tuning, cost, ray, service)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per benchmark, each with its own options."""
    which = parser.add_subparsers(dest="what", required=True)
    for module in BENCHMARKS:
        sub = which.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md)")
        sub.add_argument("--json", default=None, help="also write the rows to this JSON file")
        module.add_arguments(sub)
        sub.set_defaults(run_benchmark=module.main)


def main(args: argparse.Namespace) -> int:
    return args.run_benchmark(args)
