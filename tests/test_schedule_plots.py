"""Schedules in the comparison: the series a schedule figure draws, the figure, ``compare(schedule=…)``
and ``metatune compare --schedule``.

Hand-worked series (schedule module docstring):

* K = 2 knots over T = 3 steps: τ = (0, 2); step 1 lies halfway, so η₁ is the geometric mean
  of the knots (log-linear) and β₁ their arithmetic mean: η = (0.01, 1.0) gives
  (0.01, 0.1, 1.0), β = (0.2, 0.6) gives (0.2, 0.4, 0.6).
* warm-up + cosine over T = 5 with warm-up 0.4 and final 0.1: W = round(0.4 · 5) = 2 ramp
  steps, factors (1/2, 2/2) then the cosine from 1 to 0.1 over the remaining span
  T − 1 − W = 2: 0.1 + 0.9 · ½(1 + cos(π · j/2)) = 1, 0.55, 0.1 for j = 0, 1, 2.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from matplotlib.collections import PathCollection

from metatune import objectives, plots
from metatune.cli import build_parser, main
from metatune.compare import compare
from metatune.job import TuningJob
from metatune.point import Point
from metatune.schedule import WARMUP_COSINE, Schedule, Shape
from metatune.tuners import Trial, TuneResult

COMPARE = importlib.import_module("metatune.compare")
CLI = importlib.import_module("metatune.cli")
BUDGET = 100.0


# --- the series -------------------------------------------------------------------------------


def test_series_two_knots_over_three_steps_worked_by_hand():
    data = plots.schedule_series({"K=2": Point.of([0.01, 1.0], [0.2, 0.6])}, 3)
    (line,) = data["series"]
    assert data["steps"] == [0, 1, 2] and line["label"] == "K=2"
    assert line["lr"] == pytest.approx([0.01, math.sqrt(0.01 * 1.0), 1.0], rel=1e-12)
    assert line["momentum"] == pytest.approx([0.2, 0.4, 0.6], rel=1e-12)
    assert line["knots"] == {"steps": [0.0, 2.0], "lr": [0.01, 1.0], "momentum": [0.2, 0.6]}


def test_series_warmup_cosine_worked_by_hand():
    point = Point.of(0.2, 0.9, Shape.warmup_cosine(0.4, 0.1))
    (line,) = plots.schedule_series({"wc": point}, 5)["series"]
    assert line["lr"] == pytest.approx([0.2 * f for f in (0.5, 1.0, 1.0, 0.55, 0.1)], rel=1e-12)
    assert line["momentum"] == pytest.approx([0.9] * 5, rel=1e-12)
    assert line["knots"] is None  # a fixed shape has no knots to mark


def test_series_is_the_shapes_own_path_per_group_and_plain_json():
    """Four knots over T = 11 per group: each group's series is Shape.lr_path/momentum_path of
    its own knot values; a constant point is flat and has no knots to mark."""
    point = Point.of({"0": [0.1, 0.02, 0.3, 0.001], "2": [0.05, 0.05, 0.01, 0.2]},
                     {"0": [0.9, 0.5, 0.0, 0.7], "2": [0.1, 0.2, 0.3, 0.95]})
    data = plots.schedule_series({"mg": point, "flat": Point.scalar(0.01, 0.8)}, 11)
    assert [s["label"] for s in data["series"]] == ["mg [0]", "mg [2]", "flat"]
    shape = Shape.of_knots(4)
    for line, group in zip(data["series"], ("0", "2")):
        lrs = torch.tensor(point.lr[group], dtype=torch.float64)
        momenta = torch.tensor(point.momentum[group], dtype=torch.float64)
        assert line["lr"] == pytest.approx(shape.lr_path(lrs, 11).tolist(), rel=1e-12)
        assert line["momentum"] == pytest.approx(shape.momentum_path(momenta, 11).tolist(), rel=1e-12)
        assert line["knots"]["steps"] == pytest.approx([0.0, 10 / 3, 20 / 3, 10.0])
    flat = data["series"][2]
    assert flat["lr"] == pytest.approx([0.01] * 11, rel=1e-12) and flat["knots"] is None
    assert json.loads(json.dumps(data)) == data


def test_series_refuses_more_knots_than_steps():
    with pytest.raises(ValueError, match="knots=4"):
        plots.schedule_series({"x": Point.of([0.1] * 4, [0.5] * 4)}, 3)


# --- the figure -------------------------------------------------------------------------------


def test_figure_has_two_axes_sharing_steps_and_a_line_per_label():
    points = {"metagrad K=3": Point.of([0.01, 0.1, 0.03], [0.9, 0.5, 0.2]),
              "best constant (TPE)": Point.scalar(0.02, 0.8),
              "best warm-up + cosine (TPE)": Point.of(0.05, 0.7, Shape.warmup_cosine(0.2, 0.01))}
    fig = plots.schedule_figure(points, 21)
    lr_ax, momentum_ax = fig.axes
    assert lr_ax.get_shared_x_axes().joined(lr_ax, momentum_ax)
    assert lr_ax.get_yscale() == "log" and momentum_ax.get_yscale() == "linear"
    assert momentum_ax.get_xlabel() == "inner step t"
    for ax in (lr_ax, momentum_ax):
        assert [line.get_label() for line in ax.get_lines()] == list(points)
        assert all(list(line.get_xdata()) == list(range(21)) for line in ax.get_lines())
    assert [t.get_text() for t in lr_ax.get_legend().get_texts()] == list(points)
    # dots at the knots of the K = 3 point only
    (lr_dots,) = [c for c in lr_ax.collections if isinstance(c, PathCollection)]
    assert lr_dots.get_offsets().tolist() == [[0.0, 0.01], [10.0, 0.1], [20.0, 0.03]]
    metagrad = lr_ax.get_lines()[0].get_ydata()
    assert metagrad[5] == pytest.approx(math.sqrt(0.01 * 0.1), rel=1e-12)  # halfway to knot 1


# --- compare(schedule=…) ----------------------------------------------------------------------


def _result(job: TuningJob) -> TuneResult:
    """Two trials at the job's schedule: 3.0 and then a best of 1.0 + seed."""
    knots = job.schedule.knots
    trials = []
    for number, value in enumerate((3.0, 1.0 + job.seed)):
        lr = [0.001 * (number + 1) * (k + 1) for k in range(knots)]
        point = Point.of(lr, [0.5] * knots) if job.schedule.shape != WARMUP_COSINE else \
            Point.of(lr[0], 0.5, Shape.warmup_cosine(0.1, 0.01))
        trials.append(Trial(number=number, point=point, value=value, diverged=False, gradient_evals=10.0,
                            cumulative_evals=10.0 * (number + 1), wall_time=0.1, spectral_radius=0.9,
                            stable=True, metrics={}, status="completed"))
    return TuneResult(job.method, job.objective, job.seed, job.budget, trials, wall_time=1.0)


