"""The data every figure is drawn from: best-so-far curves, the η–β stability map (ρ contours
and the ρ = 1 boundary), trials as points, metagrad's paths and outer steps, schedules.

One module computes them; :mod:`metatune.plots` renders them to PNG with matplotlib and the
service's dashboard renders the same dicts with plotly.js. Everything returned is plain
JSON (lists, dicts, floats; ``None`` where a value is not finite), so a figure drawn in a
browser and the PNG of ``metatune compare`` show the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metatune import checks
from metatune.objectives.base import SearchSpace
from metatune.point import Point, slot_names
from metatune.schedule import KNOTS
from metatune.tuners.records import LOG_FLOOR, Trial, TrialStatus, TuneResult

RHO_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
"""The ρ contours drawn besides the ρ = 1 boundary."""

MAP_SAMPLES = 256
"""β values each curve of the stability map is sampled at. The curves are exact (closed form,
:func:`level_set`); the samples only make the straight lines η(β) bend smoothly on a log-η
axis. (Contours traced on a grid of ρ are not smooth: ρ has square-root kinks where a root
pair turns complex, and on a 1000² grid the traced ρ = 0.9 line was still off by 0.06 in ρ.)"""

CONVERGENCE_SAMPLES = 400
"""Points along the gradient-evaluation axis of a convergence curve."""


def finite_or_none(values: Iterable[float]) -> list[float | None]:
    """The values as floats, each non-finite one as None (JSON null; a gap when drawn)."""
    return [float(v) if math.isfinite(v) else None for v in values]


# -- best so far --------------------------------------------------------------------------------


def best_so_far_on(result: TuneResult, grid: np.ndarray) -> np.ndarray:
    """The best value reached by each gradient-evaluation count in ``grid`` (NaN before any)."""
    evals = np.array([e for e, _ in result.best_so_far()])
    best = np.array([b for _, b in result.best_so_far()], dtype=float)
    best[~np.isfinite(best)] = np.nan
    index = np.searchsorted(evals, grid, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def best_so_far_steps(trials: Sequence[Trial]) -> dict[str, list[float | None]]:
    """One run's best validation loss so far after each trial, against the cumulative
    gradient evaluations: ``{"evals": [e_i], "best": [min over completed trials j ≤ i of ℓ_j]}``
    (None until a trial completes). Drawn as a step line (the value holds until the next trial).

    Example:
        >>> from metatune.tuners.records import TuneResult
        >>> best_so_far_steps([])
        {'evals': [], 'best': []}
    """
    curve = TuneResult("", "", 0, 0.0, list(trials)).best_so_far()
    return {"evals": [float(e) for e, _ in curve], "best": finite_or_none(b for _, b in curve)}


def convergence_data(results: Mapping[str, Sequence[TuneResult]], budget: float,
                     samples: int = CONVERGENCE_SAMPLES) -> dict[str, Any]:
    """Best-so-far validation loss against gradient evaluations, per method over its seeds.

    On a grid of ``samples`` counts over [0, budget]: each run's best so far (NaN before its
    first completed trial); the ``median`` over runs where more than half have one (else
    None), and the ``low``/``high`` band (min and max over the runs that have one).

    Returns:
        ``{"grid": [e], "methods": [{"method", "runs", "median", "low", "high"}]}``.
    """
    checks.positive("budget", budget)
    grid = np.linspace(0.0, float(budget), samples)
    methods = []
    for method, runs in results.items():
        curves = np.vstack([best_so_far_on(r, grid) for r in runs])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a method's first trial
            valid = np.isfinite(curves).sum(axis=0) > len(runs) / 2
            median = np.where(valid, np.nanmedian(np.where(np.isfinite(curves), curves, np.inf), axis=0), np.nan)
            low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        methods.append({"method": method, "runs": len(runs), "median": finite_or_none(median),
                        "low": finite_or_none(low), "high": finite_or_none(high)})
    return {"grid": grid.tolist(), "methods": methods}


# -- the stability map --------------------------------------------------------------------------


def _clip_runs(lrs: np.ndarray, momenta: np.ndarray, low: float, high: float) -> list[dict[str, list[float]]]:
    """The polyline's stretches with η inside [low, high] (a relative 1e-12 of slack), each as
    ``{"lr": [η], "momentum": [β]}``."""
    inside = (lrs >= low * (1 - 1e-12)) & (lrs <= high * (1 + 1e-12))
    runs, start = [], None
    for i, ok in enumerate([*inside, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start > 1:
                runs.append({"lr": lrs[start:i].tolist(), "momentum": momenta[start:i].tolist()})
            start = None
    return runs


def _momenta_with(low: float, high: float, samples: int, *breaks: float) -> np.ndarray:
    """``samples`` β evenly over [low, high], plus each break point inside it (where a line
    meets the box's edge or turns), sorted."""
    inner = [b for b in breaks if low < b < high]
    return np.unique(np.concatenate([np.linspace(low, high, samples), inner]))


def level_set(level: float, eigenvalues: Sequence[float], space: SearchSpace,
              samples: int = MAP_SAMPLES) -> list[dict[str, list[float]]]:
    """The curve ρ(η, β) = r (heavy ball) inside the space's box, in closed form.

    For one λ > 0 the roots of μ² − (1 + β − ηλ)μ + β = 0 have |μ| ≤ r exactly when
    β ≤ r² and (1 − r)(1 − β/r) ≤ ηλ ≤ (1 + r)(1 + β/r): the root μ = r sits on the left
    line, μ = −r on the right one, and between them the roots are complex with |μ| = √β.
    Over all λ (ρ takes the largest) the region is bounded by λ_min on the left and
    λ_max on the right, so ρ = r is the left line η_L(β) = (1 − r)(1 − β/r)/λ_min up to
    β = r², the flat top β = r², and the right line η_R(β) = (1 + r)(1 + β/r)/λ_max back
    down (from where η_L ≤ η_R). For r = 1 the left line is η = 0 and only η_R = 2(1 + β)/λ_max
    remains: the critical lr. Any λ ≤ 0 makes ρ ≥ 1 everywhere (no curve for r < 1).
    Drawn on a log-η axis the lines bend, so each is sampled at ``samples`` β.
    """
    lambdas = [float(x) for x in eigenvalues]
    if min(lambdas) <= 0:
        return []
    lam_low, lam_high, r = min(lambdas), max(lambdas), float(level)
    beta_low, beta_high = space.momentum_low, space.momentum_high
    left_at = lambda beta: (1 - r) * (1 - beta / r) / lam_low  # noqa: E731 - η_L(β), linear in β
    right_at = lambda beta: (1 + r) * (1 + beta / r) / lam_high  # noqa: E731 - η_R(β)
    # η_L − η_R is linear and falling in β: the lines meet at β* (below it the set is empty)
    slope = -(1 - r) / (r * lam_low) - (1 + r) / (r * lam_high)
    meet = (right_at(0.0) - left_at(0.0)) / slope
    bottom, top = max(beta_low, meet), min(r * r, beta_high)
    if bottom > top:
        return []
    breaks = []
    for eta in (space.lr_low, space.lr_high):  # where each line leaves the box
        if r < 1:
            breaks.append(r * (1 - eta * lam_low / (1 - r)))
        breaks.append(r * (eta * lam_high / (1 + r) - 1))
    momenta = _momenta_with(bottom, top, samples, *breaks)
    right = [(right_at(b), b) for b in momenta[::-1]]
    left = [(left_at(b), b) for b in momenta] if r < 1 else []
    if r * r <= beta_high or not left:  # the top joins the two lines (or there is only one)
        curves = [left + right]
    else:  # the curve leaves the box through its top edge: two lines
        curves = [left, right]
    lines = []
    for curve in curves:
        eta, beta = (np.array(values) for values in zip(*curve))
        lines.extend(_clip_runs(eta, beta, space.lr_low, space.lr_high))
    return lines


def unstable_region(eigenvalues: Sequence[float], space: SearchSpace,
                    samples: int = MAP_SAMPLES) -> list[dict[str, list[float]]]:
    """The outline of {ρ > 1} inside the box: right of the critical lr η = 2(1 + β)/λ_max
    (η clamped to the box, which clips the region exactly, as it lies right of the line);
    the whole box when some λ ≤ 0."""
    lambdas = [float(x) for x in eigenvalues]
    low, high = space.lr_low, space.lr_high
    beta_low, beta_high = space.momentum_low, space.momentum_high
    if min(lambdas) <= 0:
        return [{"lr": [low, high, high, low, low], "momentum": [beta_low, beta_low, beta_high, beta_high, beta_low]}]
    lam_high = max(lambdas)
    breaks = [eta * lam_high / 2 - 1 for eta in (low, high)]
    momenta = _momenta_with(beta_low, beta_high, samples, *breaks)
    critical = np.clip(2 * (1 + momenta) / lam_high, low, high)
    if (critical >= high).all():
        return []
    lrs = [*critical.tolist(), high, high, float(critical[0])]
    return [{"lr": lrs, "momentum": [*momenta.tolist(), beta_high, beta_low, beta_low]}]


LABEL_GAP = 0.08
"""The least distance between two contour labels, as a fraction of the plot (log η and β
each scaled to [0, 1]): closer labels would overlap, so the later one moves or is left out."""


def _label_at(lines: Sequence[Mapping[str, list[float]]], space: SearchSpace,
              placed: list[tuple[float, float]]) -> dict[str, float] | None:
    """Where a contour's label goes: the point of its longest line nearest that line's middle
    height that keeps :data:`LABEL_GAP` from the labels ``placed`` so far (appended to), or
    None where no point does."""
    if not lines:
        return None
    longest = max(lines, key=lambda line: len(line["lr"]))
    span = math.log10(space.lr_high / space.lr_low)
    height = space.momentum_high - space.momentum_low

    def scaled(lr: float, momentum: float) -> tuple[float, float]:
        return math.log10(lr / space.lr_low) / span, (momentum - space.momentum_low) / height

    middle = (min(longest["momentum"]) + max(longest["momentum"])) / 2
    order = sorted(range(len(longest["lr"])), key=lambda i: abs(longest["momentum"][i] - middle))
    for i in order:
        here = scaled(longest["lr"][i], longest["momentum"][i])
        if 0.02 < here[0] < 0.98 and all(math.dist(here, other) >= LABEL_GAP for other in placed):
            placed.append(here)
            return {"lr": longest["lr"][i], "momentum": longest["momentum"][i]}
    return None


def stability_map(space: SearchSpace, eigenvalues: Sequence[float], levels: Sequence[float] = RHO_LEVELS,
                  samples: int = MAP_SAMPLES) -> dict[str, Any]:
    """ρ(η, β) of heavy ball over the space's box from the given Hessian eigenvalues, as
    curves: :func:`level_set` for each of ``levels`` and for ρ = 1, and :func:`unstable_region`.

    Returns:
        ``{"eigenvalues", "lr_range": [η_lo, η_hi], "momentum_range": [β_lo, β_hi],
        "contours": [{"level": r, "lines": [{"lr": [...], "momentum": [...]}], "label": {"lr", "momentum"}
        or None}] for r in levels (labels kept apart, :func:`_label_at`), "boundary": lines of ρ = 1,
        "unstable": closed outlines of the region ρ > 1}``.
    """
    lambdas = [float(x) for x in eigenvalues]
    if not lambdas or not all(math.isfinite(x) for x in lambdas):
        raise ValueError(f"eigenvalues={lambdas}: give at least one finite Hessian eigenvalue")
    contours = [{"level": float(level), "lines": level_set(level, lambdas, space, samples)} for level in levels]
    placed: list[tuple[float, float]] = []
    for contour in contours:
        contour["label"] = _label_at(contour["lines"], space, placed)
    return {"eigenvalues": lambdas, "lr_range": [space.lr_low, space.lr_high],
            "momentum_range": [space.momentum_low, space.momentum_high], "contours": contours,
            "boundary": level_set(1.0, lambdas, space, samples), "unstable": unstable_region(lambdas, space, samples)}


# -- trials in the plane ------------------------------------------------------------------------


def slot_labels(point: Point) -> list[str]:
    """A label per (η, β) pair of the point, in :meth:`Point.pairs` order: ``""`` for a scalar
    point, ``"[<group>]"``, ``"@<k>"`` or ``"[<group>]@<k>"``.

    Example:
        >>> slot_labels(Point.of({"a": 0.1, "b": 0.2}, {"a": 0.5, "b": 0.6}))
        ['[a]', '[b]']
    """
    return slot_names("", point.groups, point.knots)


def trial_points(trials: Iterable[Trial]) -> dict[str, dict[str, list[Any]]]:
    """Every trial at its (η, β), once per group and knot: the ``finite`` ones with their
    validation loss and log10 of it (the colour), the ``diverged`` ones (and failed ones)
    apart, each with ``rho`` (None where unknown), the trial ``number`` and the ``slot``."""
    out: dict[str, dict[str, list[Any]]] = {
        kind: {"number": [], "slot": [], "lr": [], "momentum": [], "value": [], "log_value": [], "rho": []}
        for kind in ("finite", "diverged")}
    for trial in trials:
        kind = "finite" if trial.status == TrialStatus.COMPLETED and math.isfinite(trial.value) else "diverged"
        for label, (lr, momentum) in zip(slot_labels(trial.point), trial.point.pairs()):
            row = out[kind]
            row["number"].append(trial.number)
            row["slot"].append(label)
            row["lr"].append(lr)
            row["momentum"].append(momentum)
            finite = kind == "finite"
            row["value"].append(trial.value if finite else None)
            row["log_value"].append(math.log10(max(trial.value, LOG_FLOOR)) if finite else None)
            row["rho"].append(trial.spectral_radius if math.isfinite(trial.spectral_radius) else None)
    return out


def _meta_steps(trials: Iterable[Trial]) -> list[Trial]:
    """metagrad's meta-gradient steps (line-search points and other methods' trials left out)."""
    return [t for t in trials if t.chain is not None and t.chain.gradient is not None]


def metagrad_paths(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """metagrad's path in the plane: one polyline per chain (start) and slot, through the
    points where it took a meta-gradient, in trial order: ``{"start", "slot", "numbers",
    "lr", "momentum"}``."""
    steps = _meta_steps(trials)
    paths = []
    for start in sorted({t.chain.start for t in steps if t.chain is not None}):
        walk = [t for t in steps if t.chain is not None and t.chain.start == start]
        for index, label in enumerate(slot_labels(walk[0].point)):
            pairs = [t.point.pairs()[index] for t in walk]
            paths.append({"start": start, "slot": label, "numbers": [t.number for t in walk],
                          "lr": [p[0] for p in pairs], "momentum": [p[1] for p in pairs]})
    return paths


def outer_steps(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """metagrad's outer steps per chain and slot: η, β and the meta-gradient ∂ℓ/∂η, ∂ℓ/∂β
    (None where not finite) at each point where a meta-gradient was taken, with whether the
    chain accepted the point: ``{"start", "slot", "step": [0, 1, …], "numbers", "lr",
    "momentum", "dlr", "dmomentum", "accepted", "value"}``."""
    steps = _meta_steps(trials)
    series = []
    for start in sorted({t.chain.start for t in steps if t.chain is not None}):
        walk = [t for t in steps if t.chain is not None and t.chain.start == start]
        for index, label in enumerate(slot_labels(walk[0].point)):
            gradients = [t.chain.gradient for t in walk if t.chain is not None and t.chain.gradient is not None]
            series.append({
                "start": start, "slot": label, "step": list(range(len(walk))), "numbers": [t.number for t in walk],
                "lr": [t.point.lrs[index] for t in walk], "momentum": [t.point.momenta[index] for t in walk],
                "dlr": finite_or_none(g.dlr[index] for g in gradients),
                "dmomentum": finite_or_none(g.dmomentum[index] for g in gradients),
                "accepted": [bool(t.chain and t.chain.accepted) for t in walk],
                "value": finite_or_none(t.value for t in walk)})
    return series


def plane_data(space: SearchSpace, eigenvalues: Sequence[float], trials: Iterable[Trial],
               optimum: Mapping[str, Any] | None = None, paths_of: Iterable[Trial] | None = None) -> dict[str, Any]:
    """The η–β plane of a job or comparison: :func:`stability_map`, :func:`trial_points`,
    metagrad's :func:`metagrad_paths` (from ``paths_of``, default: the trials themselves), and
    the rate-optimal (η*, β*) where the objective knows it (``optimum``; drawn, never used)."""
    trials = list(trials)
    star = None
    if optimum and isinstance(optimum.get("lr"), (int, float)):
        star = {"lr": float(optimum["lr"]), "momentum": float(optimum["momentum"])}
    return {"map": stability_map(space, eigenvalues), "trials": trial_points(trials),
            "paths": metagrad_paths(trials if paths_of is None else paths_of), "optimum": star}


# -- schedules ----------------------------------------------------------------------------------


def schedule_series(points: Mapping[str, Point], steps: int) -> dict[str, Any]:
    """η_t and β_t for t < T of each labelled point, from its shape's own paths
    (:meth:`~metatune.schedule.Shape.lr_path`, :meth:`~metatune.schedule.Shape.momentum_path`):
    one series per point, or per group of a per-group point (labelled ``"<label> [<prefix>]"``).

    Args:
        points: label -> :class:`~metatune.point.Point` (constant, K knots or a fixed shape).
        steps: the inner horizon T.

    Returns:
        ``{"steps": [0, …, T − 1], "series": [{"label", "lr": [η_t], "momentum": [β_t],
        "knots": None or {"steps": [τ_k], "lr": [η_k], "momentum": [β_k]}}]}``, τ_k = k(T − 1)/(K − 1)
        the step of knot k (knots only for K > 1). Plain lists: JSON as it stands.

    Example:
        >>> data = schedule_series({"K=2": Point.of([0.01, 1.0], [0.0, 0.5])}, 3)
        >>> [round(x, 9) for x in data["series"][0]["lr"]], data["series"][0]["momentum"]
        ([0.01, 0.1, 1.0], [0.0, 0.25, 0.5])
    """
    checks.instance("points", points, Mapping, "a dict label -> Point")
    checks.positive_int("steps", steps, note="the inner horizon T")
    series = []
    for label, point in points.items():
        checks.instance(f"points[{label!r}]", point, Point, "a metatune.Point")
        shape, knots = point.shape, point.knots
        heads = [f"{label} [{group}]" for group in point.groups] if point.groups else [label]
        for row, head in enumerate(heads):
            lrs, momenta = (values[row * knots:(row + 1) * knots] for values in (point.lrs, point.momenta))
            marks = None
            if shape.kind == KNOTS and knots > 1:
                marks = {"steps": [k * (steps - 1) / (knots - 1) for k in range(knots)], "lr": list(lrs),
                         "momentum": list(momenta)}
            lr_values, momentum_values = (torch.tensor(v, dtype=torch.float64) for v in (lrs, momenta))
            series.append({"label": head, "lr": shape.lr_path(lr_values, steps).tolist(),
                           "momentum": shape.momentum_path(momentum_values, steps).tolist(), "knots": marks})
    return {"steps": list(range(steps)), "series": series}


__all__ = ["CONVERGENCE_SAMPLES", "MAP_SAMPLES", "RHO_LEVELS", "best_so_far_on", "best_so_far_steps",
           "convergence_data", "finite_or_none", "level_set", "metagrad_paths", "outer_steps", "plane_data", "schedule_series",
           "slot_labels", "stability_map", "trial_points", "unstable_region"]
