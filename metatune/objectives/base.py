"""The Objective: a named, seeded tuning problem, and the registry that names them.

An objective builds everything a tuner needs from a seed: initial parameters, a training
loss over a seeded minibatch sequence, a validation loss, a default search space and a
default inner horizon T. Built-in objectives register with :func:`register`; third
parties do the same in-process or through the ``metatune.objectives`` entry-point group
(each entry point loads a factory, registered under the entry point's name).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import torch

from metatune import checks
from metatune._types import Batches, Params, TrainLoss, ValLoss
from metatune.errors import invalid

ENTRY_POINT_GROUP = "metatune.objectives"


@dataclass(frozen=True)
class SearchSpace:
    """Box for (η, β): η in [lr_low, lr_high] (log scale by default), β in [momentum_low, momentum_high]."""

    lr_low: float = 1e-4
    lr_high: float = 1.0
    momentum_low: float = 0.0
    momentum_high: float = 0.99
    lr_log: bool = True

    def __post_init__(self) -> None:
        lr_low = checks.learning_rate("lr_low", self.lr_low)
        lr_high = checks.learning_rate("lr_high", self.lr_high)
        momentum_low = checks.momentum("momentum_low", self.momentum_low)
        momentum_high = checks.momentum("momentum_high", self.momentum_high)
        checks.flag("lr_log", self.lr_log)
        if not lr_low < lr_high:
            raise invalid("space.lr", (lr_low, lr_high), "0 < low < high")
        if not momentum_low < momentum_high:
            raise invalid("space.momentum", (momentum_low, momentum_high), "0 <= low < high < 1")


@dataclass(frozen=True)
class Objective:
    """A seeded tuning problem.

    Attributes:
        name: registry name; params: the keyword arguments it was built with.
        description: one line for listings.
        init_params: ``init_params(seed) -> θ₀``.
        train_loss: ``train_loss(params, batch) -> scalar``.
        val_loss: ``val_loss(params) -> scalar``.
        batches: ``batches(seed, steps) -> at least steps batches`` (or None for full-batch).
        space: default search space; steps: default inner horizon T.
        optimum: known (η*, β*, ρ*) where theory gives them (``{"lr", "momentum", "spectral_radius"}``),
            for reports and plots only: no tuner reads it (a user's objective does not know it).
    """

    name: str
    description: str
    init_params: Callable[[int], Params]
    train_loss: TrainLoss
    val_loss: ValLoss
    batches: Callable[[int, int], Batches]
    space: SearchSpace = field(default_factory=SearchSpace)
    steps: int = 100
    params: dict[str, Any] = field(default_factory=dict)
    optimum: dict[str, float] | None = None


Factory = Callable[..., Objective]
_FACTORIES: dict[str, Factory] = {}
_entry_points_loaded = False


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(**params) -> Objective`` under ``name``.

    Every factory takes keyword arguments with defaults (listed by :func:`describe`),
    including ``dtype`` and ``device``.

    Example:
        >>> @register("my-problem")
        ... def my_problem(*, scale: float = 1.0, dtype=torch.float64, device="cpu") -> Objective: ...
    """

    if not isinstance(name, str) or not name:
        raise invalid("name", name, "a non-empty string, the objective's registry name")

    def add(factory: Factory) -> Factory:
        if not callable(factory):
            raise invalid("factory", factory, "a function of keyword arguments returning an Objective")
        _FACTORIES[name] = factory
        return factory

    return add


def load_entry_points() -> list[str]:
    """Register the factories of the ``metatune.objectives`` entry-point group (a name already
    registered keeps its factory); returns the names found. Runs once by itself on first use
    of the registry; call it again after installing a package in a running process."""
    global _entry_points_loaded
    _entry_points_loaded = True
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    for entry in found:
        _FACTORIES.setdefault(entry.name, entry.load())
    return [entry.name for entry in found]


def unregister(name: str) -> None:
    """Remove objective ``name`` from the registry (nothing if it is not there)."""
    _FACTORIES.pop(checks.instance("name", name, str, "a registered objective's name"), None)


def _load_entry_points() -> None:
    if not _entry_points_loaded:
        load_entry_points()


def names() -> list[str]:
    """Registered objective names, built-in and from entry points, sorted."""
    _load_entry_points()
    return sorted(_FACTORIES)


def parameters(name: str) -> dict[str, Any]:
    """The keyword parameters of objective ``name`` and their defaults."""
    factory = _factory(name)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def describe() -> list[dict[str, Any]]:
    """Every objective: name, description, parameters with defaults, default space and T."""
    rows = []
    for name in names():
        objective = get(name)
        shown = {k: v for k, v in parameters(name).items() if k not in ("dtype", "device")}
        rows.append({"name": name, "description": objective.description, "parameters": shown,
                     "steps": objective.steps, "space": vars(objective.space)})
    return rows


def get(name: str, **params: Any) -> Objective:
    """Build objective ``name`` with ``params`` (the rest keep their defaults).

    Raises:
        ValueError: unknown name (the message lists the names) or unknown parameter.

    Example:
        >>> get("quadratic", dim=10, kappa=100.0).name
        'quadratic'
    """
    factory = _factory(name)
    checks.keywords(f"objective {name!r}", params, parameters(name))
    return factory(**params)


def _factory(name: str) -> Factory:
    _load_entry_points()
    return _FACTORIES[checks.choice("objective", name, sorted(_FACTORIES))]


def default_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A dtype given as a torch dtype or its name ("float32", "float64")."""
    if isinstance(dtype, torch.dtype):
        return checks.choice("dtype", dtype, (torch.float32, torch.float64))
    return getattr(torch, checks.choice("dtype", dtype, ("float32", "float64")))


def default_device(device: str | torch.device) -> torch.device:
    """A device given as a ``torch.device`` or its name ("cpu", "cuda", "cuda:1")."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise invalid("device", device, "a torch device or its name, e.g. 'cpu' or 'cuda:0'") from None
