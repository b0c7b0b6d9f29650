"""The benchmark commands: exit codes, rows and figures against what they should be (the figures themselves go
to BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch

import metatune as mt
from metatune.bench import hypergrad as bench_hypergrad
from metatune.bench.common import digits_mlp, measure_in_child
from metatune.bench.tuning import grid_minimum
from metatune.cli import main
from metatune.costs import measure


def _saved_bytes(steps: int) -> int:
    """Bytes of the tensors autograd keeps for reverse mode's backward pass (each storage once):
    what reverse mode must hold, counted without looking at the process's memory."""
    _, params, train_loss, val_loss, batches = digits_mlp((256,), 128, steps)
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        mt.hypergrad(train_loss, val_loss, params, 0.05, 0.9, steps, batches, mode="reverse")
    return sum(storages.values())


@pytest.mark.slow
def test_forward_memory_is_flat_and_reverse_memory_grows_with_the_horizon():
    """Each peak measured in a fresh process (as the bench does), against what autograd saves:
    from T = 20 to 200 reverse mode's peak grows by about the bytes of the 180 steps' saved
    tensors (plus the allocator's slack), forward mode's by almost nothing."""
    def growth(method: str) -> float:
        peaks = [measure_in_child(bench_hypergrad.measure, bench_hypergrad.Task(method, steps, hidden=(256,),
                                                                                batch_size=128))["peak_mb"]
                 for steps in (20, 200)]
        return (peaks[1] - peaks[0]) * 2**20

    saved = _saved_bytes(200) - _saved_bytes(20)
    assert saved > 50 * 2**20  # ~ 0.38 MB a step: activations of a 256-wide layer at batch 128, float32
    assert 0.8 * saved < growth("reverse") < 2.0 * saved
    assert growth("forward") < 0.1 * saved  # RSS peaks wander by a few MB (one run measured 4.5 MB = 6 %)


def test_hypergrad_bench_prints_one_row_per_task(capsys):
    """Exit code 0; one row per planned task; × SGD loop = seconds / (T × SGD ms/step);
    × floor = seconds / (T × floor × gradient ms), the floor 1 + 2 · backward step for forward
    mode and 1 + backward step for reverse, from costs.measure on the same model; no floor for
    truncated mode."""
    code = main(["bench", "hypergrad", "--forward-steps", "4", "--reverse-steps", "4", "--truncate", "2",
                 "--peer-steps", "", "--hidden", "8", "--repeat", "1"])
    assert code == 0
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and "method" not in line]
    assert [row[:4] for row in rows] == [["forward", "4", "", ""], ["reverse", "4", "", ""],
                                         ["truncated", "4", "2", ""]]
    _, params, train_loss, _, batches = digits_mlp((8,), 256, 1)
    costs = measure(train_loss, params, batches[0])
    floors = {"forward": 1 + 2 * costs.backward_step, "reverse": 1 + costs.backward_step}
    for row in rows:  # seconds and ms printed to 2 decimals: each ratio lies within their rounding
        seconds, sgd_ms, ratio, gradient_ms = float(row[4]), float(row[6]), float(row[7]), float(row[9])
        assert row[8] == f"{ratio:.2f}–{ratio:.2f}"  # one run: its own range
        assert sgd_ms > 0.005
        assert _within_rounding(ratio, seconds, 4 * sgd_ms / 1e3, 4 * 0.005 / 1e3)
        if row[0] in floors:
            assert float(row[10]) == pytest.approx(floors[row[0]], abs=0.005)
            assert _within_rounding(float(row[11]), seconds, 4 * floors[row[0]] * gradient_ms / 1e3,
                                    4 * floors[row[0]] * 0.005 / 1e3)
        else:
            assert row[10:12] == ["", ""]


def _within_rounding(ratio: float, seconds: float, denominator: float, slack: float) -> bool:
    """ratio (printed to 2 decimals) = seconds / denominator, each of them rounded."""
    low = (seconds - 0.005) / (denominator + slack)
    high = (seconds + 0.005) / max(denominator - slack, 1e-12)
    return low - 0.005 <= ratio <= high + 0.005


