"""Schedules: η_t and β_t over the T inner steps, from a few numbers.

A schedule's :class:`Shape` maps its values per group to one η and one β per step:

* ``Shape.knots(K)``: K knots spread evenly over the run, knot k at step τ_k = k(T − 1)/(K − 1),
  interpolated piecewise linearly — in log η for the learning rate and in β for the momentum:

      s = t(K − 1)/(T − 1),  i = min(⌊s⌋, K − 2),  a = s − i
      log η_t = (1 − a) log η_i + a log η_{i+1},    β_t = (1 − a) β_i + a β_{i+1}

  K = 1 is one constant (η, β). Each η_t, β_t is a convex combination of two knots, so a
  schedule inside the search box stays inside it at every step: no clipping, and the same
  bounds and stability guard per knot as today's constant space. log η because the
  dynamics respond to relative changes of η (ρ depends on ηλ); β linearly because the box
  is linear in β. No monotonicity is imposed: warm-up, decay and their reverses are all in
  the space, and 2K numbers per group describe any of them at the resolution K allows.
  Each step depends on at most two knots, so forward mode's tangents stay sparse and
  reverse mode's gradient per knot sums the per-step gradients with the hat weights.
* ``Shape.warmup_cosine(warmup, final)``: the practitioner's family, one peak η and one β per
  group; η rises linearly over the first W = round(warmup·T) steps, then follows a cosine
  from the peak down to ``final`` × peak at the last step, with β constant:

      η_t = η_peak (t + 1)/W                                    for t < W
      η_t = η_peak (f + (1 − f) ½ (1 + cos(π (t − W)/(T − 1 − W))))   for t ≥ W

The engine takes η and β per step as a tensor of length T, or at knots as :class:`Knots`
(and returns the meta-gradient per knot); :class:`Schedule` is a search space's schedule:
the shape a tuner searches over.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from metatune import checks
from metatune.errors import invalid

KNOTS = "knots"
WARMUP_COSINE = "warmup-cosine"
SHAPES = (KNOTS, WARMUP_COSINE)

WARMUP_RANGE = (0.0, 0.5)
"""The warm-up fractions the warm-up + cosine family searches (uniform)."""
FINAL_RANGE = (1e-3, 1.0)
"""The final fractions of the peak η the family searches (log-uniform)."""


@dataclass(frozen=True)
class Knots:
    """η or β given at K knots spread evenly over the run (module docstring), as the engine
    takes it: ``mt.hypergrad(..., lr=Knots([0.1, 0.3, 0.05]))`` returns ∂ℓ_val/∂η per knot.

    Example:
        >>> Knots([0.1, 0.2]).values
        (0.1, 0.2)
    """

    values: tuple[float, ...] | Tensor

    def __init__(self, values: Sequence[float] | Tensor) -> None:
        if isinstance(values, Tensor):
            if values.dim() != 1 or values.numel() < 1:
                raise invalid("Knots", tuple(values.shape), "a 1-d tensor of at least one knot value")
            stored: tuple[float, ...] | Tensor = values
        else:
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise invalid("Knots", values, "a non-empty sequence of numbers, one per knot")
            stored = tuple(checks.number(f"Knots[{i}]", v) for i, v in enumerate(values))
        object.__setattr__(self, "values", stored)

    def __len__(self) -> int:
        return len(self.values)

    def tensor(self, like: Tensor) -> Tensor:
        """The knot values as a 1-d tensor of ``like``'s dtype and device."""
        if isinstance(self.values, Tensor):
            return self.values.to(dtype=like.dtype, device=like.device)
        return torch.tensor(self.values, dtype=like.dtype, device=like.device)


def knot_positions(knots: int, steps: int) -> list[tuple[int, float]]:
    """(i, a) per step t: η_t, β_t interpolate knots i and i + 1 with weights 1 − a and a.

    Example:
        >>> knot_positions(3, 5)
        [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
        >>> knot_positions(1, 2)
        [(0, 0.0), (0, 0.0)]
    """
    checks.positive_int("knots", knots)
    checks.positive_int("steps", steps)
    if knots > steps:
        raise invalid("knots", knots, f"at most steps={steps} knots (one per step at most)")
    if knots == 1:
        return [(0, 0.0)] * steps
    out = []
    for t in range(steps):
        s = t * (knots - 1) / (steps - 1)
        i = min(int(math.floor(s)), knots - 2)
        out.append((i, s - i))
    return out


