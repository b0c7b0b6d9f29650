"""Momentum-SGD update rules as pure functions, in PyTorch's ``torch.optim.SGD`` convention.

Heavy ball:  v ← β v + g(θ),  θ ← θ − η v                 (v₀ = 0)
Nesterov:    v ← β v + g(θ),  θ ← θ − η (g(θ) + β v)

Hyperparameters are tensors so that gradients reach them. A user gives each as one
scalar, a tensor of one value per step, or :class:`~metatune.schedule.Knots` (a schedule),
or as a dict of those keyed by parameter-name prefix (per-layer hyperparameters);
:func:`group_hyperparameter` turns any form into a :class:`GroupedPath`, whose
:meth:`GroupedPath.per_param` gives the 0-d η and β of each parameter at step t.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from metatune import checks
from metatune._types import HyperArg, Params
from metatune.errors import invalid
from metatune.schedule import Knots, interpolate, knot_weights

SCALAR_GROUP = ""
"""The group key used when a hyperparameter is one scalar for every parameter."""


class MomentumState(NamedTuple):
    """The optimiser state carried between steps: the velocity buffer per parameter."""

    velocity: Params


class Hyperparameters(NamedTuple):
    """Per-parameter learning rate η and momentum β (0-d tensors keyed by parameter name)."""

    lr: Params
    momentum: Params


UpdateRule = Callable[[Params, MomentumState, Params, Hyperparameters], tuple[Params, MomentumState]]


def init_state(params: Params) -> MomentumState:
    """Zero velocity, as ``torch.optim.SGD`` starts (v₀ = 0)."""
    if not isinstance(params, Mapping) or not all(isinstance(p, Tensor) for p in params.values()):
        raise invalid("params", type(params).__name__, "a dict of name -> tensor")
    return MomentumState({name: torch.zeros_like(p) for name, p in params.items()})


def _check_names(params: Params, state: MomentumState, grads: Params, hyper: Hyperparameters) -> None:
    """Every dict of a step keyed by the names of ``params`` (a key-view comparison per dict)."""
    for label, mapping in (("grads", grads), ("state.velocity", state.velocity), ("hyper.lr", hyper.lr),
                           ("hyper.momentum", hyper.momentum)):
        if mapping.keys() != params.keys():
            raise invalid(label, sorted(mapping), f"a dict keyed by the parameter names {sorted(params)}")


def heavy_ball(
    params: Params, state: MomentumState, grads: Params, hyper: Hyperparameters
) -> tuple[Params, MomentumState]:
    """One heavy-ball step: ``v ← β v + g``, ``θ ← θ − η v``.

    Example:
        >>> p = {"w": torch.tensor([1.0])}
        >>> h = Hyperparameters({"w": torch.tensor(0.1)}, {"w": torch.tensor(0.9)})
        >>> heavy_ball(p, init_state(p), {"w": torch.tensor([2.0])}, h)[0]["w"]
        tensor([0.8000])
    """
    _check_names(params, state, grads, hyper)
    velocity = {n: hyper.momentum[n] * state.velocity[n] + grads[n] for n in params}
    new_params = {n: params[n] - hyper.lr[n] * velocity[n] for n in params}
    return new_params, MomentumState(velocity)


def nesterov(
    params: Params, state: MomentumState, grads: Params, hyper: Hyperparameters
) -> tuple[Params, MomentumState]:
    """One Nesterov step: ``v ← β v + g``, ``θ ← θ − η (g + β v)``."""
    _check_names(params, state, grads, hyper)
    velocity = {n: hyper.momentum[n] * state.velocity[n] + grads[n] for n in params}
    new_params = {
        n: params[n] - hyper.lr[n] * (grads[n] + hyper.momentum[n] * velocity[n]) for n in params
    }
    return new_params, MomentumState(velocity)


def update_rule(nesterov_: bool) -> UpdateRule:
    """The update rule for ``nesterov=nesterov_`` (True or False)."""
    return nesterov if checks.flag("nesterov", nesterov_) else heavy_ball


CONSTANT, PER_STEP, KNOTTED = "constant", "steps", "knots"
"""How a group's hyperparameter varies over the run: one 0-d tensor, one value per step (a
tensor of length T), or K knots interpolated over the T steps (:mod:`metatune.schedule`)."""


class GroupedPath(NamedTuple):
    """A hyperparameter as one tensor per group, how each varies over the run, and the group
    of each parameter.

    ``values[SCALAR_GROUP]`` alone means one value (or path) shared by every parameter.
    ``kinds[g]`` is :data:`CONSTANT` (a 0-d tensor), :data:`PER_STEP` (length T) or
    :data:`KNOTTED` (K knots, interpolated in log when ``log`` — learning rates — and linearly
    otherwise: the hat weights of :func:`metatune.schedule.knot_weights`).
    """

    values: dict[str, Tensor]
    kinds: dict[str, str]
    groups: dict[str, str]
    log: bool
    steps: int

    @property
    def per_group(self) -> bool:
        """True when the user gave a dict (per-layer hyperparameters)."""
        return list(self.values) != [SCALAR_GROUP]

    @property
    def constant(self) -> bool:
        """True when every group holds one value for the whole run."""
        return all(kind == CONSTANT for kind in self.kinds.values())

    def at(self, t: int, values: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Each group's 0-d value at step t (from ``values`` if given: tensors under a transform)."""
        return self.every_step(values, t, t + 1)[0]

    def coefficients(self, group: str, t: int, value: Tensor) -> tuple[tuple[int, Tensor | float], ...]:
        """∂h_t/∂z for the group's tensor z at step t, as (index in z, coefficient) pairs:
        the nonzero entries only (one or two), given the group's value ``value`` = h_t."""
        kind = self.kinds[group]
        if kind == CONSTANT:
            return ((0, 1.0),)
        if kind == PER_STEP:
            return ((t, 1.0),)
        tensor = self.values[group]
        row = knot_weights(len(tensor), self.steps)[t]  # the hat weights w of step t
        pairs = [(int(k), float(row[k])) for k in torch.nonzero(row).flatten()]
        if self.log:  # η_t = exp(Σ w log z): ∂η_t/∂z_k = η_t w_k / z_k
            return tuple((k, value * w / tensor[k]) for k, w in pairs)
        return tuple(pairs)

    def every_step(self, values: Mapping[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> list[dict[str, Tensor]]:
        """Each group's 0-d value at steps ``start … stop − 1`` (default: all T), the stretch of
        the path computed at once (one interpolation per group, then ``unbind``, whose backward
        is one stack): what a run step by step uses, cheaper than :meth:`at` per step."""
        source = self.values if values is None else values
        stop = self.steps if stop is None else stop
        paths: dict[str, Tensor | tuple[Tensor, ...]] = {}
        for group, tensor in source.items():
            kind = self.kinds[group]
            if kind == KNOTTED:
                paths[group] = interpolate(tensor, self.steps, log=self.log, start=start, stop=stop).unbind(0)
            elif kind == PER_STEP:
                paths[group] = tensor[start:stop].unbind(0)
            else:
                paths[group] = tensor
        return [{g: p if isinstance(p, Tensor) else p[t] for g, p in paths.items()} for t in range(stop - start)]

    def per_param(self, t: int = 0, values: Mapping[str, Tensor] | None = None) -> Params:
        """Each parameter's 0-d value at step t."""
        at = self.at(t, values)
        return {name: at[group] for name, group in self.groups.items()}


def _matching_group(name: str, prefixes: list[str]) -> str | None:
    """The longest prefix that ``name`` starts with on a dot boundary (or exactly)."""
    matches = [p for p in prefixes if name == p or name.startswith(p if p.endswith(".") else p + ".")]
    return max(matches, key=len) if matches else None


def group_hyperparameter(
    value: HyperArg, params: Params, *, name: str, like: Tensor, steps: int = 1, log: bool = False
) -> GroupedPath:
    """Turn a user's hyperparameter into a :class:`GroupedPath` over ``steps`` steps.

    Each value (or each value of a prefix-keyed dict) is a scalar, a tensor of length
    ``steps`` (one per step) or :class:`~metatune.schedule.Knots`; ``log``: knots interpolate
    in log (learning rates). Scalars become tensors of ``like``'s dtype and device; tensors
    keep their autograd graph. Raises ``ValueError`` if a dict leaves a parameter uncovered
    or names a prefix that matches no parameter, or a path has the wrong length.
    """
    if not isinstance(value, Mapping):
        tensor, kind = _as_path(value, name=name, like=like, steps=steps)
        return GroupedPath({SCALAR_GROUP: tensor}, {SCALAR_GROUP: kind}, {n: SCALAR_GROUP for n in params}, log,
                           steps)
    if not value:
        raise invalid(name, dict(value), "a scalar or a non-empty dict of name prefix -> scalar")
    prefixes = [str(k) for k in value]
    groups = {n: _matching_group(n, prefixes) for n in params}
    uncovered = [n for n, g in groups.items() if g is None]
    if uncovered:
        raise invalid(name, dict(value), f"prefixes covering every parameter; uncovered: {uncovered}")
    unused = sorted(set(prefixes) - set(groups.values()))
    if unused:
        raise invalid(name, dict(value), f"prefixes of parameter names {list(params)}; unused: {unused}")
    paths = {k: _as_path(v, name=f"{name}[{k!r}]", like=like, steps=steps) for k, v in value.items()}
    return GroupedPath({k: t for k, (t, _) in paths.items()}, {k: kind for k, (_, kind) in paths.items()},
                       groups, log, steps)  # type: ignore[arg-type]


def _as_path(value: object, *, name: str, like: Tensor, steps: int) -> tuple[Tensor, str]:
    """A scalar, a per-step tensor of length ``steps`` or :class:`~metatune.schedule.Knots`, as
    (tensor, kind)."""
    if isinstance(value, Knots):
        if len(value) > steps:
            raise invalid(name, f"{len(value)} knots", f"at most steps={steps} knots")
        tensor = value.tensor(like)
        return (tensor[0], CONSTANT) if len(value) == 1 else (tensor, KNOTTED)
    if isinstance(value, Tensor) and value.dim() == 1 and value.numel() > 1:
        if value.numel() != steps:
            raise invalid(name, tuple(value.shape), f"a scalar, a tensor of length steps={steps} (one per step) "
                                                    "or metatune.schedule.Knots")
        return value.to(dtype=like.dtype, device=like.device), PER_STEP
    return _as_scalar_tensor(value, name=name, like=like), CONSTANT


def _as_scalar_tensor(value: object, *, name: str, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise invalid(name, tuple(value.shape), "a scalar (a number or a one-element tensor)")
        return value.reshape(()).to(dtype=like.dtype, device=like.device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, value, "a number, a one-element tensor, a tensor per step, Knots, or a dict of them")
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def check_lr(lr: GroupedPath, *, name: str = "lr") -> None:
    """Raise ``ValueError`` unless every learning rate (at every step or knot) is finite and > 0."""
    _check_each_group(lr, name, checks.LEARNING_RATE)


def check_momentum(momentum: GroupedPath, *, name: str = "momentum") -> None:
    """Raise ``ValueError`` unless every momentum β (at every step or knot) lies in [0, 1)."""
    _check_each_group(momentum, name, checks.MOMENTUM)


def _check_each_group(value: GroupedPath, name: str, interval: checks.Interval) -> None:
    for group, tensor in value.values.items():
        label = name if group == SCALAR_GROUP else f"{name}[{group!r}]"
        if tensor.dim() == 0:
            interval.check(label, float(tensor.detach()))
        else:
            interval.check_all(label, tensor.detach().cpu().double().numpy())
