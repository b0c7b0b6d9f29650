"""One setting of momentum SGD's hyperparameters: the :class:`Point` every layer passes on.

A point is η and β for every parameter (a scalar point), or an η_g and a β_g for each
parameter group g, named by prefix as :func:`metatune.unroll` takes them (a per-group
point), and either may be a schedule (:mod:`metatune.schedule`): K knots of η and of β per
group (2·K·G hyperparameters), or a fixed shape's values (warm-up + cosine: the peak η and
β, with the shape's warm-up and final fractions). It has three forms, each with one
encoder/decoder pair:

* JSON (:meth:`Point.to_json` / :meth:`Point.from_json`): ``{"lr": η, "momentum": β}``,
  per group ``{"lr": {prefix: η_g}, "momentum": {prefix: β_g}}``, with a list of K values
  in place of each number for knots and ``"schedule": {"shape", "warmup", "final"}`` for a
  fixed shape; the REST API, the database and a Ray trial's config use it.
* params (:meth:`Point.to_params` / :meth:`Point.from_params`): flat names
  (:func:`slot_names`) ``lr``, per group ``lr[<prefix>]``, per knot ``lr@<k>`` (or
  ``lr[<prefix>]@<k>``), likewise ``momentum…``, and ``warmup``/``final``; Optuna's
  distributions and the metrics a Ray trial reports use it (Ray flattens nested results).
* u (:meth:`Point.to_u` / :meth:`Point.from_u`): u = (log η …, log(1 − β) …) ∈ ℝ^{2GK},
  the unconstrained coordinates metagrad's chains move in.

The engine takes :meth:`Point.hyperparameters` (floats, :class:`~metatune.schedule.Knots`
or per-step tensors, or dicts of those by prefix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from metatune.errors import invalid
from metatune.schedule import KNOTS, WARMUP_COSINE, Schedule, Shape

Hyper = Union[float, list[float], dict[str, float], dict[str, list[float]]]
"""η or β in JSON form: one float, one list of K knot values, or either per group by prefix."""


def slot_names(name: str, groups: Sequence[str] = (), knots: int = 1) -> list[str]:
    """The flat names of η (``name="lr"``) or β per group and knot, in a point's order:
    ``lr``; per group ``lr[<prefix>]``; per knot ``lr@<k>`` or ``lr[<prefix>]@<k>``.

    Example:
        >>> slot_names("lr", ("0", "2"), 2)
        ['lr[0]@0', 'lr[0]@1', 'lr[2]@0', 'lr[2]@1']
    """
    heads = [f"{name}[{g}]" for g in groups] if groups else [name]
    return [f"{head}@{k}" if knots > 1 else head for head in heads for k in range(knots)]


@dataclass(frozen=True)
class Point:
    """η and β: ``shape.knots`` values each per group in ``groups`` order (one group when
    ``groups`` is empty), group-major, under a schedule ``shape`` (constant by default).

    Hashable and compared by value, so a point keys the trials recorded at it.

    Example:
        >>> p = Point.of({"0": 0.1, "2": 0.2}, {"0": 0.9, "2": 0.5})
        >>> p.groups, p.to_params()["lr[2]"], Point.from_json(p.to_json()) == p
        (('0', '2'), 0.2, True)
        >>> Point.of([0.1, 0.3], [0.9, 0.5]).to_params()
        {'lr@0': 0.1, 'lr@1': 0.3, 'momentum@0': 0.9, 'momentum@1': 0.5}
    """

    lrs: tuple[float, ...]
    momenta: tuple[float, ...]
    groups: tuple[str, ...] = ()
    shape: Shape = Shape()

    def __post_init__(self) -> None:
        size = self.slots
        if len(self.lrs) != size or len(self.momenta) != size:
            raise invalid("point", (self.lrs, self.momenta),
                          f"{self.shape.knots} lr and momentum value(s) per group ({size} in all)")
        if len(set(self.groups)) != len(self.groups):
            raise invalid("point.groups", self.groups, "distinct parameter-name prefixes")

    @property
    def knots(self) -> int:
        """K: values per group of η and of β."""
        return self.shape.knots

    @property
    def slots(self) -> int:
        """G·K: how many η (and as many β) the point holds."""
        return max(len(self.groups), 1) * self.shape.knots

    @property
    def constant(self) -> bool:
        """True for one (η, β) per group held over the run."""
        return self.shape.constant

    @property
    def uniform(self) -> bool:
        """True for one (η, β) for every parameter at every step: no groups, and a knot
        schedule whose knots are all equal (a constant schedule over K knots)."""
        return (not self.groups and self.shape.kind == KNOTS and len(set(self.lrs)) == 1
                and len(set(self.momenta)) == 1)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def scalar(cls, lr: float, momentum: float) -> Point:
        """One η and one β for every parameter."""
        return cls((float(lr),), (float(momentum),))

    @classmethod
    def of(cls, lr: Hyper | Mapping[str, Any], momentum: Hyper | Mapping[str, Any], shape: Shape | None = None) -> Point:
        """The point of an η and a β given as floats or lists of K knot values, or as dicts of
        those by group prefix (the same keys); ``shape`` for a fixed shape's values."""
        mixed = invalid("point", (lr, momentum), "lr and momentum both floats, both lists of knot values, "
                                                 "or both dicts of those by group")
        if isinstance(lr, Mapping):
            if not isinstance(momentum, Mapping):
                raise mixed
            groups = tuple(lr)
            if set(momentum) != set(groups):
                raise invalid("point.momentum", dict(momentum), f"one momentum per group of lr: {list(groups)}")
            lr_rows = [_values(lr[g], f"point.lr[{g!r}]") for g in groups]
            momentum_rows = [_values(momentum[g], f"point.momentum[{g!r}]") for g in groups]
        elif isinstance(momentum, Mapping):
            raise mixed
        else:
            groups = ()
            lr_rows, momentum_rows = [_values(lr, "point.lr")], [_values(momentum, "point.momentum")]
        knots = {len(row) for row in lr_rows + momentum_rows}
        if len(knots) != 1:
            raise invalid("point", (lr, momentum), "the same number of knot values for every lr and momentum")
        shape = shape or Shape.of_knots(knots.pop())
        return cls(tuple(x for row in lr_rows for x in row), tuple(x for row in momentum_rows for x in row), groups,
                   shape)

    @classmethod
    def same(cls, lr: float, momentum: float, groups: Sequence[str] = ()) -> Point:
        """η and β repeated for every group."""
        size = max(len(groups), 1)
        return cls((float(lr),) * size, (float(momentum),) * size, tuple(groups))

    def with_shape(self, shape: Shape) -> Point:
        """This constant point as the constant schedule of ``shape`` (each η and β repeated over
        the knots), or with a fixed shape's parameters."""
        if not self.constant:
            raise invalid("point", self.to_json(), "a constant point to take a schedule's shape")
        knots = shape.knots
        return Point(tuple(x for x in self.lrs for _ in range(knots)),
                     tuple(x for x in self.momenta for _ in range(knots)), self.groups, shape)

    # -- the engine's form ----------------------------------------------------------------------

    @property
    def lr(self) -> Hyper:
        """η in JSON form: a float or a list of K knot values, or ``{prefix: …}`` per group."""
        return self._hyper(self.lrs)

    @property
    def momentum(self) -> Hyper:
        """β in JSON form, as :attr:`lr`."""
        return self._hyper(self.momenta)

    def _rows(self, values: tuple[float, ...]) -> list[tuple[float, ...]]:
        k = self.shape.knots
        return [values[i:i + k] for i in range(0, len(values), k)]

    def _hyper(self, values: tuple[float, ...]) -> Hyper:
        rows: list[Any] = [row[0] if self.shape.knots == 1 else list(row) for row in self._rows(values)]
        return dict(zip(self.groups, rows)) if self.groups else rows[0]

    def hyperparameters(self, steps: int) -> tuple[Any, Any]:
        """(lr, momentum) as :func:`metatune.unroll` and :func:`metatune.hypergrad` take them
        over ``steps`` steps: floats when constant, :class:`~metatune.schedule.Knots` per
        group for K > 1 (so the meta-gradient comes per knot), per-step tensors for a fixed
        shape; dicts by prefix per group."""
        out = []
        for values, lr in ((self.lrs, True), (self.momenta, False)):
            rows = [self.shape.engine_values(row, lr=lr, steps=steps) for row in self._rows(values)]
            out.append(dict(zip(self.groups, rows)) if self.groups else rows[0])
        return out[0], out[1]

    def pairs(self) -> list[tuple[float, float]]:
        """(η, β) of each group and knot (one pair when scalar)."""
        return list(zip(self.lrs, self.momenta))

    # -- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """``{"lr": η, "momentum": β}`` (floats or lists of knot values, or dicts of those by
        prefix), with ``"schedule"`` for a fixed shape."""
        out: dict[str, Any] = {"lr": self.lr, "momentum": self.momentum}
        schedule = self.shape.to_json()
        if schedule is not None:
            out["schedule"] = schedule
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Point:
        """Inverse of :meth:`to_json`."""
        lr, momentum = data.get("lr"), data.get("momentum")
        if not isinstance(lr, (int, float, list, Mapping)) or not isinstance(momentum, (int, float, list, Mapping)):
            raise invalid("point", dict(data), "{'lr': number, list or {prefix: number or list}, 'momentum': likewise}")
        schedule = data.get("schedule")
        return cls.of(lr, momentum, None if schedule is None else Shape.from_json(schedule))

    # -- Optuna's params and Ray's reports -------------------------------------------------------

    def to_params(self) -> dict[str, float]:
        """Flat names (:func:`slot_names`): ``lr``, ``lr[<prefix>]``, ``lr@<k>``, … and the
        momenta; a fixed shape adds its ``warmup`` and ``final``."""
        out = {**dict(zip(slot_names("lr", self.groups, self.knots), self.lrs)),
               **dict(zip(slot_names("momentum", self.groups, self.knots), self.momenta))}
        if self.shape.kind == WARMUP_COSINE:
            out.update(warmup=self.shape.warmup, final=self.shape.final)
        return out

    @classmethod
    def from_params(cls, values: Mapping[str, float], groups: Sequence[str] = (),
                    schedule: Schedule | None = None) -> Point:
        """Inverse of :meth:`to_params` for the point's ``groups`` and ``schedule``."""
        schedule = schedule or Schedule()
        shape = Shape.of_knots(schedule.knots)
        if schedule.shape == WARMUP_COSINE:
            shape = Shape.warmup_cosine(values["warmup"], values["final"])
        return cls(tuple(float(values[n]) for n in slot_names("lr", groups, shape.knots)),
                   tuple(float(values[n]) for n in slot_names("momentum", groups, shape.knots)), tuple(groups), shape)

    # -- the chains' coordinates -----------------------------------------------------------------

    def to_u(self) -> np.ndarray:
        """u = (log η …, log(1 − β) …), over every group and knot."""
        return np.array([math.log(x) for x in self.lrs] + [math.log(1.0 - x) for x in self.momenta])

    @classmethod
    def from_u(cls, u: Sequence[float] | np.ndarray, groups: Sequence[str] = (), shape: Shape | None = None) -> Point:
        """Inverse of :meth:`to_u`: (η, β) = (exp u₀, 1 − exp u₁) per group and knot."""
        half = len(u) // 2
        return cls(tuple(math.exp(float(x)) for x in u[:half]), tuple(1.0 - math.exp(float(x)) for x in u[half:]),
                   tuple(groups), shape or Shape())


