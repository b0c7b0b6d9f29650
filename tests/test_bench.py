"""The benchmark commands produce the rows they promise (figures themselves go to BENCHMARKS.md)."""

from __future__ import annotations

import pytest

import metatune as mt
from metatune.bench import hypergrad as bench_hypergrad
from metatune.bench.tuning import grid_minimum
from metatune.cli import main


def test_forward_memory_is_flat_and_reverse_memory_grows_with_the_horizon():
    rows = {
        (method, steps): bench_hypergrad.measure(bench_hypergrad.Task(method, steps, hidden=(256,), batch_size=128))
        for method in ("forward", "reverse") for steps in (20, 200)
    }
    reverse_growth = rows["reverse", 200]["peak_mb"] - rows["reverse", 20]["peak_mb"]
    forward_growth = rows["forward", 200]["peak_mb"] - rows["forward", 20]["peak_mb"]
    assert reverse_growth > 20  # ~ 180 steps of activations of a 256-wide layer at batch 128
    assert forward_growth < 0.25 * reverse_growth


def test_hypergrad_bench_prints_one_row_per_task(capsys):
    main(["bench", "hypergrad", "--forward-steps", "4", "--reverse-steps", "4", "--truncate", "2",
          "--peer-steps", "", "--hidden", "8"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["forward", "reverse", "truncated"]
    assert all(float(row.split("|")[7]) > 0 for row in rows)  # × SGD loop


def test_cost_bench_lists_every_objective(capsys):
    main(["bench", "cost", "--objectives", "quadratic,logistic-digits"])
    out = capsys.readouterr().out
    assert "| quadratic | 1.50 | 0.99 |" in out and "| logistic-digits |" in out


def test_grid_minimum_is_below_the_rate_optimal_point():
    """The finite-horizon limit can only be at or below the loss at the theory's (η*, β*)."""
    objective = mt.objectives.get("quadratic", dim=8, kappa=50.0, steps=60)
    best, lr, momentum = grid_minimum(objective, seed=0, side=24)
    params = objective.init_params(0)
    optimum = objective.optimum
    run = mt.unroll(objective.train_loss, params, optimum["lr"], optimum["momentum"], objective.steps)
    at_optimum = float(objective.val_loss(run.params))
    assert best <= at_optimum
    again = mt.unroll(objective.train_loss, params, lr, momentum, objective.steps)
    assert float(objective.val_loss(again.params)) == pytest.approx(best, rel=1e-6)
