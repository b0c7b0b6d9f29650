"""A job spec against what this server knows and allows: the registry of objectives and
their parameter types, each method's options, and the server's limits. Produces the
:class:`~metatune.job.TuningJob` to store (every default filled in), or a :class:`SpecError`
naming what to change."""

from __future__ import annotations

import functools
import math
from typing import Any

from pydantic import ValidationError

from metatune import objectives, tuners
from metatune.errors import UserError
from metatune.job import Resources, TuningJob
from metatune.schedule import KNOTS, Schedule
from metatune_service.core.config import Settings
from metatune_service.schemas import JobCreate, LrRange, MetagradOptions, MomentumRange, NoOptions
from metatune_service.schemas import Schedule as ScheduleSpec

FORBIDDEN_PARAMS = ("device",)
"""Objective parameters a client may not set: the worker places trials on devices."""


class SpecError(UserError, ValueError):
    """A spec the server refuses; ``str()`` says which field and what to change."""


def check_objective(name: str, params: dict[str, Any], max_size: int = 4096) -> objectives.Objective:
    """The registered objective ``name`` built with ``params`` whose types match its defaults
    (integers at most ``max_size``: the objective is built here, so its size is bounded first)."""
    if name not in objectives.names():
        raise SpecError(f"objective={name!r} is not registered here; choose one of {objectives.names()}")
    allowed = objectives.parameters(name)
    for key, value in params.items():
        if key not in allowed or key in FORBIDDEN_PARAMS:
            usable = sorted(k for k in allowed if k not in FORBIDDEN_PARAMS)
            raise SpecError(f"objective_params.{key} is not a parameter of {name!r}; use one of {usable}")
        default = allowed[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = isinstance(value, type(default)) or default is None
        if not ok:
            raise SpecError(f"objective_params.{key}={value!r} has the wrong type: {name!r} expects "
                            f"{type(default).__name__} (default {default!r})")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > max_size and key != "steps":
            raise SpecError(f"objective_params.{key}={value!r} exceeds this server's limit {max_size}")
    try:
        return _built(name, tuple(sorted(params.items())))
    except TypeError:  # a value that cannot be a cache key (a list): built anew
        return _build(name, params)


@functools.lru_cache(maxsize=256)
def _built(name: str, params: tuple[tuple[str, Any], ...]) -> objectives.Objective:
    """:func:`_build`, remembered: most submissions name a handful of objectives, and building
    one (its data, its optimum) costs more than the rest of a submission's checks. An
    :class:`~metatune.objectives.Objective` is frozen, so one may serve every request."""
    return _build(name, dict(params))


def _build(name: str, params: dict[str, Any]) -> objectives.Objective:
    try:
        return objectives.get(name, **params)
    except ValueError as error:
        raise SpecError(f"objective_params: {error}") from None


def check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's options with defaults, from its typed allow-list."""
    model = MetagradOptions if method == "metagrad" else NoOptions
    try:
        return model.model_validate(options).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"options.{where}: {first['msg']} (allowed for {method!r}: "
                        f"{sorted(model.model_fields) or 'none'})") from None


def check_groups(method: str, groups: str | list[str] | None, objective: objectives.Objective,
                 seed: int) -> tuple[str, ...]:
    """The prefixes of ``groups`` (() for None), once the library accepts them for ``method`` and
    the objective's parameters (:func:`metatune.tuners.check_groups`: prefixes that cover θ₀, a
    method that searches per-group spaces)."""
    if groups is None:
        return ()
    try:
        return tuners.check_groups(method, groups, objective.init_params(seed))
    except ValueError as error:
        raise SpecError(f"space.groups: {error}") from None


