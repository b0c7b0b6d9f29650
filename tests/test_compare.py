"""Equal-budget comparison: the summary is computed from the runs it holds; JSON, plots, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from metatune import objectives
from metatune.compare import compare, evals_to_reach
from metatune.cli import main

BUDGET = 1_200


@pytest.fixture(scope="module")
def comparison():
    objective = objectives.get("quadratic", dim=8, kappa=50.0, steps=40)
    return compare(objective, ["metagrad", "random", "tpe"], budget=BUDGET, seeds=[0, 1, 2])


def test_every_method_ran_every_seed_within_the_budget(comparison):
    assert list(comparison.results) == ["metagrad", "random", "tpe"]
    for runs in comparison.results.values():
        assert [r.seed for r in runs] == [0, 1, 2]
        assert all(0 < r.gradient_evals <= BUDGET for r in runs)


def test_summary_is_the_median_and_spread_of_the_runs(comparison):
    for row in comparison.summary():
        runs = comparison.results[row["method"]]
        best = sorted(r.best_value for r in runs)
        assert row["best_value_median"] == best[1]
        assert (row["best_value_min"], row["best_value_max"]) == (best[0], best[2])
        reach = sorted(evals_to_reach(r, comparison.target) for r in runs)
        assert row["evals_to_target_median"] == reach[1]


def test_default_target_is_the_reference_baselines_median(comparison):
    assert comparison.target == float(np.median([r.best_value for r in comparison.results["random"]]))


def test_evals_to_reach_is_the_first_trial_at_or_below_target(comparison):
    run = comparison.results["tpe"][0]
    target = sorted(t.value for t in run.trials if not t.diverged)[len(run.trials) // 2]
    first = next(t for t in run.trials if not t.diverged and t.value <= target)
    assert evals_to_reach(run, target) == first.cumulative_evals
    assert evals_to_reach(run, -1.0) == math.inf


def test_json_has_no_infinities_and_round_trips(comparison):
    data = json.loads(comparison.to_json())
    assert data["budget"] == BUDGET and len(data["runs"]["tpe"]) == 3
    trial = data["runs"]["tpe"][0]["trials"][0]
    assert set(trial) >= {"lr", "momentum", "value", "diverged", "spectral_radius", "cumulative_evals"}
    assert "Infinity" not in comparison.to_json() and "NaN" not in comparison.to_json()


def test_plots_are_written_as_png(comparison, tmp_path):
    paths = comparison.plot(str(tmp_path / "cmp"))
    assert [p.rsplit("-", 1)[1] for p in paths] == ["convergence.png", "plane.png"]
    for path in paths:
        with open(path, "rb") as image:
            assert image.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="methods="):
        compare("quadratic", ["metagrad", "sideways"], budget=BUDGET, seeds=[0])
    with pytest.raises(ValueError, match="seeds=5"):
        compare("quadratic", ["tpe"], budget=BUDGET, seeds=5)


def test_cli_prints_the_table_and_writes_json_and_plots(tmp_path, capsys):
    main(["compare", "--objective", "quadratic", "--param", "dim=6", "--param", "kappa=20", "--param", "steps=20",
          "--methods", "random,grid", "--budget", "300", "--seeds", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| random |" in out and "| grid |" in out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["compare-quadratic-convergence.png", "compare-quadratic-plane.png", "compare-quadratic.json"]
    data = json.loads((tmp_path / "compare-quadratic.json").read_text())
    assert data["objective"]["params"]["dim"] == 6


def test_plots_create_their_folder(tmp_path):
    from metatune.compare import compare

    cmp = compare("quadratic", ["random"], budget=301 * 2, seeds=[0])
    written = cmp.plot(str(tmp_path / "new" / "folder" / "quadratic"))
    assert all((tmp_path / "new" / "folder").joinpath(p.rsplit("/", 1)[-1]).stat().st_size > 1000 for p in written)
