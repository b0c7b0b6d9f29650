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

``--memory``: one meta-gradient on mlp-digits at T = ``--memory-steps`` (1,000) for one
constant (η, β) and for ``--memory-knots`` (16) knots, each in a fresh child process after a
3-step warm-up, in the mode ``"auto"`` picks and in reverse mode checkpointed every ⌈√T⌉
steps: seconds and peak resident memory above the start (RSS sampled every 2 ms).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

import metatune as mt
from metatune.bench.common import PeakSampler, machine, measure_in_child
from metatune.hypergrad import resolve
from metatune.plots import save, schedule_figure
from metatune.schedule import Knots
from metatune.bench.tuning import _names, _run, columns, summary, table

NAME, HELP = "schedule", "learned η/β schedules (metagrad over K knots) against TPE's constant, cosine and knots"

UNSEEN = ("mlp-cancer",)
"""Objectives added before any tuner ran on them: no choice was made on their rows."""

COSINE = {"shape": "warmup-cosine"}


def schedule_rows(name: str, seeds: list[int], knots: int, fraction: float, plots: str | None = None) -> list[dict]:
    """The four runs per seed; with ``plots``, the first seed's best schedules drawn to
    ``<plots>/<name>-schedules.png``."""
    objective = mt.objectives.get(name)
    budget = 100 * (objective.steps + 1)
    rows = []
    for seed in seeds:
        best: dict = {}
        rows.append(_run(objective, name, "tpe", budget, seed, "tpe constant", best))
        rows.append(_run(objective, name, "tpe", budget, seed, "tpe warm-up + cosine", best, schedule=COSINE))
        rows.append(_run(objective, name, "tpe", budget, seed, f"tpe {knots} knots", best, schedule=knots))
        rows.append(_run(objective, name, "metagrad", fraction * budget, seed,
                         f"metagrad {knots} knots ({fraction:.0%})", best, schedule=knots))
        if plots and seed == seeds[0]:
            figure = schedule_figure(best, objective.steps, title=f"{name}, seed {seed}: best schedules")
            print(f"wrote {save(figure, os.path.join(plots, f'{name}-schedules.png'))}", flush=True)
    return rows


@dataclass(frozen=True)
class MemoryTask:
    """One meta-gradient on mlp-digits: ``knots`` per hyperparameter (1: constant), ``mode``
    "auto" or "checkpointed" (reverse, every ⌈√T⌉ steps)."""

    knots: int
    steps: int
    mode: str
    threads: int = 1


def measure_memory(task: MemoryTask) -> dict:
    """Seconds and peak resident MB above the start of one meta-gradient (run in a child)."""
    torch.set_num_threads(task.threads)
    objective = mt.objectives.get("mlp-digits", steps=task.steps)
    params, batches = objective.init_params(0), objective.batches(0, task.steps)
    lr, momentum = (0.5, 0.5) if task.knots == 1 else (Knots([0.5] * task.knots), Knots([0.5] * task.knots))
    options = {"mode": "auto"} if task.mode == "auto" else {"mode": "reverse",
                                                           "checkpoint": math.ceil(math.sqrt(task.steps))}
    mt.hypergrad(objective.train_loss, objective.val_loss, params, 0.5, 0.5, 3, batches, mode="reverse")  # warm-up
    plan = resolve("auto", objective.train_loss, params, task.steps, batches[0])
    with PeakSampler() as sampler:
        started = time.perf_counter()
        result = mt.hypergrad(objective.train_loss, objective.val_loss, params, lr, momentum, task.steps, batches,
                              **options)
        seconds = time.perf_counter() - started
    chosen = f"{plan.mode}" + (f", checkpoint {plan.checkpoint}" if plan.checkpoint else "") \
        if task.mode == "auto" else f"reverse, checkpoint {options['checkpoint']}"
    return {**asdict(task), "ran": chosen, "hyperparameters": 2 * task.knots, "seconds": seconds,
            "peak_mb": sampler.peak / 2**20, "value": result.value}


def memory_rows(knots: int, steps: int, threads: int) -> list[dict]:
    """A constant and a ``knots``-knot meta-gradient, in "auto" and checkpointed mode, each in a child."""
    rows = []
    for mode in ("auto", "checkpointed"):
        for k in (1, knots):
            row = measure_in_child(measure_memory, MemoryTask(k, steps, mode, threads))
            rows.append({"objective": "mlp-digits", **{key: v for key, v in row.items() if key != "threads"}})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", default="mlp-digits,rnn-sequence,mlp-cancer,cnn-digits",
                        help="objectives (cnn-digits takes ~3 minutes per TPE run here)")
    parser.add_argument("--knots", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.3, help="metagrad's budget as a fraction of TPE's")
    parser.add_argument("--plots", default=None, help="draw each objective's best schedules (first seed) here")
    parser.add_argument("--memory", action="store_true", help="also time one meta-gradient's memory (module doc)")
    parser.add_argument("--memory-knots", type=int, default=16)
    parser.add_argument("--memory-steps", type=int, default=1000)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(f"metatune bench schedule: {args.threads} thread(s); {machine()}", flush=True)
    if args.memory:
        rows = memory_rows(args.memory_knots, args.memory_steps, args.threads)
        print(table(rows), flush=True)
    seeds, knots, fraction = list(range(args.seeds)), args.knots, args.fraction
    ours = f"metagrad {knots} knots ({fraction:.0%})"
    targets, shown = [], None
    for name in _names(args.objectives):
        rows = schedule_rows(name, seeds, knots, fraction, args.plots)
        print(table(rows, header=columns(rows) != shown), flush=True)
        shown = columns(rows)
        for reference, target in (("tpe constant", 0.97), ("tpe warm-up + cosine", 1.0), (f"tpe {knots} knots", 1.0)):
            row = summary(rows, reference, ours, target)
            row["unseen"] = name in UNSEEN
            targets.append(row)
    if targets:
        print("\nTargets (SGD-judged value of metagrad's best over the reference's; median [min, max] over seeds):")
        print(table(targets), flush=True)
    return 0
