"""Plots of a :class:`~metatune.compare.Comparison` and of schedules (matplotlib, written to PNG files).

Every figure is drawn from the plain data of :mod:`metatune.figures` (the dashboard draws
the same dicts in the browser): this module only renders them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from metatune.figures import RHO_LEVELS, best_so_far_on, convergence_data, plane_data, schedule_series
from metatune.point import Point

if TYPE_CHECKING:
    from metatune.compare import Comparison


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


def convergence(cmp: Comparison, path: str) -> str:
    """:func:`convergence_figure` written to ``path``."""
    return save(convergence_figure(cmp), path)


def convergence_figure(cmp: Comparison):  # noqa: ANN201 - a matplotlib Figure
    """Best-so-far validation loss against gradient evaluations: median line, min–max band,
    drawn from :func:`metatune.figures.convergence_data`."""
    return draw_convergence(convergence_data(cmp.results, cmp.budget), target=cmp.target,
                            title=f"{cmp.objective.name}: median over {len(cmp.seeds)} seeds, band = min–max")


def draw_convergence(data: Mapping[str, Any], target: float | None = None, title: str = ""):  # noqa: ANN201
    """The figure of a :func:`~metatune.figures.convergence_data` dict."""
    plt = _pyplot()
    grid = np.asarray(data["grid"], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in data["methods"]:
        median, low, high = (_floats(method[k]) for k in ("median", "low", "high"))
        (line,) = ax.plot(grid, median, label=method["method"], lw=2)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15, lw=0)
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel("best validation loss so far")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """JSON numbers as a float array, None as NaN (a gap in a line)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plane(cmp: Comparison, path: str) -> str:
    """:func:`plane_figure` written to ``path``."""
    return save(plane_figure(cmp), path)


def plane_figure(cmp: Comparison):  # noqa: ANN201 - a matplotlib Figure
    """The η–β plane of a comparison: ρ contours and the ρ = 1 boundary from the curvature at
    θ₀, every trial coloured by its validation loss (diverged ones as ×), and metagrad's path
    (its first seed). In a per-group space each trial appears once per group."""
    trials = [t for runs in cmp.results.values() for r in runs for t in r.trials]
    metagrad = cmp.results.get("metagrad", [])[:1]
    data = plane_data(cmp.objective.space, cmp.curvature.eigenvalues, trials, cmp.objective.optimum,
                      paths_of=[t for r in metagrad for t in r.trials])
    label = f"metagrad paths (seed {metagrad[0].seed})" if metagrad else "metagrad paths"
    return draw_plane(data, title=f"{cmp.objective.name}: ", path_label=label)


def draw_plane(data: Mapping[str, Any], title: str = "", path_label: str = "metagrad paths"):  # noqa: ANN201
    """The figure of a :func:`~metatune.figures.plane_data` dict: the region ρ > 1 shaded,
    the ρ = 1 boundary in black (``gid="boundary"``), ρ contours in grey (``gid="rho=<r>"``,
    labelled at their middle), trials coloured by log10 ℓ_val, diverged ones as red ×,
    metagrad's paths in orange and the rate-optimal point as a star."""
    plt = _pyplot()
    stability, trials = data["map"], data["trials"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for outline in stability["unstable"]:
        ax.fill(outline["lr"], outline["momentum"], color="#f4cccc", alpha=0.5, lw=0)
    for contour in stability["contours"]:
        for line in contour["lines"]:
            ax.plot(line["lr"], line["momentum"], color="grey", lw=0.7, gid=f"rho={contour['level']:g}")
        if contour["label"] is not None:
            ax.annotate(f"ρ={contour['level']:.2f}", (contour["label"]["lr"], contour["label"]["momentum"]),
                        fontsize=7, color="dimgrey", ha="center", va="center",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    for line in stability["boundary"]:
        ax.plot(line["lr"], line["momentum"], color="black", lw=2, gid="boundary")
    finite, diverged = trials["finite"], trials["diverged"]
    if finite["lr"]:
        points = ax.scatter(finite["lr"], finite["momentum"], c=finite["log_value"], s=14, cmap="viridis")
        fig.colorbar(points, ax=ax, label="log10 validation loss")
    ax.scatter(diverged["lr"], diverged["momentum"], marker="x", c="red", s=16,
               label=f"diverged ({len(set(diverged['number']))})")
    for index, path in enumerate(data["paths"]):
        ax.plot(path["lr"], path["momentum"], "-o", color="orange", ms=3, lw=1.5, zorder=6,
                label=path_label if index == 0 else None)
    if data["optimum"] is not None:
        ax.plot(data["optimum"]["lr"], data["optimum"]["momentum"], "*", color="magenta", ms=12,
                label="rate-optimal (η*, β*)")
    ax.set_xscale("log")
    ax.set_xlim(*stability["lr_range"])
    ax.set_ylim(*stability["momentum_range"])
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("momentum β")
    ax.set_title(f"{title}ρ from λ ∈ {{{', '.join(f'{x:.3g}' for x in stability['eigenvalues'])}}} at θ₀ "
                 f"(shaded: ρ > 1)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


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


__all__ = ["RHO_LEVELS", "best_so_far_on", "convergence", "convergence_figure", "draw_convergence", "draw_plane",
           "plane", "plane_figure", "save", "schedule_figure", "schedule_series"]