def check_schedule(method: str, spec: ScheduleSpec | None, steps: int, groups: int, limit: int) -> Schedule:
    """The :class:`~metatune.schedule.Schedule` of ``spec`` (None: one constant (η, β)), once the
    library accepts it for ``method`` over ``steps`` inner steps (K <= T; a shape the method
    searches: :meth:`metatune.tuners.Tuner.check_schedule`) and its hyperparameters fit the
    server's ``limit``: 2·K·G values of η and β over ``groups`` = G groups, and the warm-up and
    final fractions of the warm-up + cosine family."""
    try:
        schedule = Schedule() if spec is None else Schedule(knots=spec.knots, shape=spec.shape)
        schedule = tuners.tuner_class(method).check_schedule(schedule, steps)
    except ValueError as error:
        raise SpecError(f"space.schedule: {error}") from None
    count = hyperparameters(schedule, groups)
    if count > limit:
        raise SpecError(f"space: schedule={schedule.to_json()} over {max(groups, 1)} parameter group(s) searches "
                        f"{count} hyperparameters, above this server's limit {limit} (fewer knots or groups)")
    return schedule


def hyperparameters(schedule: Schedule, groups: int) -> int:
    """How many numbers a point of the space holds: 2·K·G (η and β per knot and group), plus
    the warm-up and final fractions of a fixed shape.

    Example:
        >>> hyperparameters(Schedule(knots=4), 3), hyperparameters(Schedule(shape="warmup-cosine"), 1)
        (24, 4)
    """
    shape = 0 if schedule.shape == KNOTS else 2
    return 2 * schedule.knots * max(groups, 1) + shape


def normalise(job: JobCreate, settings: Settings) -> TuningJob:
    """The :class:`~metatune.job.TuningJob` a request describes, every default filled in (what
    the service stores and its worker runs), or SpecError."""
    objective = check_objective(job.objective, job.objective_params, settings.max_objective_size)
    steps = job.budget.inner_steps or objective.steps
    if steps > settings.max_inner_steps:
        raise SpecError(f"budget.inner_steps={steps} exceeds this server's limit {settings.max_inner_steps}")
    params = {**job.objective_params, "steps": steps}
    trial_cost = steps + 1
    evals = job.budget.gradient_evals
    if evals is None:
        evals = job.budget.trials * trial_cost if job.budget.trials else settings.default_gradient_evals
    if evals > settings.max_gradient_evals:
        raise SpecError(f"budget.gradient_evals={evals:g} exceeds this server's limit {settings.max_gradient_evals:g}")
    if evals < trial_cost:
        raise SpecError(f"budget.gradient_evals={evals:g} is below one training run ({trial_cost} for T={steps})")
    if evals / trial_cost > settings.max_trials:
        raise SpecError(f"budget affords {evals / trial_cost:.0f} trials, above this server's limit {settings.max_trials}")
    resources = job.resources
    if resources.cpu > settings.max_cpu_per_trial or resources.gpu > settings.max_gpu_per_trial:
        raise SpecError(f"resources={resources.model_dump()} exceed this server's limits per trial "
                        f"(cpu <= {settings.max_cpu_per_trial:g}, gpu <= {settings.max_gpu_per_trial:g})")
    if job.concurrency > settings.max_concurrency:
        raise SpecError(f"concurrency={job.concurrency} exceeds this server's limit {settings.max_concurrency}")
    groups = check_groups(job.method, job.space.groups, objective, job.seed)
    schedule = check_schedule(job.method, job.space.schedule, steps, len(groups), settings.max_hyperparameters)
    default = objective.space
    lr = job.space.lr or LrRange(low=default.lr_low, high=default.lr_high, log=default.lr_log)
    momentum = job.space.momentum or MomentumRange(low=default.momentum_low, high=default.momentum_high)
    try:
        space = objectives.SearchSpace(lr_low=lr.low, lr_high=lr.high, lr_log=lr.log, momentum_low=momentum.low,
                                       momentum_high=momentum.high)
        return TuningJob(job.objective, job.method, params, check_options(job.method, job.options),
                         budget=float(evals), steps=steps, space=space, groups=job.space.groups,
                         schedule=schedule, seed=job.seed,
                         resources=Resources(cpu=resources.cpu, gpu=resources.gpu), concurrency=job.concurrency,
                         backend="ray")
    except ValueError as error:
        raise SpecError(f"space: {error}") from None
