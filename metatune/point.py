"""One setting of momentum SGD's hyperparameters: the :class:`Point` every layer passes on.

A point is η and β for every parameter (a scalar point), or an η_g and a β_g for each
parameter group g, named by prefix as :func:`metatune.unroll` takes them (a per-group
point, 2G hyperparameters). It has three forms, each with one encoder/decoder pair:

* JSON (:meth:`Point.to_json` / :meth:`Point.from_json`): ``{"lr": η, "momentum": β}``,
  per group ``{"lr": {prefix: η_g}, "momentum": {prefix: β_g}}``; the REST API, the
  database and a Ray trial's config use it.
* params (:meth:`Point.to_params` / :meth:`Point.from_params`): flat names ``lr`` and
  ``momentum``, per group ``lr[<prefix>]`` and ``momentum[<prefix>]``; Optuna's
  distributions and the metrics a Ray trial reports use it (Ray flattens nested results).
* u (:meth:`Point.to_u` / :meth:`Point.from_u`): u = (log η_1 … log η_G, log(1 − β_1) …
  log(1 − β_G)) ∈ ℝ^{2G}, the unconstrained coordinates metagrad's chains move in.

The engine takes :attr:`Point.lr` and :attr:`Point.momentum` as they are: a float, or a
dict by prefix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from metatune.errors import invalid

Hyper = Union[float, dict[str, float]]
"""η or β as the engine and the JSON form take it: one float, or one per group by prefix."""


@dataclass(frozen=True)
class Point:
    """η and β, one value per group in ``groups`` order (one value when ``groups`` is empty).

    Hashable and compared by value, so a point keys the trials recorded at it.

    Example:
        >>> p = Point.of({"0": 0.1, "2": 0.2}, {"0": 0.9, "2": 0.5})
        >>> p.groups, p.to_params()["lr[2]"], Point.from_json(p.to_json()) == p
        (('0', '2'), 0.2, True)
    """

    lrs: tuple[float, ...]
    momenta: tuple[float, ...]
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        size = max(len(self.groups), 1)
        if len(self.lrs) != size or len(self.momenta) != size:
            raise invalid("point", (self.lrs, self.momenta), f"one lr and one momentum per group ({size})")
        if len(set(self.groups)) != len(self.groups):
            raise invalid("point.groups", self.groups, "distinct parameter-name prefixes")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def scalar(cls, lr: float, momentum: float) -> Point:
        """One η and one β for every parameter."""
        return cls((float(lr),), (float(momentum),))

    @classmethod
    def of(cls, lr: float | Mapping[str, float], momentum: float | Mapping[str, float]) -> Point:
        """The point of an η and a β given as floats, or as dicts by group prefix (the same keys)."""
        mixed = invalid("point", (lr, momentum), "lr and momentum both floats or both dicts by group")
        if isinstance(lr, Mapping):
            if not isinstance(momentum, Mapping):
                raise mixed
            groups = tuple(lr)
            if set(momentum) != set(groups):
                raise invalid("point.momentum", dict(momentum), f"one momentum per group of lr: {list(groups)}")
            return cls(tuple(float(lr[g]) for g in groups), tuple(float(momentum[g]) for g in groups), groups)
        if isinstance(momentum, Mapping):
            raise mixed
        return cls.scalar(lr, momentum)

    @classmethod
    def same(cls, lr: float, momentum: float, groups: Sequence[str] = ()) -> Point:
        """η and β repeated for every group."""
        size = max(len(groups), 1)
        return cls((float(lr),) * size, (float(momentum),) * size, tuple(groups))

    # -- the engine's form ----------------------------------------------------------------------

    @property
    def lr(self) -> Hyper:
        """η: a float, or ``{prefix: η_g}``."""
        return self._hyper(self.lrs)

    @property
    def momentum(self) -> Hyper:
        """β: a float, or ``{prefix: β_g}``."""
        return self._hyper(self.momenta)

    def _hyper(self, values: tuple[float, ...]) -> Hyper:
        return dict(zip(self.groups, values)) if self.groups else values[0]

    def pairs(self) -> list[tuple[float, float]]:
        """(η_g, β_g) of each group (one pair when scalar)."""
        return list(zip(self.lrs, self.momenta))

    # -- JSON -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Hyper]:
        """``{"lr": η, "momentum": β}`` (floats, or dicts by prefix)."""
        return {"lr": self.lr, "momentum": self.momentum}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Point:
        """Inverse of :meth:`to_json`."""
        lr, momentum = data.get("lr"), data.get("momentum")
        if not isinstance(lr, (int, float, Mapping)) or not isinstance(momentum, (int, float, Mapping)):
            raise invalid("point", dict(data), "{'lr': number or {prefix: number}, 'momentum': likewise}")
        return cls.of(lr, momentum)

    # -- Optuna's params and Ray's reports -------------------------------------------------------

    def to_params(self) -> dict[str, float]:
        """``{"lr", "momentum"}``, or ``{"lr[<prefix>]", "momentum[<prefix>]"}`` per group."""
        if not self.groups:
            return {"lr": self.lrs[0], "momentum": self.momenta[0]}
        return {**{f"lr[{g}]": v for g, v in zip(self.groups, self.lrs)},
                **{f"momentum[{g}]": v for g, v in zip(self.groups, self.momenta)}}

    @classmethod
    def from_params(cls, values: Mapping[str, float], groups: Sequence[str] = ()) -> Point:
        """Inverse of :meth:`to_params` for the point's ``groups``."""
        if not groups:
            return cls.scalar(float(values["lr"]), float(values["momentum"]))
        return cls(tuple(float(values[f"lr[{g}]"]) for g in groups),
                   tuple(float(values[f"momentum[{g}]"]) for g in groups), tuple(groups))

    # -- the chains' coordinates -----------------------------------------------------------------

    def to_u(self) -> np.ndarray:
        """u = (log η_g …, log(1 − β_g) …)."""
        return np.array([math.log(x) for x in self.lrs] + [math.log(1.0 - x) for x in self.momenta])

    @classmethod
    def from_u(cls, u: Sequence[float] | np.ndarray, groups: Sequence[str] = ()) -> Point:
        """Inverse of :meth:`to_u`: (η, β) = (exp u₀, 1 − exp u₁) per group."""
        half = len(u) // 2
        return cls(tuple(math.exp(float(x)) for x in u[:half]), tuple(1.0 - math.exp(float(x)) for x in u[half:]),
                   tuple(groups))


