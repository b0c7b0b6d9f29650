"""The :class:`TuningJob`: what one tuning run is, as every layer passes it on.

A job names a registered objective and its parameters, a method and its options, the
search space (η, β bounds, and the parameter groups that get an η and a β each), the
budget in gradient evaluations and the inner horizon T, the seed, the resources each trial
holds and the backend that runs the trials. ``mt.tune``, ``mt.compare`` and
:func:`metatune.distributed.run` take one; the REST service validates a request into one
and stores its JSON form (:meth:`TuningJob.to_json`); the worker runs
:meth:`TuningJob.from_json` of what it stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Union

from metatune import checks
from metatune.errors import invalid
from metatune.objectives import Objective, SearchSpace, get
from metatune.schedule import Schedule

BACKENDS = ("local", "ray")
"""Where trials run: in this process, or as Ray Tune trials (a local Ray, or a cluster)."""

Groups = Union[str, list[str], None]
"""None (one η and one β), "layers", "tensors", or parameter-name prefixes."""

JsonValue = Union[str, int, float, bool, None]


@dataclass(frozen=True)
class Resources:
    """What one trial holds on Ray: CPUs and (possibly fractional) GPUs; gpu=0.25 lets four
    trials share a GPU."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        checks.number("resources.cpu", self.cpu, low=0.0, high=1024.0, low_open=True, note="CPUs per trial")
        checks.number("resources.gpu", self.gpu, low=0.0, high=64.0, note="GPUs per trial; 0.25: four trials per GPU")

    @classmethod
    def parse(cls, value: Resources | Mapping[str, float] | None) -> Resources:
        """``value`` as Resources: None gives the defaults; a dict takes keys among "cpu", "gpu"."""
        if value is None or isinstance(value, Resources):
            return value or cls()
        if not isinstance(value, Mapping) or set(value) - {"cpu", "gpu"}:
            raise invalid("resources", value, "a dict with keys among 'cpu', 'gpu'")
        return cls(**{k: float(v) for k, v in value.items()})


def _groups(value: object) -> Groups:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(g, str) for g in value):
        return list(value)
    raise invalid("groups", value, "None, 'layers', 'tensors' or a list of parameter-name prefixes")


@dataclass(frozen=True)
class TuningJob:
    """One tuning run.

    Attributes:
        objective: a registered objective's name; ``objective_params`` its keyword arguments.
        method: a tuning method (``metatune.tuners.METHODS``); ``options`` its own options
            (e.g. metagrad's ``mode``).
        budget: gradient evaluations the search may spend.
        steps: the inner horizon T of each trial (None: the objective's).
        space: the (η, β) box (None: the objective's default).
        groups: an η and a β per parameter group ("layers", "tensors" or prefixes), or None.
        schedule: η_t and β_t over the run (:class:`~metatune.schedule.Schedule`): K knots
            each per group, or the warm-up + cosine family; K = 1 (the default) is one (η, β).
        seed: seeds θ₀, the minibatches and the method.
        resources, concurrency: per Ray trial, and trials at once (Ray only).
        backend: "local" or "ray".

    Example:
        >>> job = TuningJob("quadratic", "tpe", budget=3_000, seed=1)
        >>> TuningJob.from_json(job.to_json()) == job, job.to_json()["budget"]
        (True, {'gradient_evals': 3000, 'inner_steps': None})
    """

    objective: str
    method: str = "metagrad"
    objective_params: Mapping[str, JsonValue] = field(default_factory=dict)
    options: Mapping[str, JsonValue] = field(default_factory=dict)
    budget: float = 20_000.0
    steps: int | None = None
    space: SearchSpace | None = None
    groups: Groups = None
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    resources: Resources = field(default_factory=Resources)
    concurrency: int = 1
    backend: str = "local"

    def __post_init__(self) -> None:
        checks.instance("objective", self.objective, str, "a registered objective's name")
        checks.instance("method", self.method, str, "a tuning method's name, e.g. 'metagrad'")
        checks.instance("objective_params", self.objective_params, Mapping, "a dict of keyword arguments")
        checks.instance("options", self.options, Mapping, "a dict of the method's options")
        if not math.isfinite(checks.positive("budget", self.budget, note="gradient evaluations")):
            raise invalid("budget", self.budget, "a finite number of gradient evaluations")
        checks.positive_int("steps", self.steps, optional=True, note="the inner horizon T")
        checks.instance("space", self.space, SearchSpace, "a SearchSpace", optional=True)
        object.__setattr__(self, "groups", _groups(self.groups))
        object.__setattr__(self, "schedule", Schedule.parse(self.schedule))
        if self.steps is not None:
            self.schedule.check_steps(self.steps)
        checks.integer("seed", self.seed, low=0)
        object.__setattr__(self, "resources", Resources.parse(self.resources))
        checks.positive_int("concurrency", self.concurrency, note="trials running at once")
        checks.choice("backend", self.backend, BACKENDS)

    def build_objective(self) -> Objective:
        """The objective, built from the registry with its parameters."""
        return get(self.objective, **self.objective_params)

    def with_changes(self, **changes: Any) -> TuningJob:
        """A copy with ``changes`` (validated as a new job)."""
        return replace(self, **changes)

    # -- JSON ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The job as JSON: what the service stores and a worker runs."""
        box = space_json(self.space) if self.space is not None else {"lr": None, "momentum": None}
        return {
            "objective": self.objective, "objective_params": dict(self.objective_params), "method": self.method,
            "options": dict(self.options),
            "space": {**box, "groups": self.groups, "schedule": self.schedule.to_json()},
            "budget": {"gradient_evals": self.budget, "inner_steps": self.steps},
            "resources": asdict(self.resources), "seed": self.seed, "concurrency": self.concurrency,
            "backend": self.backend,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuningJob:
        """Inverse of :meth:`to_json` (keys left out take their defaults)."""
        space, budget = data.get("space") or {}, data.get("budget") or {}
        lr, momentum = space.get("lr"), space.get("momentum")
        box = None
        if lr is not None or momentum is not None:
            lr, momentum = lr or {}, momentum or {}
            default = SearchSpace()
            box = SearchSpace(lr_low=lr.get("low", default.lr_low), lr_high=lr.get("high", default.lr_high),
                              lr_log=lr.get("log", default.lr_log),
                              momentum_low=momentum.get("low", default.momentum_low),
                              momentum_high=momentum.get("high", default.momentum_high))
        return cls(objective=data["objective"], method=data.get("method", "metagrad"),
                   objective_params=dict(data.get("objective_params") or {}), options=dict(data.get("options") or {}),
                   budget=budget.get("gradient_evals", 20_000.0), steps=budget.get("inner_steps"), space=box,
                   groups=_groups(space.get("groups")), schedule=Schedule.parse(space.get("schedule")),
                   seed=data.get("seed", 0),
                   resources=Resources.parse(data.get("resources")), concurrency=data.get("concurrency", 1),
                   backend=data.get("backend", "local"))


def space_json(space: SearchSpace) -> dict[str, dict[str, float | bool]]:
    """A search box as JSON: ``{"lr": {"low", "high", "log"}, "momentum": {"low", "high"}}``."""
    return {"lr": {"low": space.lr_low, "high": space.lr_high, "log": space.lr_log},
            "momentum": {"low": space.momentum_low, "high": space.momentum_high}}


__all__ = ["BACKENDS", "Groups", "Resources", "TuningJob", "space_json"]
