"""Request and response bodies (pydantic v2), kept apart from the tables.

A job spec is checked in two layers: its shape here (types, ranges, unknown fields
rejected), then against the server's registry and limits in :mod:`metatune_service.validation`.
Nothing in a spec is code: objectives and methods are names the server knows.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

from metatune import tuners
from metatune.job import Resources as LibraryResources
from metatune.schedule import KNOTS, SHAPES, WARMUP_COSINE
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
    """A request body: unknown keys refused, no coercion (``"1000"`` is not a number, ``true``
    is not an integer), and no NaN or ±Infinity in a number (JSON has neither; Python's
    parser reads them)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        """No string holds a NUL or a lone surrogate (``"\\ud800"``): no database stores them."""
        bad = _bad_text(data)
        if bad is not None:
            raise ValueError(f"{bad!r}: strings may not hold NUL characters or lone surrogates")
        return data


def _bad_text(value: Any) -> str | None:
    """The first string in ``value`` (keys included) that UTF-8 cannot encode or that holds a NUL."""
    if isinstance(value, str):
        if "\x00" in value:
            return value[:40]
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()[:40]
        return None
    parts = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((bad for bad in map(_bad_text, parts) if bad is not None), None)


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

Hyper = Union[float, list[float], dict[str, float], dict[str, list[float]]]  # metatune.point.Hyper, for pydantic
"""η or β in a point's JSON form: one float, a list of K knot values, or either per group keyed by
prefix (a per-group space)."""

Derivative = Union[float, None, list[Union[float, None]], dict[str, Union[float, None]],
                   dict[str, list[Union[float, None]]]]
"""∂ℓ/∂η or ∂ℓ/∂β in the JSON form of a point (:data:`Hyper`); a derivative that was not finite is null."""


class Schedule(Strict):
    """η_t and β_t over the T inner steps (:class:`metatune.schedule.Schedule`): ``{"knots": K}``
    (K knots each per group, interpolated over the run; K = 1 is one constant (η, β)) or
    ``{"shape": "warmup-cosine"}`` (a peak η, β, warm-up and final fractions per trial)."""

    knots: StrictInt = Field(default=1, ge=1, description="K knots of η and of β per group, 1 <= K <= inner steps")
    shape: Literal[SHAPES] = Field(default=KNOTS,  # type: ignore[valid-type]
                                   description="'knots', or 'warmup-cosine' (knots left out or 1)")


class Space(Strict):
    lr: LrRange | None = None
    momentum: MomentumRange | None = None
    groups: Groups | None = Field(default=None, description="None: one (η, β) for every parameter; 'layers', "
                                                            "'tensors' or prefixes: an (η, β) per group")
    schedule: Schedule | None = Field(default=None, description="None: one (η, β) held over the run; "
                                                                "{'knots': K} or {'shape': 'warmup-cosine'}")


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


class ShapePublic(BaseModel):
    """A fixed schedule shape's parameters, as a trial's point holds them (:meth:`metatune.point.Point.to_json`)."""

    shape: Literal[WARMUP_COSINE]  # type: ignore[valid-type]
    warmup: float = Field(description="fraction of the T steps over which η rises linearly to its peak")
    final: float = Field(description="η at the last step as a fraction of the peak")


class TrialSummary(BaseModel):
    """A trial's point (``lr``, ``momentum`` and ``schedule``: :meth:`metatune.point.Point.to_json`) and result."""

    number: int
    lr: Hyper
    momentum: Hyper
    schedule: ShapePublic | None = Field(default=None, description="a warm-up + cosine point's shape; "
                                                                   "null otherwise (lists in lr and momentum: knots)")
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
    schedule: Schedule = Field(description="the job's space.schedule, defaults filled in")
    spec: dict
    created_at: AwareDatetime = Field(description="UTC, with its offset")
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
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


class MetaGradientPublic(BaseModel):
    """∂ℓ_val/∂η and ∂ℓ_val/∂β at a metagrad trial's point, one per group and knot in the point's
    JSON form, with the run's growth rate and the amplification of its sensitivities."""

    lr: Derivative
    momentum: Derivative
    growth_rate: float | None
    amplification: float | None


class TrialPublic(BaseModel):
    """A trial. ``lr``, ``momentum`` and ``schedule`` are its point in JSON form
    (:meth:`metatune.point.Point.to_json`): floats, lists of K knot values in a schedule space,
    or ``{prefix: …}`` of those in a per-group space; ``schedule`` holds a warm-up + cosine
    point's fractions (null otherwise)."""

    number: int
    lr: Hyper
    momentum: Hyper
    schedule: ShapePublic | None = None
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
    node: str | None = Field(description="id of the Ray node that evaluated this trial; null when it ran "
                                         "in-process")
    meta_gradient: MetaGradientPublic | None = Field(default=None, description="metagrad's meta-gradient at "
                                                                               "this point (null for a run at "
                                                                               "fixed hyperparameters)")
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
    """Every error's body (:mod:`metatune_service.api.errors`)."""

    detail: str | list = Field(description="what is wrong and what to change (a list of field errors for a 422 "
                                           "of the request's shape)")
    code: str = Field(description="the kind of error, fixed per kind: unauthenticated, not_found, conflict, "
                                  "invalid_request, invalid_spec, rate_limited, unavailable, …")