@pytest.fixture
def jobs(monkeypatch):
    """The jobs compare() runs, each answered by :func:`_result`."""
    ran: list[TuningJob] = []

    def fake_run(job, **kwargs):  # noqa: ANN001, ANN003, ANN202
        ran.append(job)
        return _result(job)

    monkeypatch.setattr(COMPARE, "run_job", fake_run)
    return ran


def _tiny():  # noqa: ANN202
    return objectives.get("quadratic", dim=4, kappa=10.0, steps=12)


@pytest.mark.parametrize("schedule", [8, Schedule(8), {"knots": 8}])
def test_every_job_runs_the_schedule_and_the_table_and_json_state_it(jobs, schedule, tmp_path):
    cmp = compare(_tiny(), ["metagrad", "tpe"], budget=BUDGET, seeds=[0, 1], schedule=schedule)
    assert [(j.method, j.seed, j.schedule) for j in jobs] == [
        (m, s, Schedule(8)) for m in ("metagrad", "tpe") for s in (0, 1)]
    assert cmp.schedule == Schedule(8)
    assert cmp.table().splitlines()[0] == ("quadratic: budget 100 gradient evaluations, T = 12, "
                                           "schedule: 8 knots, seeds [0, 1], target loss 1.5 (reached within 1e-06 of it)")
    assert "| ρ (largest knot) |" in cmp.table().splitlines()[2]
    data = json.loads(cmp.to_json())
    assert Schedule.parse(data["schedule"]) == Schedule(8) and data["steps"] == 12
    best = Point.from_json(data["runs"]["tpe"][1]["best_point"])
    assert best == _result(jobs[3]).best.point  # the JSON's best point decodes to the run's own
    assert best.knots == 8


