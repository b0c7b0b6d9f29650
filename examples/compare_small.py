"""A small equal-budget comparison: metagrad against Optuna's TPE and CMA-ES and random search.

About 20 seconds: it runs on one thread (torch.set_num_threads(1)) and took 17 s wall time
(15 s CPU) on a shared 2-core machine. Writes a JSON file and two plots under metatune-out/.
Run:  .venv/bin/python examples/compare_small.py
"""

import os

import torch

import metatune as mt

torch.set_num_threads(1)
objective = mt.objectives.get("quadratic", dim=20, kappa=300.0, steps=150)
comparison = mt.compare(objective, methods=["metagrad", "tpe", "cmaes", "random"], budget=6_000, seeds=range(3))
print(comparison.table())
os.makedirs("metatune-out", exist_ok=True)
with open("metatune-out/compare-small.json", "w") as out:
    out.write(comparison.to_json())
print("plots:", comparison.plot("metatune-out/compare-small"))
