"""The differentiated hyperparameters as one vector and their map to the parameters, and
the growth-rate estimate both modes share."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metatune import dynamics
from metatune.unroll import InnerProblem

HyperKey = tuple[str, str]
"""("lr" | "momentum", group prefix): one differentiated hyperparameter scalar."""


def hyper_keys(problem: InnerProblem) -> list[HyperKey]:
    return [("lr", g) for g in problem.lr.values] + [("momentum", g) for g in problem.momentum.values]


def hyper_vector(problem: InnerProblem, keys: list[HyperKey]) -> Tensor:
    """The k differentiated hyperparameters as one detached 1-d tensor, in ``keys`` order."""
    source = {"lr": problem.lr.values, "momentum": problem.momentum.values}
    return torch.stack([source[kind][group].detach() for kind, group in keys])


Layout = tuple[tuple[str, int, int], ...]
"""(parameter name, index of its η, index of its β) in the hyperparameter vector."""


def layout_of(problem: InnerProblem, keys: list[HyperKey]) -> Layout:
    index = {key: i for i, key in enumerate(keys)}
    return tuple(
        (n, index[("lr", problem.lr.groups[n])], index[("momentum", problem.momentum.groups[n])])
        for n in problem.params
    )


def per_param(layout: Layout, hyper: Tensor) -> dynamics.Hyperparameters:
    return dynamics.Hyperparameters({n: hyper[i] for n, i, _ in layout}, {n: hyper[j] for n, _, j in layout})


def growth_rate(norm_a: float, norm_b: float, span: int) -> float:
    """(log‖X_b‖ − log‖X_a‖)/span; 0 when undefined (span < 1 or a zero norm)."""
    if span < 1 or not norm_a > 0 or not norm_b > 0 or not math.isfinite(norm_a):
        return 0.0 if math.isfinite(norm_b) else math.inf
    return (math.log(norm_b) - math.log(norm_a)) / span


def squared_norm(tensors: dict[str, Tensor]) -> Tensor:
    return sum((t.double() ** 2).sum() for t in tensors.values())


