"""The differentiated hyperparameters as one vector — each group's η and β: a constant, one
value per step, or K knots — and where each lies in it, and the growth-rate estimate both
modes share."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metatune.unroll import InnerProblem

HyperKey = tuple[str, str, int]
"""("lr" | "momentum", group prefix, position): one differentiated number — the group's
constant (position 0), its value at one step, or at one knot."""

Slices = dict[tuple[str, str], tuple[int, int]]
"""(kind, group) -> (offset, length) of the group's tensor in the hyperparameter vector."""


def hyper_keys(problem: InnerProblem) -> list[HyperKey]:
    """Every differentiated number, η's groups first, each group's tensor flattened."""
    return [(kind, group, k) for kind, path in (("lr", problem.lr), ("momentum", problem.momentum))
            for group, tensor in path.values.items() for k in range(max(tensor.numel(), 1))]


def hyper_vector(problem: InnerProblem, keys: list[HyperKey]) -> Tensor:
    """The k differentiated hyperparameters as one detached 1-d tensor, in ``keys`` order."""
    return torch.cat([tensor.detach().reshape(-1) for path in (problem.lr, problem.momentum)
                      for tensor in path.values.values()])


def slices_of(problem: InnerProblem) -> Slices:
    """Where each group's tensor lies in the vector of :func:`hyper_vector`."""
    out, offset = {}, 0
    for kind, path in (("lr", problem.lr), ("momentum", problem.momentum)):
        for group, tensor in path.values.items():
            out[(kind, group)] = (offset, max(tensor.numel(), 1))
            offset += max(tensor.numel(), 1)
    return out


def split(problem: InnerProblem, slices: Slices, hyper: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The group tensors (η's, β's) as views of the vector ``hyper``, shaped as given."""
    out: tuple[dict[str, Tensor], dict[str, Tensor]] = ({}, {})
    for side, (kind, path) in zip(out, (("lr", problem.lr), ("momentum", problem.momentum))):
        for group, tensor in path.values.items():
            offset, length = slices[(kind, group)]
            side[group] = hyper[offset:offset + length].reshape(tensor.shape)
    return out


def growth_rate(norm_a: float, norm_b: float, span: int) -> float:
    """(log‖X_b‖ − log‖X_a‖)/span; 0 when undefined (span < 1 or a zero norm)."""
    if span < 1 or not norm_a > 0 or not norm_b > 0 or not math.isfinite(norm_a):
        return 0.0 if math.isfinite(norm_b) else math.inf
    return (math.log(norm_b) - math.log(norm_a)) / span


def squared_norm(tensors: dict[str, Tensor]) -> Tensor:
    return sum((t.double() ** 2).sum() for t in tensors.values())


