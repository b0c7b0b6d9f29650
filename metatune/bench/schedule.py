"""``metatune bench schedule``: learned η_t and β_t schedules against black-box search.

Per objective and seed, every method's best point is trained by a plain ``torch.optim.SGD``
loop with the point's η_t and β_t set in its parameter groups before each step
(:func:`metatune.bench.tuning.sgd_value`) and scored by ℓ_val:

* TPE after 100 trials over one constant (η, β);
* TPE after 100 trials over the warm-up + cosine family (peak η, β, warm-up and final
  fractions: the practitioner's schedule);
* TPE after 100 trials over the same K-knot space metagrad searches;
* metagrad over K knots at ``--fraction`` of TPE's gradient evaluations.

Targets (median over seeds of metagrad's value over the reference's): ≤ 0.97× the best
constant, ≤ 1.0× the best warm-up + cosine, ≤ 1.0× TPE over the knots.
"""

from __future__ import annotations

import argparse

import torch

import metatune as mt
from metatune.bench.common import machine
from metatune.bench.tuning import _names, _run, columns, summary, table

NAME, HELP = "schedule", "learned η/β schedules (metagrad over K knots) against TPE's constant, cosine and knots"

UNSEEN = ("mlp-cancer",)
"""Objectives added before any tuner ran on them: no choice was made on their rows."""

COSINE = {"shape": "warmup-cosine"}


def schedule_rows(name: str, seeds: list[int], knots: int, fraction: float) -> list[dict]:
    objective = mt.objectives.get(name)
    budget = 100 * (objective.steps + 1)
    rows = []
    for seed in seeds:
        rows.append(_run(objective, name, "tpe", budget, seed, "tpe constant"))
        rows.append(_run(objective, name, "tpe", budget, seed, "tpe warm-up + cosine", schedule=COSINE))
        rows.append(_run(objective, name, "tpe", budget, seed, f"tpe {knots} knots", schedule=knots))
        rows.append(_run(objective, name, "metagrad", fraction * budget, seed,
                         f"metagrad {knots} knots ({fraction:.0%})", schedule=knots))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", default="mlp-digits,rnn-sequence,mlp-cancer,cnn-digits",
                        help="objectives (cnn-digits takes ~3 minutes per TPE run here)")
    parser.add_argument("--knots", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.3, help="metagrad's budget as a fraction of TPE's")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(f"metatune bench schedule: {args.threads} thread(s); {machine()}", flush=True)
    seeds, knots, fraction = list(range(args.seeds)), args.knots, args.fraction
    ours = f"metagrad {knots} knots ({fraction:.0%})"
    targets, shown = [], None
    for name in _names(args.objectives):
        rows = schedule_rows(name, seeds, knots, fraction)
        print(table(rows, header=columns(rows) != shown), flush=True)
        shown = columns(rows)
        for reference, target in (("tpe constant", 0.97), ("tpe warm-up + cosine", 1.0), (f"tpe {knots} knots", 1.0)):
            row = summary(rows, reference, ours, target)
            row["unseen"] = name in UNSEEN
            targets.append(row)
    print("\nTargets (SGD-judged value of metagrad's best over the reference's; median [min, max] over seeds):")
    print(table(targets), flush=True)
    return 0
