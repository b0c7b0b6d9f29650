"""Short-horizon bias: the (η, β) that metagrad picks with horizons T = 10, 100, 1000 on
mlp-digits, judged by what they give in a 1000-step run, against the best (η, β) for a
1000-step run found by a dense vmapped grid.

Run:  .venv/bin/python examples/short_horizon_bias.py      (several minutes on 2 CPU cores)
"""

import numpy as np
import torch

import metatune as mt
from metatune.population import train_population

torch.set_num_threads(1)
LONG = 1000
long_run = mt.objectives.get("mlp-digits", steps=LONG)
params, batches = long_run.init_params(0), long_run.batches(0, LONG)


def long_run_loss(lrs, momenta):
    """Validation loss after a 1000-step run at each (η, β)."""
    result = train_population(long_run.train_loss, long_run.val_loss, params, lrs, momenta, LONG, batches)
    return result.values


grid_lr = np.geomspace(long_run.space.lr_low, long_run.space.lr_high, 24)
grid_momentum = np.array([0.0, 0.5, 0.8, 0.9, 0.95, 0.99])
lr_mesh, momentum_mesh = (a.ravel() for a in np.meshgrid(grid_lr, grid_momentum))
values = long_run_loss(lr_mesh.tolist(), momentum_mesh.tolist())
best = int(torch.nan_to_num(values, nan=float("inf")).argmin())
print(f"best for a {LONG}-step run (grid of {len(lr_mesh)}): lr={lr_mesh[best]:.4g} momentum={momentum_mesh[best]:.3g} "
      f"val loss={float(values[best]):.4f}")
print("| horizon T | method | chosen lr | chosen momentum | val loss after 1000 steps | × best lr |")
print("|---|---|---|---|---|---|")
for horizon in (10, 100, 1000):
    for method, options in (("metagrad", {"mode": "reverse"}), ("online", {"horizon": horizon})):
        objective = mt.objectives.get("mlp-digits", steps=horizon if method == "metagrad" else LONG)
        budget = 30 * mt.costs.DEFAULT.hypergrad("reverse", objective.steps)
        result = mt.tune(objective, method, budget=budget, seed=0, **options)
        judged = float(long_run_loss([result.best_lr], [result.best_momentum])[0])
        print(f"| {horizon} | {method} | {result.best_lr:.4g} | {result.best_momentum:.3g} | {judged:.4f} | "
              f"{result.best_lr / lr_mesh[best]:.2f} |")
