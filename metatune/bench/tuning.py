"""``metatune bench tuning``: the tuning targets, measured.

* quadratic (κ = 1000, dimension 50, T = 300): the finite-horizon limit is the minimum of
  ℓ(θ_T) over a dense (η, β) grid (two vmapped populations: the whole space, then a zoom
  around its best); TPE's best after 100 trials and metagrad's best within 10 % of TPE's
  budget are reported as multiples of it.
* digits objectives: the budget metagrad needs to reach the best loss TPE finds in 100
  trials, as a fraction of TPE's budget.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import metatune as mt
from metatune.bench.common import machine

NAME, HELP = "tuning", "the tuning targets: metagrad against the grid limit and TPE at a fraction of its budget"


def grid_minimum(objective: mt.objectives.Objective, seed: int, side: int = 128) -> tuple[float, float, float]:
    """(min ℓ(θ_T), η, β) over a side × side grid of the space, then over a zoom around its best."""
    params, batches = objective.init_params(seed), objective.batches(seed, objective.steps)
    space = objective.space
    lr_box = (math.log(space.lr_low), math.log(space.lr_high))
    momentum_box = (space.momentum_low, space.momentum_high)
    best = (math.inf, math.nan, math.nan)
    for _ in range(2):
        lrs = np.exp(np.linspace(*lr_box, side))
        momenta = np.linspace(*momentum_box, side)
        lr_mesh, momentum_mesh = (a.ravel() for a in np.meshgrid(lrs, momenta))
        result = mt.train_population(objective.train_loss, objective.val_loss, params, lr_mesh.tolist(),
                                     momentum_mesh.tolist(), objective.steps, batches, chunk_size=4096)
        values = torch.where(result.diverged, math.inf, result.values)
        index = int(values.argmin())
        if float(values[index]) < best[0]:
            best = (float(values[index]), float(lr_mesh[index]), float(momentum_mesh[index]))
        lr_step, momentum_step = (lr_box[1] - lr_box[0]) / side, (momentum_box[1] - momentum_box[0]) / side
        lr_box = (math.log(best[1]) - 4 * lr_step, math.log(best[1]) + 4 * lr_step)
        momentum_box = (max(best[2] - 4 * momentum_step, 0.0), min(best[2] + 4 * momentum_step, 0.999999))
    return best


def quadratic_rows(seeds: list[int], fraction: float) -> list[dict]:
    objective = mt.objectives.get("quadratic", dim=50, kappa=1000.0, steps=300)
    tpe_budget = 100 * (objective.steps + 1)
    rows = []
    for seed in seeds:
        started = time.perf_counter()
        limit, lr, momentum = grid_minimum(objective, seed)
        rows.append({"objective": "quadratic", "seed": seed, "method": "grid limit", "budget": 2 * 128 * 128 * 301,
                     "best": limit, "lr": lr, "momentum": momentum, "seconds": time.perf_counter() - started,
                     "x limit": 1.0})
        for method, budget, options in (("tpe", tpe_budget, {}),
                                        ("metagrad", fraction * tpe_budget, {"mode": "forward"}),
                                        ("metagrad", fraction * tpe_budget, {"mode": "reverse"})):
            result = mt.tune(objective, method, budget=budget, seed=seed, **options)
            label = method + (f" ({options['mode']})" if options else "")
            rows.append({"objective": "quadratic", "seed": seed, "method": label, "budget": result.gradient_evals,
                         "best": result.best_value, "lr": result.best_lr, "momentum": result.best_momentum,
                         "seconds": result.wall_time, "x limit": result.best_value / limit})
    return rows


def digits_rows(name: str, seeds: list[int], fractions: list[float], mode: str, guard: bool = True) -> list[dict]:
    objective = mt.objectives.get(name)
    tpe_budget = 100 * (objective.steps + 1)
    rows = []
    for seed in seeds:
        tpe = mt.tune(objective, "tpe", budget=tpe_budget, seed=seed)
        rows.append({"objective": name, "seed": seed, "method": "tpe (100 trials)", "budget": tpe.gradient_evals,
                     "best": tpe.best_value, "lr": tpe.best_lr, "momentum": tpe.best_momentum,
                     "seconds": tpe.wall_time, "reached tpe": True})
        for fraction in fractions:
            result = mt.tune(objective, "metagrad", budget=fraction * tpe_budget, seed=seed, mode=mode, guard=guard)
            label = f"metagrad ({mode}{'' if guard else ', no guard'}, {fraction:.0%} of tpe)"
            rows.append({"objective": name, "seed": seed, "method": label,
                         "budget": result.gradient_evals, "best": result.best_value, "lr": result.best_lr,
                         "momentum": result.best_momentum, "seconds": result.wall_time,
                         "reached tpe": result.best_value <= tpe.best_value})
    return rows


def columns(rows: list[dict]) -> list[str]:
    """The columns after "objective": the first row's keys, then any others in sorted order."""
    keys = [k for k in rows[0] if k != "objective"] if rows else []
    return keys + sorted({k for row in rows for k in row} - set(keys) - {"objective"})


def table(rows: list[dict], *, header: bool = True) -> str:
    """``rows`` as Markdown table lines; ``header=False`` continues a table printed before."""
    keys = columns(rows)
    lines = ["| objective | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"] if header else []
    for row in rows:
        cells = [_cell(row.get(k, "")) for k in keys]
        lines.append(f"| {row['objective']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", default="quadratic,logistic-digits,mlp-digits,cnn-digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", default="0.1,0.25,0.5", help="metagrad budgets as fractions of TPE's")
    parser.add_argument("--mode", default="reverse", choices=["forward", "reverse"], help="metagrad on digits")
    parser.add_argument("--no-guard", action="store_true", help="metagrad on digits without the θ₀ stability guard")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(f"metatune bench tuning: {args.threads} thread(s); {machine()}", flush=True)
    seeds = list(range(args.seeds))
    fractions = [float(x) for x in args.fractions.split(",")]
    shown: list[str] | None = None
    for name in [n.strip() for n in args.objectives.split(",") if n.strip()]:
        if name == "quadratic":
            rows = quadratic_rows(seeds, fractions[0])
        else:
            rows = digits_rows(name, seeds, fractions, args.mode, guard=not args.no_guard)
        # one table while the columns stay the same (the digits objectives share theirs)
        print(table(rows, header=columns(rows) != shown), flush=True)
        shown = columns(rows)
    return 0

