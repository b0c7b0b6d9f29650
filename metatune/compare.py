"""Equal-budget comparison of tuning methods over several seeds: table, JSON and plots.

Every method gets the same objective, search space, inner horizon T, gradient-evaluation
budget and seeds. Per method the summary gives the median best validation loss with its
spread (min–max over seeds), the median gradient evaluations needed to reach a target
loss (∞ when a seed never reaches it), the median wall time, and ρ / stability of the
best trial.

Every method also searches the same schedule space (``schedule=K`` knots, or the warm-up +
cosine family: :mod:`metatune.schedule`); a method that does not search it (grid, online)
is refused before anything runs. The table's heading states the schedule, the JSON carries
it, and the plots add each method's best η_t, β_t when it is not one constant (η, β).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from metatune import checks
from metatune.errors import invalid
from metatune.job import BACKENDS, TuningJob
from metatune.objectives import Objective, get
from metatune.point import Point
from metatune.schedule import Schedule, ScheduleArg
from metatune.tuners import METHODS, Trial, TuneResult, accepted_options, tuner_class
from metatune.tuners.base import Curvature, estimate_curvature
from metatune.tuning import RAY_OPTIONS, run_job, with_options

BACKEND_OPTIONS = ("resources", "concurrency", *RAY_OPTIONS)
"""What ``backend_options`` may hold: the job's ``resources`` and ``concurrency`` and the
options of :func:`metatune.distributed.run` that apply alike to every (method, seed) job."""


@dataclass
class Comparison:
    """The results of :func:`compare`: ``results[method]`` holds one TuneResult per seed,
    every method searching ``schedule`` over ``steps`` inner steps (None: the objective's T)."""

    objective: Objective
    budget: float
    seeds: list[int]
    results: dict[str, list[TuneResult]]
    curvature: Curvature
    target: float
    schedule: Schedule = field(default_factory=Schedule)
    steps: int | None = None

    @property
    def horizon(self) -> int:
        """T: the inner steps of every trial."""
        return self.steps or self.objective.steps

    def summary(self) -> list[dict[str, Any]]:
        """One row per method (see the module docstring)."""
        rows = []
        for method, runs in self.results.items():
            best = [r.best_value for r in runs]
            reach = [evals_to_reach(r, self.target) for r in runs]
            best_trials = [r.best for r in runs if r.best is not None]
            rows.append({
                "method": method,
                "best_value_median": float(np.median(best)),
                "best_value_min": float(np.min(best)),
                "best_value_max": float(np.max(best)),
                "evals_to_target_median": float(np.median(reach)),
                "reached_target": sum(math.isfinite(x) for x in reach),
                "wall_time_median": float(np.median([r.wall_time for r in runs])),
                "gradient_evals_median": float(np.median([r.gradient_evals for r in runs])),
                "trials_median": float(np.median([len(r.trials) for r in runs])),
                "spectral_radius_median": float(np.median([t.spectral_radius for t in best_trials])) if best_trials else math.nan,
                "stable": all(t.stable for t in best_trials),
                "diverged_trials": sum(t.diverged for r in runs for t in r.trials),
            })
        return rows

    def table(self) -> str:
        """The summary as a Markdown table. Its ρ is that of each best point over the curvature
        at θ₀: over a schedule, the largest over the knots (at the peak η for warm-up + cosine),
        so a schedule that passes briefly through ρ > 1 reads as not stable without diverging."""
        rho = "final ρ" if self.schedule.constant else \
            "ρ (largest knot)" if self.schedule.shape == "knots" else "ρ (peak η)"
        lines = [
            f"{self.objective.name}: budget {self.budget:g} gradient evaluations, T = {self.horizon}, "
            f"schedule: {describe_schedule(self.schedule)}, seeds {self.seeds}, "
            f"target loss {self.target:.4g} (reached within {REACH_TOLERANCE:g} of it)",
            "",
            "| method | best val loss (median) | [min, max] | evals to target (median) | reached | "
            f"wall s (median) | trials | {rho} | stable | diverged trials |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.summary():
            lines.append(
                f"| {row['method']} | {row['best_value_median']:.4g} | [{row['best_value_min']:.3g}, "
                f"{row['best_value_max']:.3g}] | {row['evals_to_target_median']:.0f} | "
                f"{row['reached_target']}/{len(self.seeds)} | {row['wall_time_median']:.1f} | "
                f"{row['trials_median']:.0f} | {row['spectral_radius_median']:.4f} | {row['stable']} | "
                f"{row['diverged_trials']} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": {"name": self.objective.name, "params": self.objective.params,
                          "steps": self.objective.steps, "optimum": self.objective.optimum},
            "budget": self.budget,
            "steps": self.horizon,
            "schedule": self.schedule.to_json(),
            "seeds": self.seeds,
            "target": self.target,
            "curvature": {"lambda_min": self.curvature.lambda_min, "lambda_max": self.curvature.lambda_max},
            "summary": self.summary(),
            "runs": {m: [_run_dict(r) for r in runs] for m, runs in self.results.items()},
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2)

    def best_points(self) -> dict[str, Point]:
        """Each method's best point over its seeds, labelled with the method, the seed and
        its validation loss (methods with no finite trial left out)."""
        points = {}
        for method, runs in self.results.items():
            found = [r for r in runs if r.best is not None]
            if found:
                run = min(found, key=lambda r: r.best_value)
                points[f"{method} (seed {run.seed}, val loss {run.best_value:.3g})"] = run.best.point
        return points

    def plot(self, path: str) -> list[str]:
        """Write the convergence and η–β plane plots as ``<path>-convergence.png`` and
        ``<path>-plane.png``, and, when the schedule is not one constant (η, β), each
        method's best η_t and β_t as ``<path>-schedule.png``; return the file names."""
        from metatune import plots

        written = [plots.convergence(self, f"{path}-convergence.png"), plots.plane(self, f"{path}-plane.png")]
        points = self.best_points()
        if not self.schedule.constant and points:
            title = (f"{self.objective.name}: each method's best schedule "
                     f"({describe_schedule(self.schedule)}, T = {self.horizon})")
            figure = plots.schedule_figure(points, self.horizon, title=title)
            written.append(plots.save(figure, f"{path}-schedule.png"))
        return written


def describe_schedule(schedule: Schedule) -> str:
    """The schedule in words, as the table's heading states it.

    Example:
        >>> [describe_schedule(Schedule.parse(s)) for s in (1, 8, {"shape": "warmup-cosine"})]
        ['constant', '8 knots', 'warm-up + cosine']
    """
    if schedule.constant:
        return "constant"
    return f"{schedule.knots} knots" if schedule.shape == "knots" else "warm-up + cosine"


REACH_TOLERANCE = 1e-6
"""A trial reaches the target when its value is within this relative tolerance of it: two
methods that find the same point differ in the last digits of its loss (4e-9 relative seen
between TPE and random), and an exact comparison would count one as missing it."""


def evals_to_reach(result: TuneResult, target: float) -> float:
    """Cumulative gradient evaluations at the first trial with value ≤ target · (1 + 10⁻⁶)
    (:data:`REACH_TOLERANCE`, relative to |target|; ∞ if none)."""
    bound = target + REACH_TOLERANCE * abs(target)
    for trial in result.trials:
        if not trial.diverged and trial.value <= bound:
            return trial.cumulative_evals
    return math.inf


def _run_dict(result: TuneResult) -> dict[str, Any]:
    return {"seed": result.seed, "wall_time": result.wall_time, "best_value": result.best_value,
            "best_lr": result.best_lr, "best_momentum": result.best_momentum,
            "best_point": None if result.best is None else result.best.point.to_json(),
            "trials": [t.to_json() for t in result.trials]}


def json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def compare(
    objective: Objective | str | TuningJob,
    methods: Sequence[str] = ("metagrad", "tpe", "cmaes", "random"),
    budget: float = 20_000,
    seeds: Iterable[int] = range(5),
    *,
    target: float | None = None,
    on_trial: Callable[[str, int, Trial], None] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    groups: str | Sequence[str] | None = None,
    schedule: ScheduleArg = None,
    backend: str = "local",
    backend_options: dict[str, Any] | None = None,
) -> Comparison:
    """Run every method on every seed at the same budget and collect the results.

    Args:
        objective: an Objective, a registered name, or a :class:`~metatune.job.TuningJob`
            whose objective, budget, space, groups, schedule, T, resources and backend every
            (method, seed) job shares (``budget``, ``groups`` and ``backend`` are then not read;
            ``schedule`` must be None or the job's).
        methods: names from :data:`metatune.tuners.METHODS`.
        budget: gradient evaluations per (method, seed).
        seeds: seeds; each seeds θ₀, the minibatches and the method.
        target: the loss for "evaluations to reach"; default: the median best value of the
            first method other than metagrad (the reference baseline), else of the first.
        on_trial: ``on_trial(method, seed, trial)`` after each trial (progress bars).
        options: per-method keyword options, e.g. ``{"metagrad": {"mode": "reverse"}}``.
        groups: every method searches an η and a β per parameter group ("layers", "tensors"
            or prefixes; :mod:`metatune.tuners.groups`); None: one η and one β.
        schedule: every method searches η_t and β_t from K knots each (``schedule=K``), or
            the warm-up + cosine family (``{"shape": "warmup-cosine"}`` or a
            :class:`~metatune.schedule.Schedule`); None: one (η, β) over the run.
        backend: "local" or "ray" (each (method, seed) job runs as a Ray Tune experiment).
        backend_options: for "ray": ``resources``, ``concurrency``, ``ray_address``, ``storage``,
            ``max_retries``, ``reuse_actors`` (:func:`metatune.distributed.run`).

    Raises:
        ValueError: a bad argument, or a method that does not search ``schedule`` (grid and
            online search one constant (η, β); metagrad searches knots, not the warm-up +
            cosine family), before any method runs.

    Example:
        >>> cmp = compare("quadratic", ["random", "grid"], budget=1_000, seeds=[0, 1])
        >>> [row["method"] for row in cmp.summary()]
        ['random', 'grid']
    """
    template = objective if isinstance(objective, TuningJob) else None
    given, schedule = schedule, Schedule.parse(schedule)
    if template is not None:
        if given is not None and schedule != template.schedule:
            raise invalid("schedule", schedule.to_json(),
                          f"None or the TuningJob's {template.schedule.to_json()}")
        objective, budget, backend, groups = template.build_objective(), template.budget, template.backend, None
        schedule = template.schedule
    elif isinstance(objective, str):
        objective = get(objective)
    checks.instance("objective", objective, Objective, "an Objective, a registered name or a TuningJob")
    methods, seeds = _check_methods(methods), _check_seeds(seeds)
    budget = checks.positive("budget", budget, note="gradient evaluations per method and seed")
    target = None if target is None else checks.number("target", target, finite=False)
    checks.function("on_trial", on_trial, "a function (method, seed, trial)", optional=True)
    options = _check_options(options, methods)
    steps = template.steps if template is not None and template.steps is not None else objective.steps
    _check_schedule(schedule, methods, options, steps)
    backend_options = _check_backend_options(checks.choice("backend", backend, BACKENDS), backend_options)
    run_options = {k: v for k, v in backend_options.items() if k in RAY_OPTIONS}
    shared = {k: v for k, v in backend_options.items() if k not in RAY_OPTIONS}
    if groups is not None:
        shared["groups"] = groups
    if template is None:
        shared["schedule"] = schedule
    results: dict[str, list[TuneResult]] = {}
    for method in methods:
        results[method] = []
        for seed in seeds:
            callback = None if on_trial is None else (lambda t, m=method, s=seed: on_trial(m, s, t))
            base = template or TuningJob(objective.name, method, dict(objective.params), budget=budget, backend=backend)
            job = with_options(base.with_changes(method=method, seed=seed, options={}),
                               {**shared, **options.get(method, {})})
            results[method].append(run_job(job, objective=objective, callback=callback, **run_options))
    if target is None:
        reference = next((m for m in methods if m != "metagrad"), methods[0])
        target = float(np.median([r.best_value for r in results[reference]]))
    params = objective.init_params(seeds[0])
    curvature = estimate_curvature(objective, params, objective.batches(seeds[0], objective.steps))
    return Comparison(objective, budget, seeds, results, curvature, target, schedule, steps)


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str) or not isinstance(methods, Iterable):
        raise invalid("methods", methods, f"a list of method names from {sorted(METHODS)}")
    methods = list(methods)
    unknown = [m for m in methods if not isinstance(m, str) or m not in METHODS]
    if not methods or unknown:
        unknown_note = f"; unknown: {unknown}" if unknown else ""
        raise invalid("methods", methods, f"a non-empty list from {sorted(METHODS)}{unknown_note}")
    return methods


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    if not isinstance(seeds, Iterable) or isinstance(seeds, str):
        raise invalid("seeds", seeds, "a list of integer seeds >= 0, e.g. seeds=range(5)")
    seeds = [checks.integer(f"seeds[{i}]", seed, low=0) for i, seed in enumerate(seeds)]
    if not seeds:
        raise invalid("seeds", seeds, "at least one seed")
    return seeds


def _check_schedule(schedule: Schedule, methods: list[str], options: dict[str, dict[str, Any]],
                    steps: int) -> None:
    """Every method searches ``schedule`` (at most T knots at its horizon T), else the
    method's own ValueError, raised before any method runs."""
    for method in methods:
        tuner_class(method).check_schedule(schedule, options.get(method, {}).get("steps", steps))


def _check_options(options: dict[str, dict[str, Any]] | None, methods: list[str]
                   ) -> dict[str, dict[str, Any]]:
    """Per-method options, each method among ``methods`` and each option one it takes."""
    if options is None:
        return {}
    checks.instance("options", options, dict, "a dict method -> dict of options")
    for method, given in options.items():
        checks.choice("options", method, methods, note="a key of options names a compared method")
        checks.instance(f"options[{method!r}]", given, dict, "a dict of keyword options")
        checks.keywords(f"method {method!r}", given, [*accepted_options(method), "steps", "space"])
    return options


def _check_backend_options(backend: str, backend_options: dict[str, Any] | None) -> dict[str, Any]:
    """What ``metatune.distributed.run`` takes besides the job: nothing unless ``backend='ray'``."""
    if not backend_options:
        return {}
    if backend != "ray" or not isinstance(backend_options, dict):
        raise invalid("backend_options", backend_options, "None unless backend='ray', then a dict")
    checks.keywords("the Ray backend", backend_options, BACKEND_OPTIONS)
    return backend_options
