"""The figures' data (metatune.figures): the stability map against ρ computed root by root,
trials and metagrad's steps as the dashboard and the PNGs draw them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.path import Path

from metatune import figures
from metatune.objectives.base import SearchSpace
from metatune.point import MetaGradient, Point
from metatune.stability import spectral_radius
from metatune.tuners.records import ChainStep, Trial, TrialStatus

CASES = [  # (eigenvalues, space): one λ (mlp-digits at θ₀), κ = 100, κ = 500 on a narrow β box
    ([1.224978190439138], SearchSpace(1e-3, 3.0, 0.0, 0.99)),
    ([1.0, 100.0], SearchSpace(1e-5, 1e-1, 0.0, 0.99)),
    ([0.01, 5.0], SearchSpace(1e-4, 1.0, 0.5, 0.95)),
]


def _crossings(eigenvalues, space, level, beta):  # noqa: ANN001, ANN202
    """Where ρ(·, β) − r changes sign along η, found on a 20,000-point log grid and refined by
    bisection: an independent trace of the level set at one β."""
    etas = np.geomspace(space.lr_low, space.lr_high, 20_000)
    gap = spectral_radius(etas, np.full_like(etas, beta), eigenvalues) - level
    found = []
    for i in np.nonzero(np.sign(gap[:-1]) != np.sign(gap[1:]))[0]:
        low, high = etas[i], etas[i + 1]
        for _ in range(60):
            middle = math.sqrt(low * high)
            same = np.sign(spectral_radius(middle, beta, eigenvalues) - level) == np.sign(gap[i])
            low, high = (middle, high) if same else (low, middle)
        found.append(math.sqrt(low * high))
    return sorted(found)


def _lines_at(lines, beta):  # noqa: ANN001, ANN202
    """η where the drawn lines pass β (linear between their samples)."""
    etas = []
    for line in lines:
        momenta, lrs = np.array(line["momentum"]), np.array(line["lr"])
        for i in range(len(momenta) - 1):
            a, b = momenta[i], momenta[i + 1]
            if a != b and min(a, b) <= beta < max(a, b):
                etas.append(lrs[i] + (beta - a) / (b - a) * (lrs[i + 1] - lrs[i]))
    return sorted(etas)


@pytest.mark.parametrize("eigenvalues,space", CASES)
def test_every_vertex_of_a_contour_has_exactly_its_rho(eigenvalues, space):
    """The curves are closed forms: ρ (largest |root| per λ, then the max over λ) at every
    drawn point equals the level to 1e-7 (1e-7: at a double root, where the pair turns
    complex, ρ moves as the square root of a rounding error). A contour traced on a grid
    of ρ is off by 0.03–0.13 there."""
    data = figures.stability_map(space, eigenvalues)
    drawn = 0
    for level, lines in [(c["level"], c["lines"]) for c in data["contours"]] + [(1.0, data["boundary"])]:
        for line in lines:
            rho = spectral_radius(np.array(line["lr"]), np.array(line["momentum"]), eigenvalues)
            assert np.abs(rho - level).max() < 1e-7
            assert min(line["lr"]) >= space.lr_low * (1 - 1e-9) and max(line["lr"]) <= space.lr_high * (1 + 1e-9)
            drawn += len(line["lr"])
    assert drawn > 500 and data["boundary"]


@pytest.mark.parametrize("eigenvalues,space", CASES)
def test_each_level_set_is_complete(eigenvalues, space):
    """At several β, the η where ρ crosses each level (traced independently along η) are
    exactly where the drawn lines pass that β: no piece of a contour is missing or extra."""
    data = figures.stability_map(space, eigenvalues)
    for level, lines in [(c["level"], c["lines"]) for c in data["contours"]] + [(1.0, data["boundary"])]:
        for beta in np.linspace(space.momentum_low + 1e-3, space.momentum_high - 1e-3, 7):
            expected, drawn = _crossings(eigenvalues, space, level, beta), _lines_at(lines, beta)
            assert len(drawn) == len(expected), (level, beta, drawn, expected)
            assert np.allclose(drawn, expected, rtol=1e-4)  # chords of η(β) on 256 samples


@pytest.mark.parametrize("eigenvalues,space", CASES + [([-0.5, 2.0], SearchSpace(1e-3, 1.0, 0.0, 0.9))])
def test_the_shaded_region_is_where_rho_exceeds_one(eigenvalues, space):
    """2,000 random points of the box: inside the unstable outline (in log η, β) exactly when
    ρ > 1 (points within 1e-3 of ρ = 1 left out: the outline's chords cut them)."""
    rng = np.random.default_rng(0)
    etas = 10 ** rng.uniform(math.log10(space.lr_low), math.log10(space.lr_high), 2000)
    betas = rng.uniform(space.momentum_low, space.momentum_high, 2000)
    rho = spectral_radius(etas, betas, eigenvalues)
    inside = np.zeros(2000, dtype=bool)
    for outline in figures.unstable_region(eigenvalues, space):
        path = Path(np.column_stack([np.log10(outline["lr"]), outline["momentum"]]))
        inside |= path.contains_points(np.column_stack([np.log10(etas), betas]), radius=1e-12)
    clear = np.abs(rho - 1) > 1e-3
    assert (inside[clear] == (rho[clear] > 1)).all()
    assert (rho > 1).sum() > 50


def test_a_negative_eigenvalue_leaves_no_stable_level_set():
    """With λ < 0 some root has |μ| > 1 for every η > 0: no ρ < 1 curve, no boundary."""
    data = figures.stability_map(SearchSpace(1e-3, 1.0, 0.0, 0.9), [-0.5, 2.0])
    assert all(not c["lines"] for c in data["contours"]) and data["boundary"] == []


def _trial(number, point, value, chain=None, status=TrialStatus.COMPLETED, rho=0.9):  # noqa: ANN001, ANN202
    diverged = status == TrialStatus.DIVERGED
    return Trial(number, point, math.inf if diverged else value, diverged, 10.0, 10.0 * (number + 1), 0.1, rho,
                 rho < 1, status=status, chain=chain)


def test_trial_points_place_each_group_and_keep_diverged_ones_apart():
    """A per-group trial appears once per group with its own (η_g, β_g) and log10 ℓ; a
    diverged one only among the diverged, with its ρ; everything JSON as it stands."""
    grouped = Point.of({"a": 0.1, "b": 0.01}, {"a": 0.5, "b": 0.9})
    trials = [_trial(0, grouped, 0.01), _trial(1, grouped, 0.0, status=TrialStatus.DIVERGED, rho=1.7)]
    data = figures.trial_points(trials)
    assert data["finite"]["lr"] == [0.1, 0.01] and data["finite"]["momentum"] == [0.5, 0.9]
    assert data["finite"]["slot"] == ["[a]", "[b]"] and data["finite"]["log_value"] == [-2.0, -2.0]
    assert data["diverged"]["number"] == [1, 1] and data["diverged"]["rho"] == [1.7, 1.7]
    assert data["diverged"]["value"] == [None, None]
    json.dumps(data, allow_nan=False)


def test_outer_steps_follow_each_chain_with_its_meta_gradients():
    """metagrad's steps per chain: the line-search point (no gradient) and other trials are
    left out; η, β and ∂ℓ/∂η, ∂ℓ/∂β per slot in trial order, a NaN derivative as None."""
    def step(number, start, lr, dlr, accepted=True):  # noqa: ANN001, ANN202
        gradient = MetaGradient(dlr=(dlr,), dmomentum=(-dlr,))
        return _trial(number, Point.scalar(lr, 0.5), lr, ChainStep(start, accepted, gradient))

    trials = [step(0, 0, 0.1, 2.0), step(1, 1, 0.2, 3.0), _trial(2, Point.scalar(0.15, 0.5), 0.2, ChainStep(0, False)),
              step(3, 0, 0.05, math.nan, accepted=False), _trial(4, Point.scalar(0.3, 0.3), 0.5)]
    series = figures.outer_steps(trials)
    assert [(s["start"], s["numbers"]) for s in series] == [(0, [0, 3]), (1, [1])]
    assert series[0]["lr"] == [0.1, 0.05] and series[0]["dlr"] == [2.0, None] and series[0]["dmomentum"] == [-2.0, None]
    assert series[0]["accepted"] == [True, False]
    paths = figures.metagrad_paths(trials)
    assert [(p["start"], p["lr"]) for p in paths] == [(0, [0.1, 0.05]), (1, [0.2])]
    json.dumps(series, allow_nan=False)


def test_best_so_far_steps_hold_the_minimum_of_completed_trials():
    trials = [_trial(0, Point.scalar(0.1, 0.5), 3.0), _trial(1, Point.scalar(9.0, 0.5), 0, status=TrialStatus.DIVERGED),
              _trial(2, Point.scalar(0.2, 0.5), 1.0), _trial(3, Point.scalar(0.3, 0.5), 2.0)]
    assert figures.best_so_far_steps(trials) == {"evals": [10.0, 20.0, 30.0, 40.0], "best": [3.0, 3.0, 1.0, 1.0]}
    assert figures.best_so_far_steps(trials[1:2]) == {"evals": [20.0], "best": [None]}


@pytest.mark.parametrize("eigenvalues,space", CASES + [([1.224978190439138], SearchSpace(1e-2, 30.0, 0.0, 0.99))])
def test_contour_labels_sit_on_their_contour_and_apart(eigenvalues, space):
    """Each label is a point of its own level set (ρ = r there) and no two labels are closer
    than LABEL_GAP of the plot; on [0.01, 30] the 0.9–0.99 curves crowd beside the boundary,
    where labels at each curve's middle would overlap."""
    data = figures.stability_map(space, eigenvalues)
    span = math.log10(space.lr_high / space.lr_low)
    placed = []
    for contour in data["contours"]:
        label = contour["label"]
        if label is None:
            continue
        assert spectral_radius(label["lr"], label["momentum"], eigenvalues) == pytest.approx(contour["level"], abs=1e-7)
        placed.append((math.log10(label["lr"] / space.lr_low) / span,
                       (label["momentum"] - space.momentum_low) / (space.momentum_high - space.momentum_low)))
    assert len(placed) >= 2
    assert all(math.dist(a, b) >= figures.LABEL_GAP for i, a in enumerate(placed) for b in placed[i + 1:])
