"""Request and response bodies (pydantic v2), kept apart from the tables.

A job spec is checked in two layers: its shape here (types, ranges, unknown fields
rejected), then against the server's registry and limits in :mod:`metatune_service.validation`.
Nothing in a spec is code: objectives and methods are names the server knows.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from metatune import tuners
from metatune.job import Resources as LibraryResources
from metatune.tuners import TrialStatus
from metatune.tuners.chains import OUTER
from metatune.tuners.metagrad import MetagradTuner
from metatune_service.status import JobStatus

METHODS = tuple(name for name, tuner in tuners.METHODS.items() if tuner.distributable)
"""The library's methods that run on Ray (the worker's backend)."""
Method = Literal[METHODS]  # type: ignore[valid-type]

_METAGRAD = inspect.signature(MetagradTuner.__init__).parameters
_RESOURCES = LibraryResources()


def metagrad_default(name: str) -> Any:
    """The default of metagrad's option ``name``: the library's, stated once."""
    return _METAGRAD[name].default


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LrRange(Strict):
    low: float = Field(gt=0, description="smallest learning rate η, > 0")
    high: float = Field(gt=0, description="largest learning rate η, > low")
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> LrRange:
        if not self.low < self.high:
            raise ValueError(f"space.lr: low={self.low} must be below high={self.high}")
        return self


class MomentumRange(Strict):
    low: float = Field(ge=0, lt=1, description="smallest momentum β in [0, 1)")
    high: float = Field(gt=0, lt=1, description="largest momentum β, below 1")

    @model_validator(mode="after")
    def _ordered(self) -> MomentumRange:
        if not self.low < self.high:
            raise ValueError(f"space.momentum: low={self.low} must be below high={self.high}")
        return self


Groups = Union[Annotated[str, Field(max_length=80)], Annotated[list[Annotated[str, Field(max_length=80)]],
                                                                Field(max_length=1024)]]
"""An η and a β per parameter group, as ``mt.tune(groups=…)`` takes them: "layers" (one group
per module), "tensors" (one per parameter tensor) or parameter-name prefixes. Only the shape
is checked here; the values by :func:`metatune.tuners.check_groups` (the Python API's check)."""

Hyper = Union[float, dict[str, float]]  # metatune.point.Hyper, spelled for pydantic
"""η or β: one float, or one per group keyed by prefix (a per-group space)."""


class Space(Strict):
    lr: LrRange | None = None
    momentum: MomentumRange | None = None
    groups: Groups | None = Field(default=None, description="None: one (η, β) for every parameter; 'layers', "
                                                            "'tensors' or prefixes: an (η, β) per group")


class Budget(Strict):
    gradient_evals: float | None = Field(default=None, gt=0, description="gradient evaluations the search may spend")
    inner_steps: int | None = Field(default=None, ge=1, description="T, the training steps of one trial")
    trials: int | None = Field(default=None, ge=1, description="fixed-(η, β) runs; sets gradient_evals = trials·(T+1)")


class Resources(Strict):
    cpu: float = Field(default=_RESOURCES.cpu, gt=0, description="CPUs per trial")
    gpu: float = Field(default=_RESOURCES.gpu, ge=0, description="GPUs per trial (0.25: four trials share one)")


class MetagradOptions(Strict):
    """metagrad's options (see ``mt.tune``)."""

    mode: Literal["auto", "forward", "reverse"] = metagrad_default("mode")
    outer: Literal[OUTER] = metagrad_default("outer")  # type: ignore[valid-type]
    meta_lr: float = Field(default=metagrad_default("meta_lr"), gt=0, le=10)
    margin: float = Field(default=metagrad_default("margin"), ge=0, lt=1)
    guard: bool | Literal["auto"] = metagrad_default("guard")
    screen: int | None = Field(default=metagrad_default("screen"), ge=0, le=1024)
    starts: int = Field(default=metagrad_default("starts"), ge=1, le=64)
    max_amplification: float = Field(default=metagrad_default("max_amplification"), gt=1)


class NoOptions(Strict):
    """Optuna's samplers and the grid take no options."""


class JobCreate(Strict):
    objective: str = Field(min_length=1, max_length=100, examples=["mlp-digits"])
    objective_params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    method: Method
    options: dict[str, int | float | str | bool | None] = Field(default_factory=dict)
    space: Space = Field(default_factory=Space)
    budget: Budget = Field(default_factory=Budget)
    resources: Resources = Field(default_factory=Resources)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    concurrency: int = Field(default=1, ge=1)


class ComparisonCreate(Strict):
    name: str = Field(default="", max_length=200)
    objective: str = Field(min_length=1, max_length=100)
    objective_params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    methods: list[Method] = Field(min_length=1, max_length=6)
    options: dict[str, dict[str, int | float | str | bool | None]] = Field(default_factory=dict)
    space: Space = Field(default_factory=Space)
    budget: Budget = Field(default_factory=Budget)
    seeds: int | list[int] = Field(default=3)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(default=1, ge=1)


class TrialSummary(BaseModel):
    number: int
    lr: Hyper
    momentum: Hyper
    value: float | None
    status: TrialStatus


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    owner: str
    objective: str
    method: str
    seed: int
    groups: Groups | None = Field(default=None, description="the job's space.groups, as submitted")
    spec: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    best_trial: TrialSummary | None
    trials: int
    gradient_evals: float
    budget: float
    attempts: int
    comparison_id: str | None


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None
    total: int


class TrialPublic(BaseModel):
    """A trial; ``lr`` and ``momentum`` are floats, or ``{prefix: value}`` in a per-group space."""

    number: int
    lr: Hyper
    momentum: Hyper
    status: TrialStatus
    value: float | None
    spectral_radius: float | None
    stable: bool | None
    lambda_max: float | None
    gradient_evals: float
    cumulative_evals: float
    wall_seconds: float
    error: str | None
    start: int | None
    metrics: dict[str, float | None] = Field(default_factory=dict)


class TrialList(BaseModel):
    items: list[TrialPublic]
    total: int


class ComparisonPublic(BaseModel):
    id: str
    name: str
    objective: str
    status: JobStatus
    jobs: list[JobPublic]
    table: dict | None
    plots: list[str]


class ObjectivePublic(BaseModel):
    name: str
    description: str
    parameters: dict
    steps: int
    space: dict


class Problem(BaseModel):
    detail: str | list
