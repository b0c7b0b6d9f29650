"""Equal-budget comparison: its summary, table, JSON and plots on trial lists worked by hand; the CLI.

The hand-made comparison (``handmade``) has two methods over seeds 0, 1, 2 (c: cumulative
gradient evaluations, × a diverged trial):

    random    seed 0: 4.0 @10, 2.0 @20, 1.0 @30      best 1.0
              seed 1: 3.0 @10, ×   @20, 2.5 @30      best 2.5
              seed 2: 0.5 @10, 6.0 @20               best 0.5
    metagrad  seed 0: 2.0 @50, 0.8 @100              best 0.8
              seed 1: 0.9 @40                        best 0.9
              seed 2: 1.5 @60, 1.2 @120              best 1.2

The default target is the median best value of the first method other than metagrad
(random): median(1.0, 2.5, 0.5) = 1.0.
"""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

import metatune as mt
from metatune import figures as figures_module
from metatune import objectives, plots
from metatune.cli import main
from metatune.compare import compare, evals_to_reach
from metatune.point import MetaGradient, Point
from metatune.tuners import ChainStep, Trial, TuneResult
from metatune.tuners.base import Curvature

COMPARE = importlib.import_module("metatune.compare")  # the module; metatune.compare is the function
BUDGET = 120.0
RUNS = {
    "metagrad": [[(2.0, 50), (0.8, 100)], [(0.9, 40)], [(1.5, 60), (1.2, 120)]],
    "random": [[(4.0, 10), (2.0, 20), (1.0, 30)], [(3.0, 10), (math.inf, 20), (2.5, 30)],
               [(0.5, 10), (6.0, 20)]],
}
WALL = {"metagrad": [4.0, 6.0, 5.0], "random": [1.0, 3.0, 2.0]}


def _result(method: str, seed: int) -> TuneResult:
    trials = []
    for number, (value, cumulative) in enumerate(RUNS[method][seed]):
        diverged = not math.isfinite(value)
        metrics = {"growth_rate": 0.0} if method == "metagrad" else {}
        chain = ChainStep(0, True, MetaGradient((0.0,), (0.0,), 0.0, 1.0)) if method == "metagrad" else None
        trials.append(Trial(
            number=number, point=Point.scalar(0.001 * (seed + 1) * (number + 1), 0.5 + 0.1 * number), value=value,
            diverged=diverged, gradient_evals=10.0, cumulative_evals=float(cumulative), wall_time=0.1,
            spectral_radius=1.5 if diverged else 0.9 - 0.1 * seed, stable=not diverged, metrics=metrics,
            status="diverged" if diverged else "completed", chain=chain,
        ))
    return TuneResult(method, "quadratic", seed, BUDGET, trials, wall_time=WALL[method][seed])