@functools.lru_cache(maxsize=32)
def knot_weights(knots: int, steps: int) -> Tensor:
    """The T × K interpolation matrix W (float64): row t holds 1 − a at knot i and a at i + 1,
    so β_path = W β_knots and log η_path = W log η_knots.

    Example:
        >>> knot_weights(2, 3).tolist()
        [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]

    Cached per (K, T): callers must not write into it.
    """
    weights = np.zeros((steps, knots))
    for t, (i, a) in enumerate(knot_positions(knots, steps)):
        weights[t, i] += 1.0 - a
        if knots > 1:
            weights[t, i + 1] += a
    return torch.from_numpy(weights)


def interpolate(values: Tensor, steps: int, *, log: bool, start: int = 0, stop: int | None = None) -> Tensor:
    """The per-step path of K knot values (differentiable in ``values``) over steps
    ``start … stop − 1`` of T: log-linear when ``log`` (learning rates), linear otherwise (momenta)."""
    weights = knot_weights(len(values), steps)[start:stop].to(dtype=values.dtype, device=values.device)
    return torch.exp(weights @ torch.log(values)) if log else weights @ values


def warmup_cosine_factors(steps: int, warmup: float, final: float) -> Tensor:
    """m_t with η_t = η_peak m_t for the warm-up + cosine family (module docstring), float64.

    Example:
        >>> [round(x, 3) for x in warmup_cosine_factors(5, 0.4, 0.1).tolist()]
        [0.5, 1.0, 1.0, 0.55, 0.1]
    """
    checks.positive_int("steps", steps)
    checks.number("warmup", warmup, low=0.0, high=1.0, high_open=True, note="fraction of the steps")
    checks.number("final", final, low=0.0, high=1.0, low_open=True, note="fraction of the peak lr")
    ramp = min(int(round(warmup * steps)), steps - 1)
    factors = torch.empty(steps, dtype=torch.float64)
    for t in range(steps):
        if t < ramp:
            factors[t] = (t + 1) / ramp
        else:
            span = steps - 1 - ramp
            progress = (t - ramp) / span if span > 0 else 0.0
            factors[t] = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factors


@dataclass(frozen=True)
class Shape:
    """How a point's values per group become η_t and β_t (module docstring): ``kind`` "knots"
    with ``knots`` = K, or "warmup-cosine" (one peak η and one β per group) with its
    ``warmup`` and ``final`` fractions. ``Shape()`` is the constant (η, β)."""

    kind: str = KNOTS
    knots: int = 1
    warmup: float = 0.0
    final: float = 1.0

    def __post_init__(self) -> None:
        checks.choice("schedule.shape", self.kind, SHAPES)
        checks.positive_int("schedule.knots", self.knots)
        if self.kind == WARMUP_COSINE:
            if self.knots != 1:
                raise invalid("schedule.knots", self.knots, "1 for the warm-up + cosine shape (one peak lr)")
            checks.number("schedule.warmup", self.warmup, low=0.0, high=1.0, high_open=True,
                          note="fraction of the steps")
            checks.number("schedule.final", self.final, low=0.0, high=1.0, low_open=True,
                          note="fraction of the peak lr")
        elif (self.warmup, self.final) != (0.0, 1.0):
            raise invalid("schedule", (self.warmup, self.final), "no warmup/final for a knots shape")

    @classmethod
    def of_knots(cls, knots: int) -> Shape:
        return cls(KNOTS, knots)

    @classmethod
    def warmup_cosine(cls, warmup: float, final: float) -> Shape:
        return cls(WARMUP_COSINE, 1, float(warmup), float(final))

    @property
    def constant(self) -> bool:
        """True for one (η, β) held over the run."""
        return self.kind == KNOTS and self.knots == 1

    def lr_path(self, values: Tensor, steps: int) -> Tensor:
        """η_t for t < T from one group's values (K knots, or the peak)."""
        if self.kind == WARMUP_COSINE:
            return values[0] * warmup_cosine_factors(steps, self.warmup, self.final).to(values)
        return interpolate(values, steps, log=True)

    def momentum_path(self, values: Tensor, steps: int) -> Tensor:
        """β_t for t < T from one group's values."""
        if self.kind == WARMUP_COSINE:
            return values[0].expand(steps)
        return interpolate(values, steps, log=False)

    def engine_values(self, values: Sequence[float], *, lr: bool, steps: int) -> float | Knots | Tensor:
        """One group's η (``lr``) or β as the engine takes it: a float when constant,
        :class:`Knots` for K > 1 (so the meta-gradient comes per knot), a per-step tensor for
        a fixed shape."""
        if self.kind == KNOTS:
            return float(values[0]) if self.knots == 1 else Knots(list(values))
        tensor = torch.tensor(list(values), dtype=torch.float64)
        return self.lr_path(tensor, steps) if lr else self.momentum_path(tensor, steps)

    def to_json(self) -> dict[str, Any] | None:
        """None for knots (the values' lists say K), else ``{"shape", "warmup", "final"}``."""
        if self.kind == KNOTS:
            return None
        return {"shape": self.kind, "warmup": self.warmup, "final": self.final}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, knots: int = 1) -> Shape:
        if data is None:
            return cls.of_knots(knots)
        if not isinstance(data, Mapping) or data.get("shape") != WARMUP_COSINE:
            raise invalid("point.schedule", data, "{'shape': 'warmup-cosine', 'warmup': w, 'final': f}")
        return cls.warmup_cosine(data.get("warmup", 0.0), data.get("final", 1.0))


