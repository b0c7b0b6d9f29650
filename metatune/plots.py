"""Plots of a :class:`~metatune.compare.Comparison` and of schedules (matplotlib, written to PNG files).

A figure is drawn from plain data where it can be: :func:`schedule_series` gives the η_t and
β_t that :func:`schedule_figure` draws, as lists a web page can draw alike.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metatune import checks
from metatune.point import Point
from metatune.schedule import KNOTS
from metatune.stability import spectral_radius
from metatune.tuners.records import LOG_FLOOR

if TYPE_CHECKING:
    from metatune.compare import Comparison
    from metatune.tuners import Trial, TuneResult

RHO_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)


def _pyplot():  # noqa: ANN202 - matplotlib without a display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> str:  # noqa: ANN001
    """Write the figure to ``path`` (creating its folder), close it, and return the path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def best_so_far_on(result: TuneResult, grid: np.ndarray) -> np.ndarray:
    """The best value reached by each gradient-evaluation count in ``grid`` (NaN before any)."""
    evals = np.array([e for e, _ in result.best_so_far()])
    best = np.array([b for _, b in result.best_so_far()], dtype=float)
    best[~np.isfinite(best)] = np.nan
    index = np.searchsorted(evals, grid, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def convergence(cmp: Comparison, path: str) -> str:
    """:func:`convergence_figure` written to ``path``."""
    return save(convergence_figure(cmp), path)


def convergence_figure(cmp: Comparison):  # noqa: ANN201 - a matplotlib Figure
    """Best-so-far validation loss against gradient evaluations: median line, min–max band."""
    plt = _pyplot()
    grid = np.linspace(0.0, cmp.budget, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in cmp.results.items():
        curves = np.vstack([best_so_far_on(r, grid) for r in runs])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a method's first trial
            valid = np.isfinite(curves).sum(axis=0) > len(runs) / 2
            median = np.where(valid, np.nanmedian(np.where(np.isfinite(curves), curves, np.inf), axis=0), np.nan)
            low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        (line,) = ax.plot(grid, median, label=method, lw=2)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(cmp.target, color="grey", ls=":", lw=1, label=f"target {cmp.target:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel("best validation loss so far")
    ax.set_title(f"{cmp.objective.name}: median over {len(cmp.seeds)} seeds, band = min–max")
    ax.legend()
    fig.tight_layout()
    return fig


def _pairs(trial: Trial) -> list[tuple[float, float]]:
    """The trial's (η, β), or each group's (η_g, β_g) in a per-group space."""
    return trial.point.pairs()


def plane(cmp: Comparison, path: str) -> str:
    """:func:`plane_figure` written to ``path``."""
    return save(plane_figure(cmp), path)


def plane_figure(cmp: Comparison):  # noqa: ANN201 - a matplotlib Figure
    """The η–β plane: ρ contours and the ρ = 1 boundary from the curvature at θ₀, every trial
    coloured by its validation loss (diverged ones as ×), and metagrad's path. In a
    per-group space each trial appears once per group, at that group's (η_g, β_g)."""
    plt = _pyplot()
    space = cmp.objective.space
    lrs = np.geomspace(space.lr_low, space.lr_high, 240)
    momenta = np.linspace(space.momentum_low, space.momentum_high, 200)
    lr_grid, momentum_grid = np.meshgrid(lrs, momenta)
    eigenvalues = cmp.curvature.eigenvalues
    rho = spectral_radius(lr_grid, momentum_grid, eigenvalues)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    contours = ax.contour(lr_grid, momentum_grid, rho, levels=list(RHO_LEVELS), colors="grey", linewidths=0.7)
    ax.clabel(contours, fmt="ρ=%.2f", fontsize=7)
    ax.contour(lr_grid, momentum_grid, rho, levels=[1.0], colors="black", linewidths=2)
    ax.contourf(lr_grid, momentum_grid, rho, levels=[1.0, np.inf], colors=["#f4cccc"], alpha=0.5)
    trials = [t for runs in cmp.results.values() for r in runs for t in r.trials]
    finite = [(t, pair) for t in trials if not t.diverged for pair in _pairs(t)]
    if finite:
        values = np.log10([max(t.value, LOG_FLOOR) for t, _ in finite])
        points = ax.scatter([p[0] for _, p in finite], [p[1] for _, p in finite], c=values, s=14, cmap="viridis")
        fig.colorbar(points, ax=ax, label="log10 validation loss")
    diverged = [pair for t in trials if t.diverged for pair in _pairs(t)]
    ax.scatter([p[0] for p in diverged], [p[1] for p in diverged], marker="x", c="red", s=16,
               label=f"diverged ({sum(t.diverged for t in trials)})")
    for result in cmp.results.get("metagrad", [])[:1]:
        steps = [t for t in result.trials if t.chain is not None and t.chain.gradient is not None]
        for start in sorted({t.chain.start for t in steps}):
            walk = [_pairs(t) for t in steps if t.chain.start == start]
            for group in range(len(walk[0]) if walk else 0):  # one path per parameter group
                ax.plot([w[group][0] for w in walk], [w[group][1] for w in walk], "-o", color="orange", ms=3,
                        lw=1.5, zorder=6,
                        label=f"metagrad paths (seed {result.seed})" if start == 0 and group == 0 else None)
    if cmp.objective.optimum and "lr" in cmp.objective.optimum:
        ax.plot(cmp.objective.optimum["lr"], cmp.objective.optimum["momentum"], "*", color="magenta", ms=12,
                label="rate-optimal (η*, β*)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("momentum β")
    ax.set_title(f"{cmp.objective.name}: ρ from λ ∈ {{{', '.join(f'{x:.3g}' for x in eigenvalues)}}} at θ₀ "
                 f"(shaded: ρ > 1)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


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


def schedule_figure(points: Mapping[str, Point], steps: int, *, title: str | None = None):  # noqa: ANN201
    """η_t (log scale, top) and β_t (bottom) over the T steps, one line per labelled point
    (per group of a per-group point), knots as dots; drawn from :func:`schedule_series`."""
    data = schedule_series(points, steps)
    plt = _pyplot()
    fig, (lr_ax, momentum_ax) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    for line in data["series"]:
        (drawn,) = lr_ax.plot(data["steps"], line["lr"], lw=2, label=line["label"])
        momentum_ax.plot(data["steps"], line["momentum"], lw=2, color=drawn.get_color(), label=line["label"])
        if line["knots"] is not None:
            knots = line["knots"]
            lr_ax.scatter(knots["steps"], knots["lr"], s=22, color=drawn.get_color(), zorder=5)
            momentum_ax.scatter(knots["steps"], knots["momentum"], s=22, color=drawn.get_color(), zorder=5)
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate η_t")
    momentum_ax.set_ylabel("momentum β_t")
    momentum_ax.set_xlabel("inner step t")
    lr_ax.set_title(title or f"η_t and β_t over T = {steps} steps (dots: knots)")
    lr_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["best_so_far_on", "convergence", "convergence_figure", "plane", "plane_figure", "save",
           "schedule_figure", "schedule_series"]