@pytest.fixture
def handmade(monkeypatch):
    """compare() over the hand-made runs, each (method, seed) call recorded."""
    calls = []

    def fake_run(job, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((job.method, job.seed, job.budget))
        return _result(job.method, job.seed)

    monkeypatch.setattr(COMPARE, "run_job", fake_run)
    objective = objectives.get("quadratic", dim=4, kappa=100.0, steps=10)
    cmp = compare(objective, ["metagrad", "random"], budget=BUDGET, seeds=[0, 1, 2])
    cmp.curvature = Curvature(1.0, 100.0, 0.0)  # the quadratic's ends, stated rather than estimated
    return cmp, calls


def test_every_method_runs_every_seed_at_the_same_budget(handmade):
    _, calls = handmade
    assert calls == [("metagrad", 0, BUDGET), ("metagrad", 1, BUDGET), ("metagrad", 2, BUDGET),
                     ("random", 0, BUDGET), ("random", 1, BUDGET), ("random", 2, BUDGET)]


def test_default_target_is_the_reference_baselines_median(handmade):
    cmp, _ = handmade
    assert cmp.target == 1.0


def test_evals_to_reach_is_the_first_finite_trial_at_or_below_target():
    random0, random1 = _result("random", 0), _result("random", 1)
    assert evals_to_reach(random0, 1.0) == 30  # 4.0, 2.0, then 1.0 ≤ 1.0 at 30
    assert evals_to_reach(random0, 2.5) == 20
    assert evals_to_reach(random0, 9.0) == 10
    assert evals_to_reach(random0, 0.99) == math.inf
    assert evals_to_reach(random1, 2.9) == 30
    diverged_first = TuneResult("random", "quadratic", 1, BUDGET, random1.trials[1:])  # × @20, 2.5 @30
    assert evals_to_reach(diverged_first, math.inf) == 30  # a diverged trial reaches nothing, even inf


def test_a_trial_within_a_millionth_of_the_target_reaches_it():
    """The same point found by two methods differs in its last digits (4e-9 relative): it
    reaches the target; a value 2e-6 above it does not."""
    random0 = _result("random", 0)  # 4.0 @10, 2.0 @20, 1.0 @30
    assert math.exp(math.log(3.0)) > 3.0  # the rounding that puts a bound's point past the bound
    assert evals_to_reach(random0, 1.0 - 4e-9) == 30
    assert evals_to_reach(random0, 1.0 - 2e-6) == math.inf


def test_summary_rows_worked_by_hand(handmade):
    """Target 1.0. random: reach at 30, never, 10 → median 30, 2 of 3; metagrad: reach at 100,
    40, never → median 100, 2 of 3. Medians of the best values, wall times, trial counts and
    of ρ of each seed's best trial (0.9, 0.8, 0.7 by seed)."""
    cmp, _ = handmade
    rows = {row["method"]: row for row in cmp.summary()}
    assert rows["random"] == {
        "method": "random", "best_value_median": 1.0, "best_value_min": 0.5, "best_value_max": 2.5,
        "evals_to_target_median": 30.0, "reached_target": 2, "wall_time_median": 2.0,
        "gradient_evals_median": 30.0, "trials_median": 3.0, "spectral_radius_median": 0.8, "stable": True,
        "diverged_trials": 1,
    }
    assert rows["metagrad"] == {
        "method": "metagrad", "best_value_median": 0.9, "best_value_min": 0.8, "best_value_max": 1.2,
        "evals_to_target_median": 100.0, "reached_target": 2, "wall_time_median": 5.0,
        "gradient_evals_median": 100.0, "trials_median": 2.0, "spectral_radius_median": 0.8, "stable": True,
        "diverged_trials": 0,
    }


def test_table_shows_the_rows(handmade):
    cmp, _ = handmade
    lines = cmp.table().splitlines()
    assert lines[0] == ("quadratic: budget 120 gradient evaluations, T = 10, schedule: constant, seeds [0, 1, 2], "
                        "target loss 1 (reached within 1e-06 of it)")
    assert lines[4:] == ["| metagrad | 0.9 | [0.8, 1.2] | 100 | 2/3 | 5.0 | 2 | 0.8000 | True | 0 |",
                         "| random | 1 | [0.5, 2.5] | 30 | 2/3 | 2.0 | 3 | 0.8000 | True | 1 |"]


def test_json_writes_infinities_as_null_and_round_trips(handmade):
    cmp, _ = handmade
    text = cmp.to_json()
    data = json.loads(text)
    assert "Infinity" not in text and "NaN" not in text
    assert data["budget"] == BUDGET and data["target"] == 1.0 and data["seeds"] == [0, 1, 2]
    assert data["curvature"] == {"lambda_min": 1.0, "lambda_max": 100.0}
    diverged = data["runs"]["random"][1]["trials"][1]
    assert diverged["value"] is None and diverged["diverged"] is True and diverged["cumulative_evals"] == 20
    assert [run["best_value"] for run in data["runs"]["random"]] == [1.0, 2.5, 0.5]


def test_evals_to_target_never_reached_is_null_in_json(monkeypatch):
    monkeypatch.setattr(COMPARE, "run_job", lambda job, **kw: _result(job.method, job.seed))
    cmp = compare(objectives.get("quadratic", dim=4, steps=10), ["random"], budget=BUDGET, seeds=[0, 1, 2],
                  target=0.1)
    row = json.loads(cmp.to_json())["summary"][0]
    assert row["evals_to_target_median"] is None and row["reached_target"] == 0


# --- plots: what a user sees, read from the figure --------------------------------------------


@pytest.fixture
def figures(handmade):
    """The figures ``cmp.plot`` writes, drawn for the hand-made comparison."""
    cmp, _ = handmade
    return {"convergence.png": plots.convergence_figure(cmp), "plane.png": plots.plane_figure(cmp)}


def _median_line(ax, label):  # noqa: ANN001, ANN202
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return np.asarray(line.get_xdata()), np.asarray(line.get_ydata())


def test_convergence_plot_draws_the_median_best_so_far_of_each_method(handmade, figures, tmp_path):
    """Best so far per seed, then the median where more than half the seeds have a trial:
    random 3.0 on [10, 20) (4.0, 3.0, 0.5), 2.0 on [20, 30) (2.0, 3.0, 0.5), 1.0 from 30 on;
    metagrad none before 50 (one seed of three), 2.0 on [50, 60) (2.0, 0.9, -),
    1.5 on [60, 100), 0.9 from 100 on."""
    cmp, _ = handmade
    paths = cmp.plot(str(tmp_path / "cmp"))
    assert [p.rsplit("-", 1)[1] for p in paths] == ["convergence.png", "plane.png"]
    assert all((tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 10_000 for p in paths)
    ax = figures["convergence.png"].axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "gradient evaluations"
    assert [line.get_label() for line in ax.get_lines()] == ["metagrad", "random", "target 1"]
    assert len(ax.collections) == 2  # one min–max band per method
    for label, pieces in (("random", [(0, 10, math.nan), (10, 20, 3.0), (20, 30, 2.0), (30, 121, 1.0)]),
                          ("metagrad", [(0, 50, math.nan), (50, 60, 2.0), (60, 100, 1.5), (100, 121, 0.9)])):
        x, y = _median_line(ax, label)
        assert x[0] == 0 and x[-1] == BUDGET
        for low, high, value in pieces:
            inside = y[(x >= low) & (x < high)]
            assert inside.size and (np.isnan(inside).all() if math.isnan(value) else (inside == value).all())


def test_plane_plot_draws_the_critical_lr_as_the_rho_one_contour(handmade, figures, tmp_path):
    """Over λ ∈ [1, 100] the ρ = 1 boundary is η = 2(1 + β)/100 (heavy ball, DESIGN.md), and each
    ρ level with a curve in the box is drawn."""
    cmp, _ = handmade
    cmp.plot(str(tmp_path / "cmp"))
    ax = figures["plane.png"].axes[0]
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("learning rate η", "momentum β")
    boundary = [line for line in ax.get_lines() if line.get_gid() == "boundary"]
    assert boundary
    vertices = np.vstack([line.get_xydata() for line in boundary])
    lr, momentum = vertices[:, 0], vertices[:, 1]
    assert momentum.min() < 0.01 and momentum.max() > 0.98  # it crosses the whole β range
    assert np.abs(lr / (2 * (1 + momentum) / 100.0) - 1).max() < 1e-12  # the closed form, drawn as it is
    stability = figures_module.stability_map(cmp.objective.space, cmp.curvature.eigenvalues)
    drawn = {line.get_gid() for line in ax.get_lines()} - {None, "boundary"}
    assert drawn == {f"rho={c['level']:g}" for c in stability["contours"] if c["lines"]} and "rho=0.99" in drawn
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["diverged (1)", "metagrad paths (seed 0)", "rate-optimal (η*, β*)"]
    assert "λ ∈ {1, 100}" in ax.get_title()


# --- the command line ------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_json_and_plots(tmp_path, capsys):
    """Exit code 0; the table's median best loss of each method is the median over seeds of the
    validation loss of a plain run at that seed's best (η, β), recomputed here with unroll."""
    code = main(["compare", "--objective", "quadratic", "--param", "dim=6", "--param", "kappa=20",
                 "--param", "steps=20", "--methods", "random,grid", "--budget", "300", "--seeds", "2",
                 "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["compare-quadratic-convergence.png", "compare-quadratic-plane.png",
                       "compare-quadratic.json"]
    data = json.loads((tmp_path / "compare-quadratic.json").read_text())
    assert data["objective"]["params"]["dim"] == 6
    objective = objectives.get("quadratic", dim=6, kappa=20.0, steps=20)
    for method in ("random", "grid"):
        values = []
        for seed, run in enumerate(data["runs"][method]):
            params = objective.init_params(seed)
            trained = mt.unroll(objective.train_loss, params, run["best_lr"], run["best_momentum"], 20)
            values.append(float(objective.val_loss(trained.params)))
        (row,) = [line for line in out.splitlines() if line.startswith(f"| {method} |")]
        assert float(row.split("|")[2]) == pytest.approx(sum(values) / 2, rel=1e-3)  # printed to 4 digits


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="methods="):
        compare("quadratic", ["metagrad", "sideways"], budget=BUDGET, seeds=[0])
    with pytest.raises(ValueError, match="seeds=5"):
        compare("quadratic", ["tpe"], budget=BUDGET, seeds=5)


def test_plots_create_their_folder(tmp_path):
    cmp = compare("quadratic", ["random"], budget=301 * 2, seeds=[0])
    written = cmp.plot(str(tmp_path / "new" / "folder" / "quadratic"))
    folder = tmp_path / "new" / "folder"
    assert all(folder.joinpath(p.rsplit("/", 1)[-1]).stat().st_size > 1000 for p in written)