def test_cost_bench_prints_the_hand_counted_multiples(capsys):
    """Exit code 0. quadratic (n = 50): a gradient 4n² + 2n = 10,100 FLOPs, a backward step
    4n² (0.99); a forward step with two tangents, the gradient and two backward steps, 2.98;
    a reverse step 1.99. logistic-digits, a linear layer on data: 1, 3 and 2
    (tests/test_costs.py derives both)."""
    assert main(["bench", "cost", "--objectives", "quadratic,logistic-digits"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    cells = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:7]] for line in lines[1:]}
    rows = {name: [c[0], c[1], c[3]] for name, c in cells.items()}  # the FLOP columns
    assert rows["quadratic"] == pytest.approx([10000 / 10100, 30100 / 10100, 20100 / 10100], abs=0.005)
    assert rows["logistic-digits"] == pytest.approx([1.0, 3.0, 2.0], abs=0.005)


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


def test_the_bench_shows_the_median_run_with_the_range_of_all():
    runs = [{"ratio": r, "seconds": s} for r, s in ((3.0, 1.0), (2.0, 2.0), (5.0, 3.0), (4.0, 4.0))]
    row = bench_hypergrad.median_row(runs[:3])
    assert (row["ratio"], row["seconds"], row["ratio_min"], row["ratio_max"], row["runs"]) == (3.0, 1.0, 2.0, 5.0, 3)
    assert bench_hypergrad.median_row(runs)["ratio"] == 3.0  # even count: the lower middle


def test_tuning_summary_is_the_median_ratio_to_the_best_reference_per_seed():
    """Per seed, metagrad's SGD value over the best of the references (0.5/0.4, 0.9/0.3,
    0.2/0.25): ratios 1.25, 3, 0.8, so median 1.25, min 0.8, max 3; an objective added after
    the tuners' last change is marked unseen, with or without its group suffix."""
    from metatune.bench.tuning import summary

    rows = []
    for seed, (tpe, gp, ours) in enumerate([(0.5, 0.4, 0.5), (0.3, 0.35, 0.9), (0.25, 0.3, 0.2)]):
        rows += [{"objective": "autoencoder-digits [layers]", "seed": seed, "method": "tpe (100 trials)",
                  "sgd value": tpe, "seconds": 1.0},
                 {"objective": "autoencoder-digits [layers]", "seed": seed, "method": "gp (100 trials)",
                  "sgd value": gp, "seconds": 2.0},
                 {"objective": "autoencoder-digits [layers]", "seed": seed, "method": "metagrad (30%)",
                  "sgd value": ours, "seconds": 0.5 + seed}]
    row = summary(rows, ("tpe (100 trials)", "gp (100 trials)"), "metagrad (30%)", 1.0)
    assert (row["median"], row["min"], row["max"]) == pytest.approx((1.25, 0.8, 3.0), rel=1e-12)
    assert row["met"] is False and row["unseen"] is True and row["seconds (median)"] == 1.5
    seen = summary([{**r, "objective": "mlp-digits"} for r in rows], "tpe (100 trials)", "metagrad (30%)", 1.0)
    assert seen["unseen"] is False and seen["median"] == pytest.approx(1.0, rel=1e-12)  # 1.0, 3.0, 0.8


def test_the_sgd_judge_applies_a_points_schedule_per_step():
    """metatune bench's judge (torch.optim.SGD with each group's lr and momentum set before
    every step) gives the engine's value for a knot schedule and a warm-up + cosine one, and
    not the value of the schedule's first knot held constant."""
    import metatune as mt
    from metatune.bench.tuning import sgd_value
    from metatune.schedule import Shape
    from metatune.tuners.evaluation import Context, evaluate_point

    objective = mt.objectives.get("quadratic", dim=20, kappa=100.0, steps=60)
    context = Context.build(objective, 0, objective.steps)
    knots = mt.Point.of([0.002, 0.02, 0.005], [0.9, 0.3, 0.6])
    cosine = mt.Point((0.02,), (0.8,), shape=Shape.warmup_cosine(0.2, 0.05))
    for point in (knots, cosine):
        assert sgd_value(objective, 0, point) == pytest.approx(evaluate_point(context, point).value, rel=1e-9)
    first = sgd_value(objective, 0, mt.Point.scalar(0.002, 0.9))
    assert abs(first - sgd_value(objective, 0, knots)) > 1e-3 * first