def _values(value: Any, name: str) -> tuple[float, ...]:
    """One group's η or β: a number (K = 1) or a non-empty list of K numbers."""
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise invalid(name, value, "a number or a non-empty list of numbers (one per knot)")
        return tuple(float(x) for x in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, value, "a number or a non-empty list of numbers (one per knot)")
    return (float(value),)


@dataclass(frozen=True)
class MetaGradient:
    """∂ℓ_val/∂η and ∂ℓ_val/∂β at a point (one value per group and knot, in its order), with
    the run's growth rate and the amplification of its sensitivities.

    Its flat form (:meth:`to_metrics`, :meth:`from_metrics`) names them ``dvalue_dlr`` and
    ``dvalue_dmomentum`` (per group ``dvalue_dlr[<prefix>]``, per knot ``dvalue_dlr@<k>``, …),
    as a trial's metrics do.
    """

    dlr: tuple[float, ...]
    dmomentum: tuple[float, ...]
    growth_rate: float = math.nan
    amplification: float = math.nan

    def to_metrics(self, groups: Sequence[str] = (), knots: int = 1) -> dict[str, float]:
        """The flat metrics: ``dvalue_dlr``, ``dvalue_dmomentum`` (per group and knot),
        ``growth_rate``, ``amplification``."""
        out = {"growth_rate": self.growth_rate, "amplification": self.amplification}
        for name, values in (("dvalue_dlr", self.dlr), ("dvalue_dmomentum", self.dmomentum)):
            out.update(zip(slot_names(name, groups, knots), values))
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], groups: Sequence[str] = (),
                     knots: int = 1) -> MetaGradient | None:
        """Inverse of :meth:`to_metrics` (NaN where a derivative is missing); None where the
        metrics hold no meta-gradient (no growth rate: a run at fixed (η, β))."""
        if "growth_rate" not in metrics:
            return None

        def values(name: str) -> tuple[float, ...]:
            return tuple(float(metrics.get(key, math.nan)) for key in slot_names(name, groups, knots))

        return cls(values("dvalue_dlr"), values("dvalue_dmomentum"), float(metrics["growth_rate"]),
                   float(metrics.get("amplification", math.nan)))

    def as_point_values(self, groups: Sequence[str] = (), knots: int = 1) -> tuple[Hyper, Hyper]:
        """∂ℓ/∂η and ∂ℓ/∂β in the JSON form of a point (floats or lists, or dicts by prefix)."""
        point = Point(self.dlr, self.dmomentum, tuple(groups), Shape.of_knots(knots))
        return point.lr, point.momentum


__all__ = ["Hyper", "MetaGradient", "Point", "slot_names"]