@dataclass(frozen=True)
class Schedule:
    """A search space's schedule: ``knots`` K (η_t and β_t from K knots each per group; K = 1
    is a constant (η, β)), or the warm-up + cosine family (``shape="warmup-cosine"``: peak η,
    β, warm-up fraction in :data:`WARMUP_RANGE`, final fraction in :data:`FINAL_RANGE`).

    Example:
        >>> Schedule.parse(8), Schedule.parse({"shape": "warmup-cosine"}).to_json()
        (Schedule(knots=8, shape='knots'), {'shape': 'warmup-cosine'})
    """

    knots: int = 1
    shape: str = KNOTS

    def __post_init__(self) -> None:
        checks.positive_int("schedule.knots", self.knots, note="knots per hyperparameter")
        checks.choice("schedule.shape", self.shape, SHAPES)
        if self.shape == WARMUP_COSINE and self.knots != 1:
            raise invalid("schedule.knots", self.knots, "1 (or left out) with shape='warmup-cosine'")

    @property
    def constant(self) -> bool:
        return self.shape == KNOTS and self.knots == 1

    def check_steps(self, steps: int) -> None:
        """K ≤ T: every knot moves at least one step."""
        if self.knots > steps:
            raise invalid("schedule.knots", self.knots, f"at most the inner steps T={steps}")

    @classmethod
    def parse(cls, value: ScheduleArg) -> Schedule:
        """None or 1 (constant), K, a Schedule, or its JSON form."""
        if value is None:
            return cls()
        if isinstance(value, Schedule):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"knots", "shape"}
            if unknown:
                raise invalid("schedule", dict(value), f"keys among 'knots', 'shape'; unknown: {sorted(unknown)}")
            return cls(knots=value.get("knots", 1), shape=value.get("shape", KNOTS))
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid("schedule", value, "a number of knots K >= 1, {'knots': K}, "
                                             "{'shape': 'warmup-cosine'} or a Schedule")
        return cls(knots=value)

    def to_json(self) -> dict[str, Any]:
        return {"knots": self.knots} if self.shape == KNOTS else {"shape": self.shape}


ScheduleArg = Union[int, Schedule, Mapping[str, Any], None]

__all__ = ["FINAL_RANGE", "KNOTS", "SHAPES", "WARMUP_COSINE", "WARMUP_RANGE", "Knots", "Schedule", "ScheduleArg",
           "Shape", "interpolate", "knot_positions", "knot_weights",
           "warmup_cosine_factors"]
