"""Forward mode: carry k tangents Sₜ = ∂sₜ/∂h through every step; memory flat in T."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from metatune import dynamics
from metatune._types import Batch, Params, TrainLoss, ValLoss
from metatune.costs import CostModel
from metatune.hypergrad.layout import (
    Layout,
    growth_rate,
    hyper_keys,
    hyper_vector,
    layout_of,
    per_param,
    squared_norm,
)
from metatune.hypergrad.result import HypergradResult, build_result
from metatune.unroll import InnerProblem, LossRecord


def tangent_step(
    train_loss: TrainLoss,
    rule: dynamics.UpdateRule,
    layout: Layout,
    state: tuple[Params, Params, Tensor],
    tangents: tuple[Params, Params, Tensor],
    batch: Batch,
) -> tuple[Params, Params, Params, Params, Tensor]:
    """One step of (θ, v) and of its k tangents: Sₜ₊₁ = Jₜ Sₜ + Bₜ, by a jvp vmapped over k.

    ``state`` is (θ, v, h), ``tangents`` (Sθ, Sv, Sh) with a leading axis of k
    (Sh = I: tangent i moves hyperparameter i). Returns θ', v', Sθ', Sv', ℓ(θ; batch).
    """
    grad_fn = torch.func.grad_and_value(train_loss)

    def step(p: Params, v: Params, h: Tensor) -> tuple[Params, Params, Tensor]:
        grads, loss = grad_fn(p, batch)
        new_p, new_state = rule(p, dynamics.MomentumState(v), grads, per_param(layout, h))
        return new_p, new_state.velocity, loss

    def push(sp: Params, sv: Params, sh: Tensor) -> tuple:
        return torch.func.jvp(step, state, (sp, sv, sh))

    out_dims = ((None, None, None), (0, 0, 0))
    (params, velocity, loss), (s_params, s_velocity, _) = torch.func.vmap(push, out_dims=out_dims)(*tangents)
    return params, velocity, s_params, s_velocity, loss


@functools.cache
def compiled_tangent_step() -> Callable[..., tuple[Params, Params, Params, Params, Tensor]]:
    """:func:`tangent_step` through ``torch.compile`` (compiled once per loss function)."""
    return torch.compile(tangent_step, dynamic=False)


def forward(problem: InnerProblem, val_loss: ValLoss, compile_: bool, costs: CostModel) -> HypergradResult:
    """Forward mode: carry the k tangents through every step; memory flat in T."""
    keys = hyper_keys(problem)
    hyper = hyper_vector(problem, keys)
    layout = layout_of(problem, keys)
    advance = compiled_tangent_step() if compile_ else tangent_step
    params, velocity = problem.params, problem.velocity
    s_params = {n: torch.zeros((len(keys), *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
    s_velocity = {n: torch.zeros_like(s) for n, s in s_params.items()}
    s_hyper = torch.eye(len(keys), dtype=hyper.dtype, device=hyper.device)
    probe = problem.steps - problem.steps // 2
    norm_probe = torch.zeros((), dtype=torch.float64)
    losses = LossRecord(problem.steps, like=next(iter(params.values())))
    for t, batch in enumerate(problem.batches):
        params, velocity, s_params, s_velocity, loss = advance(
            problem.train_loss, problem.rule, layout, (params, velocity, hyper), (s_params, s_velocity, s_hyper), batch
        )
        losses.record(t, loss)
        if t + 1 == probe:
            norm_probe = squared_norm(s_params)
    val_grad, value = torch.func.grad_and_value(val_loss)(params)
    grads = sum(torch.einsum("k...,...->k", s_params[n], val_grad[n]) for n in params)
    growth = growth_rate(math.sqrt(float(norm_probe)), math.sqrt(float(squared_norm(s_params))), problem.steps - probe)
    spent = costs.hypergrad("forward", problem.steps, len(keys))
    return build_result(problem, keys, value, grads, growth, spent, "forward", problem.steps, losses.tensor,
                   (params, velocity))


