"""``metatune bench …``: benchmarks that print figures (recorded with their commands in BENCHMARKS.md).

Speed and memory targets live here, not in timed tests. A package adds a benchmark through the
``metatune.benchmarks`` entry-point group: a module with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``main(args)``, as the built-in ones (the service's is
``metatune_service.bench``).
"""

from __future__ import annotations

import argparse
from types import ModuleType

from metatune import plugins
from metatune.bench import cost, hypergrad, population, ray, schedule, tuning

BUILT_IN = (hypergrad, population, tuning, schedule, cost, ray)
BENCHMARKS_GROUP = "metatune.benchmarks"


def benchmarks() -> tuple[ModuleType, ...]:
    """The built-in benchmarks, then those of installed packages (one that fails to import is
    named on stderr and skipped)."""
    return (*BUILT_IN, *plugins.load(BENCHMARKS_GROUP, "metatune bench"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per benchmark, each with its own options."""
    which = parser.add_subparsers(dest="what", required=True)
    for module in benchmarks():
        sub = which.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        sub.add_argument("--device", default="cpu", help="cpu or cuda")
        sub.add_argument("--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md)")
        sub.add_argument("--json", default=None, help="also write the rows to this JSON file")
        module.add_arguments(sub)
        sub.set_defaults(run_benchmark=module.main)


def main(args: argparse.Namespace) -> int:
    return args.run_benchmark(args)