@dataclass(frozen=True)
class MetaGradient:
    """∂ℓ_val/∂η and ∂ℓ_val/∂β at a point (one value per group, in its groups' order), with the
    run's growth rate and the amplification of its sensitivities.

    Its flat form (:meth:`to_metrics`, :meth:`from_metrics`) names them ``dvalue_dlr`` and
    ``dvalue_dmomentum`` (per group ``dvalue_dlr[<prefix>]``, …), as a trial's metrics do.
    """

    dlr: tuple[float, ...]
    dmomentum: tuple[float, ...]
    growth_rate: float = math.nan
    amplification: float = math.nan

    def to_metrics(self, groups: Sequence[str] = ()) -> dict[str, float]:
        """The flat metrics: ``dvalue_dlr``, ``dvalue_dmomentum`` (per group), ``growth_rate``, ``amplification``."""
        out = {"growth_rate": self.growth_rate, "amplification": self.amplification}
        for name, values in (("dvalue_dlr", self.dlr), ("dvalue_dmomentum", self.dmomentum)):
            out.update({f"{name}[{g}]": v for g, v in zip(groups, values)} if groups else {name: values[0]})
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], groups: Sequence[str] = ()) -> MetaGradient | None:
        """Inverse of :meth:`to_metrics` (NaN where a derivative is missing); None where the
        metrics hold no meta-gradient (no growth rate: a run at fixed (η, β))."""
        if "growth_rate" not in metrics:
            return None

        def values(name: str) -> tuple[float, ...]:
            keys = [f"{name}[{g}]" for g in groups] if groups else [name]
            return tuple(float(metrics.get(key, math.nan)) for key in keys)

        return cls(values("dvalue_dlr"), values("dvalue_dmomentum"), float(metrics["growth_rate"]),
                   float(metrics.get("amplification", math.nan)))

    def as_point_values(self, groups: Sequence[str] = ()) -> tuple[Hyper, Hyper]:
        """∂ℓ/∂η and ∂ℓ/∂β in the JSON form of a point (floats, or dicts by prefix)."""
        if not groups:
            return self.dlr[0], self.dmomentum[0]
        return dict(zip(groups, self.dlr)), dict(zip(groups, self.dmomentum))


__all__ = ["Hyper", "MetaGradient", "Point"]