def test_plot_writes_the_schedule_figure_only_for_a_schedule(jobs, tmp_path):
    cmp = compare(_tiny(), ["tpe", "random"], budget=BUDGET, seeds=[0, 1], schedule={"shape": WARMUP_COSINE})
    written = cmp.plot(str(tmp_path / "wc"))
    assert [p.rsplit("-", 1)[1] for p in written] == ["convergence.png", "plane.png", "schedule.png"]
    assert (tmp_path / "wc-schedule.png").stat().st_size > 10_000
    assert list(cmp.best_points()) == ["tpe (seed 0, val loss 1)", "random (seed 0, val loss 1)"]
    assert cmp.table().splitlines()[0].split(", ")[2] == "schedule: warm-up + cosine"
    assert "| ρ (peak η) |" in cmp.table().splitlines()[2]
    constant = compare(_tiny(), ["tpe"], budget=BUDGET, seeds=[0])
    assert len(constant.plot(str(tmp_path / "c"))) == 2 and not (tmp_path / "c-schedule.png").exists()


@pytest.mark.parametrize(("methods", "schedule", "refused"), [
    (["tpe", "grid"], 4, "grid"),
    (["online"], 2, "online"),
    (["random", "metagrad"], {"shape": WARMUP_COSINE}, "metagrad"),
    (["tpe"], 13, "at most the inner steps T=12"),
])
def test_a_method_that_does_not_search_the_schedule_is_refused_before_any_run(jobs, methods, schedule,
                                                                               refused):
    with pytest.raises(ValueError, match="schedule") as error:
        compare(_tiny(), methods, budget=BUDGET, seeds=[0], schedule=schedule)
    assert refused in str(error.value) and jobs == []


def test_a_tuning_job_brings_its_schedule_and_a_different_one_is_refused(jobs):
    job = TuningJob("quadratic", "tpe", {"dim": 4, "steps": 12}, budget=BUDGET, schedule=3)
    cmp = compare(job, ["tpe", "random"], seeds=[0])
    assert cmp.schedule == Schedule(3) and {j.schedule for j in jobs} == {Schedule(3)}
    with pytest.raises(ValueError, match="TuningJob's"):
        compare(job, ["tpe"], seeds=[0], schedule=5)


def test_a_real_comparison_searches_knots():
    cmp = compare(_tiny(), ["random"], budget=13 * 4, seeds=[0], schedule=2)
    (run,) = cmp.results["random"]
    assert run.trials and all(t.point.knots == 2 for t in run.trials)


# --- metatune compare --schedule ---------------------------------------------------------------


@pytest.mark.parametrize(("flag", "expected"), [
    ("8", Schedule(8)), ("1", Schedule()), ("warmup-cosine", Schedule(shape=WARMUP_COSINE))])
def test_the_flag_parses_to_a_schedule(flag, expected):
    assert build_parser().parse_args(["compare", "--schedule", flag]).schedule == expected
    assert build_parser().parse_args(["compare"]).schedule == Schedule()


@pytest.mark.parametrize("flag", ["0", "cosine", "2.5"])
def test_a_bad_flag_is_an_argparse_error(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["compare", "--schedule", flag])
    assert stop.value.code == 2 and "--schedule" in capsys.readouterr().err


def test_the_command_runs_the_jobs_on_the_schedule_and_writes_its_figure(jobs, tmp_path, capsys):
    code = main(["compare", "--objective", "quadratic", "--param", "dim=4", "--param", "steps=12",
                 "--methods", "tpe,random", "--budget", "100", "--seeds", "2", "--schedule", "4",
                 "--out", str(tmp_path)])
    assert code == 0
    assert {j.schedule for j in jobs} == {Schedule(4)} and len(jobs) == 4
    assert "schedule: 4 knots" in capsys.readouterr().out.splitlines()[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "compare-quadratic-convergence.png", "compare-quadratic-plane.png", "compare-quadratic-schedule.png",
        "compare-quadratic.json"]
    assert json.loads((tmp_path / "compare-quadratic.json").read_text())["schedule"] == {"knots": 4}


def test_the_command_refuses_grid_with_a_schedule_in_one_line(jobs, capsys):
    args = ["compare", "--methods", "tpe,grid", "--budget", "100", "--seeds", "1", "--schedule", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("metatune compare: error: schedule={'knots': 3} is invalid") and "grid" in err
    assert jobs == []


def test_the_schedule_reaches_a_servers_compare(monkeypatch):
    """``--server`` hands the parsed schedule to the plugin's ``compare_on_server`` (the service
    sends it as the request's ``space.schedule``)."""
    seen = []
    def compare_on_server(args, params, methods):  # noqa: ANN001, ANN202
        seen.append(args.schedule)
        return 0

    monkeypatch.setattr(CLI, "_server_compare", lambda: compare_on_server)
    assert main(["compare", "--server", "http://127.0.0.1:9", "--methods", "tpe", "--schedule", "4"]) == 0
    assert seen == [Schedule(4)]
