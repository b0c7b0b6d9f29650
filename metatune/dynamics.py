"""Momentum-SGD update rules as pure functions, in PyTorch's ``torch.optim.SGD`` convention.

Heavy ball:  v ← β v + g(θ),  θ ← θ − η v                 (v₀ = 0)
Nesterov:    v ← β v + g(θ),  θ ← θ − η (g(θ) + β v)

Hyperparameters are tensors so that gradients reach them. A user gives each as one
scalar or as scalars keyed by parameter-name prefix (per-layer hyperparameters);
:func:`group_hyperparameter` turns either form into :class:`GroupedScalar`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from metatune import checks
from metatune._types import HyperArg, Params, Scalar
from metatune.errors import invalid

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


class GroupedScalar(NamedTuple):
    """A hyperparameter as one 0-d tensor per group, and the group of each parameter.

    ``values[SCALAR_GROUP]`` alone means one scalar shared by every parameter.
    """

    values: dict[str, Tensor]
    groups: dict[str, str]

    @property
    def per_group(self) -> bool:
        """True when the user gave a dict (per-layer hyperparameters)."""
        return list(self.values) != [SCALAR_GROUP]

    def per_param(self, values: Mapping[str, Tensor] | None = None) -> Params:
        """Each parameter's tensor (from ``values`` if given, e.g. tensors under a transform)."""
        source = self.values if values is None else values
        return {name: source[group] for name, group in self.groups.items()}


def _matching_group(name: str, prefixes: list[str]) -> str | None:
    """The longest prefix that ``name`` starts with on a dot boundary (or exactly)."""
    matches = [p for p in prefixes if name == p or name.startswith(p if p.endswith(".") else p + ".")]
    return max(matches, key=len) if matches else None


def group_hyperparameter(
    value: HyperArg, params: Params, *, name: str, like: Tensor
) -> GroupedScalar:
    """Turn a user's scalar or prefix-keyed dict into a :class:`GroupedScalar`.

    Scalars become 0-d tensors of ``like``'s dtype and device; tensors keep their
    autograd graph. Raises ``ValueError`` if a dict leaves a parameter uncovered or
    names a prefix that matches no parameter.
    """
    if not isinstance(value, Mapping):
        tensor = _as_scalar_tensor(value, name=name, like=like)
        return GroupedScalar({SCALAR_GROUP: tensor}, {n: SCALAR_GROUP for n in params})
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
    values = {k: _as_scalar_tensor(v, name=f"{name}[{k!r}]", like=like) for k, v in value.items()}
    return GroupedScalar(values, groups)  # type: ignore[arg-type]


def _as_scalar_tensor(value: Scalar, *, name: str, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise invalid(name, tuple(value.shape), "a scalar (a number or a one-element tensor)")
        return value.reshape(()).to(dtype=like.dtype, device=like.device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, value, "a number, a one-element tensor or a dict of them")
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def check_lr(lr: GroupedScalar, *, name: str = "lr") -> None:
    """Raise ``ValueError`` unless every learning rate is finite and > 0."""
    _check_each_group(lr, name, checks.learning_rate)


def check_momentum(momentum: GroupedScalar, *, name: str = "momentum") -> None:
    """Raise ``ValueError`` unless every momentum β lies in [0, 1)."""
    _check_each_group(momentum, name, checks.momentum)


def _check_each_group(value: GroupedScalar, name: str, check: Callable[[str, float], float]) -> None:
    for group, tensor in value.values.items():
        check(name if group == SCALAR_GROUP else f"{name}[{group!r}]", float(tensor.detach()))
