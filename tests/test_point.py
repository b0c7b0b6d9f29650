"""Point and TuningJob: the two types that cross layers, and their one serialisation each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import metatune as mt
from metatune.job import Resources, TuningJob
from metatune.objectives import SearchSpace
from metatune.point import MetaGradient, Point

lrs = st.floats(min_value=1e-6, max_value=10.0)
momenta = st.floats(min_value=0.0, max_value=0.999)
group_names = st.lists(st.text(alphabet="abcxyz.0123", min_size=1, max_size=6), min_size=1, max_size=4, unique=True)


@st.composite
def points(draw: st.DrawFn) -> Point:
    groups = draw(st.one_of(st.just([]), group_names))
    size = max(len(groups), 1)
    return Point(tuple(draw(lrs) for _ in range(size)), tuple(draw(momenta) for _ in range(size)), tuple(groups))


@given(points())
def test_each_form_round_trips(point: Point) -> None:
    """JSON (through a real json.dumps), Optuna/Ray params and u each decode to the same point."""
    assert Point.from_json(json.loads(json.dumps(point.to_json()))) == point
    assert Point.from_params(point.to_params(), point.groups) == point
    back = Point.from_u(point.to_u(), point.groups)
    assert back.groups == point.groups
    assert back.lrs == pytest.approx(point.lrs, rel=1e-12)
    assert back.momenta == pytest.approx(point.momenta, rel=1e-9, abs=1e-12)


def test_the_forms_are_the_documented_ones() -> None:
    """u = (log η_g …, log(1 − β_g) …); params are flat ``lr[g]``; JSON is floats or dicts by prefix."""
    point = Point.of({"0": 0.1, "2": 0.02}, {"0": 0.9, "2": 0.5})
    assert point.to_u().tolist() == pytest.approx([math.log(0.1), math.log(0.02), math.log(0.1), math.log(0.5)])
    assert point.to_params() == {"lr[0]": 0.1, "lr[2]": 0.02, "momentum[0]": 0.9, "momentum[2]": 0.5}
    assert point.to_json() == {"lr": {"0": 0.1, "2": 0.02}, "momentum": {"0": 0.9, "2": 0.5}}
    assert point.pairs() == [(0.1, 0.9), (0.02, 0.5)]
    scalar = Point.scalar(0.1, 0.9)
    assert scalar.to_json() == {"lr": 0.1, "momentum": 0.9} and scalar.lr == 0.1 and scalar.groups == ()
    assert Point.same(0.1, 0.9, ["a", "b"]) == Point.of({"a": 0.1, "b": 0.1}, {"a": 0.9, "b": 0.9})


def test_points_key_trials_by_value() -> None:
    """Equal values give equal, equally hashed points (how a resumed job matches trials)."""
    first, again = Point.of({"a": 0.1}, {"a": 0.5}), Point.from_params({"lr[a]": 0.1, "momentum[a]": 0.5}, ["a"])
    assert first == again and len({first, again}) == 1 and first != Point.scalar(0.1, 0.5)


@pytest.mark.parametrize("lr, momentum, match", [
    (0.1, {"a": 0.5}, "both dicts of those by group"),
    ({"a": 0.1}, 0.5, "both dicts of those by group"),
    ({"a": 0.1}, {"b": 0.5}, "one momentum per group"),
])
def test_mismatched_halves_are_refused(lr: object, momentum: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Point.of(lr, momentum)  # type: ignore[arg-type]


def test_a_point_has_one_value_per_group() -> None:
    with pytest.raises(ValueError, match=r"lr and momentum value\(s\) per group"):
        Point((0.1, 0.2), (0.5,), ("a", "b"))
    with pytest.raises(ValueError, match="point"):
        Point.from_json({"lr": "fast", "momentum": 0.5})


def test_meta_gradients_round_trip_through_a_trials_metrics() -> None:
    gradient = MetaGradient((1.5, -2.0), (0.25, 3.0), growth_rate=0.01, amplification=4.0)
    metrics = gradient.to_metrics(("a", "b"))
    assert metrics["dvalue_dlr[b]"] == -2.0 and metrics["dvalue_dmomentum[a]"] == 0.25
    assert MetaGradient.from_metrics(metrics, ("a", "b")) == gradient
    assert MetaGradient.from_metrics({"final_train_loss": 1.0}) is None


# -- TuningJob ------------------------------------------------------------------------------------


def test_a_job_round_trips_through_json() -> None:
    job = TuningJob("mlp-digits", "metagrad", {"hidden": 16}, {"mode": "reverse"}, budget=5_000, steps=40,
                    space=SearchSpace(lr_low=1e-3, lr_high=2.0, momentum_high=0.95), groups=["0", "2"], seed=3,
                    resources=Resources(cpu=2.0, gpu=0.25), concurrency=4, backend="ray")
    stored = json.loads(json.dumps(job.to_json()))
    assert TuningJob.from_json(stored) == job
    assert stored["space"]["lr"] == {"low": 1e-3, "high": 2.0, "log": True} and stored["space"]["groups"] == ["0", "2"]
    assert TuningJob.from_json({"objective": "quadratic"}) == TuningJob("quadratic")


@pytest.mark.parametrize("changes, match", [
    ({"budget": math.inf}, "budget=inf"),
    ({"budget": 0}, "budget=0"),
    ({"backend": "spark"}, "backend='spark'"),
    ({"concurrency": 0}, "concurrency=0"),
    ({"groups": 3}, "groups=3"),
    ({"resources": {"gpus": 1}}, "resources="),
    ({"seed": -1}, "seed=-1"),
    ({"steps": 0}, "steps=0"),
])
def test_a_bad_job_is_refused_naming_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TuningJob("quadratic", "tpe", **changes)


def test_tune_runs_a_job_as_it_runs_the_same_arguments() -> None:
    """``mt.tune(job)`` and ``mt.tune(objective, method, …)`` pick the same points, trial for trial."""
    job = TuningJob("quadratic", "tpe", {"dim": 5, "steps": 20}, budget=21 * 6, seed=2)
    by_job = mt.tune(job)
    by_arguments = mt.tune(mt.objectives.get("quadratic", dim=5, steps=20), "tpe", 21 * 6, seed=2)
    assert [t.point for t in by_job.trials] == [t.point for t in by_arguments.trials] and len(by_job.trials) == 6
    assert [t.value for t in by_job.trials] == [t.value for t in by_arguments.trials]


def test_metagrad_trials_carry_the_chains_decision() -> None:
    """The acceptance each metagrad trial carries is the chains' rule, recomputed here from the
    values alone: per chain, a completed step is accepted exactly when its loss is below the
    chain's last accepted one (the first accepted unless it failed), and accepted losses fall."""
    objective = mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=30)
    result = mt.tune(objective, "metagrad", budget=3_000, seed=0, starts=2)
    steps = [t for t in result.trials if t.chain is not None and t.chain.gradient is not None]
    assert len(steps) >= 4 and all(t.chain.gradient.dlr == (t.metrics["dvalue_dlr"],) for t in steps)
    best: dict[int, float] = {}
    for trial in steps:
        last = best.get(trial.chain.start, math.inf)
        expected = trial.status == "completed" and trial.value < last and np.isfinite(trial.value)
        assert trial.chain.accepted == expected, trial
        if trial.chain.accepted:
            best[trial.chain.start] = trial.value
    line = [t for t in result.trials if t.chain is not None and t.chain.gradient is None]
    assert all(t.chain.line is not None and not t.chain.accepted for t in line)
