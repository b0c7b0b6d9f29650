"""Forward mode: carry k tangents Sₜ = ∂sₜ/∂h through every step; memory flat in T.

For momentum SGD, sₜ₊₁ = rule(θₜ, vₜ, g(θₜ), h), so the tangents obey

    Sₜ₊₁ = ∂rule/∂(θ, v) · (Sθ, Sv) + ∂rule/∂g · H Sθ + ∂rule/∂h,    H = ∇²ℓ(θₜ; bₜ).

The only costly term is H Sθ, one Hessian-vector product per tangent. Since H is
symmetric, H s = (sᵀH)ᵀ is a vector-Jacobian product of the gradient: each step builds the
gradient once with a graph and backpropagates each of the k tangents through it
(reverse-over-reverse, :mod:`metatune.hessian`), 1 + k · ``backward_step`` gradients a
step. A vmapped jvp of the gradient (forward-over-reverse, what this mode did before) also
computes the gradient inside the jvp, where ``torch.func`` evaluates twice every product
with a factor that carries no tangent, and took 10.5 against 7.2 ms for k = 2 on a
64-512-128-10 MLP at batch 256, 3.0 against 1.4 ms on 64-128-10 (eager, one thread). The
rule's own part is elementwise, written out in :func:`advance`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

from metatune import dynamics
from metatune._types import Batch, Params, TrainLoss, ValLoss
from metatune.costs import CostModel
from metatune.hessian import gradient_and_hvps
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

State = tuple[Params, Params, Tensor]
"""(θ, v, h): parameters, velocity and the k hyperparameters as one vector."""
Tangents = tuple[Params, Params, Tensor]
"""(Sθ, Sv, Sh), each with a leading axis of k (Sh = I: tangent i moves hyperparameter i)."""
StepOut = tuple[Params, Params, Params, Params, Tensor]
"""θ', v', Sθ', Sv' and ℓ(θ; batch)."""


def advance(nesterov: bool, layout: Layout, state: State, tangents: Tangents, grads: Params,
            hvps: Params) -> tuple[Params, Params, Params, Params]:
    """The step of (θ, v) and of its k tangents given g and H Sθ (``dynamics``' rules).

    Heavy ball, v' = βv + g, θ' = θ − ηv':
        Sv' = β Sv + H Sθ + Sβ v,            Sθ' = Sθ − η Sv' − Sη v'
    Nesterov, θ' = θ − η(g + βv'):
        Sθ' = Sθ − η(H Sθ + β Sv' + Sβ v') − Sη (g + βv')
    where Sη, Sβ pick tangent i for a parameter whose η (β) is hyperparameter i (Sh = I), so
    those terms touch one row each. Written out, since a jvp of the rule vmapped over k costs
    as much again as the products here (``tests/test_hypergrad.py`` checks it against one).
    """
    params, velocity, hyper = state
    s_params, s_velocity, _ = tangents
    rule = dynamics.update_rule(nesterov)
    new_params, new_state = rule(params, dynamics.MomentumState(velocity), grads, per_param(layout, hyper))
    new_velocity = new_state.velocity
    s_params_out, s_velocity_out = {}, {}
    for name, i, j in layout:
        lr, momentum = hyper[i], hyper[j]
        s_v = momentum * s_velocity[name] + hvps[name]
        s_v[j] += velocity[name]
        if nesterov:
            s_p = s_params[name] - lr * (hvps[name] + momentum * s_v)
            s_p[j] -= lr * new_velocity[name]
            s_p[i] -= grads[name] + momentum * new_velocity[name]
        else:
            s_p = s_params[name] - lr * s_v
            s_p[i] -= new_velocity[name]
        s_params_out[name], s_velocity_out[name] = s_p, s_v
    return new_params, new_velocity, s_params_out, s_velocity_out


def tangent_step(train_loss: TrainLoss, nesterov: bool, layout: Layout, state: State,
                 tangents: Tangents, batch: Batch) -> StepOut:
    """One step of (θ, v) and of its k tangents (eager): autograd's double backward for H Sθ."""
    grads, hvps, loss = gradient_and_hvps(train_loss, state[0], tangents[0], batch)
    return (*advance(nesterov, layout, state, tangents, grads, hvps), loss)


def functional_tangent_step(train_loss: TrainLoss, nesterov: bool, layout: Layout, state: State,
                            tangents: Tangents, batch: Batch) -> StepOut:
    """:func:`tangent_step` in ``torch.func`` terms (a vjp of the gradient, vmapped over the
    k tangents), which ``torch.compile`` traces whole."""

    def gradient(p: Params) -> tuple[Params, Tensor]:
        return torch.func.grad_and_value(train_loss)(p, batch)

    grads, vjp, loss = torch.func.vjp(gradient, state[0], has_aux=True)
    (hvps,) = torch.func.vmap(vjp)(tangents[0])
    return (*advance(nesterov, layout, state, tangents, grads, hvps), loss)


@functools.cache
def compiled_tangent_step() -> Callable[..., StepOut]:
    """:func:`functional_tangent_step` through ``torch.compile`` (compiled once per loss function)."""
    return torch.compile(functional_tangent_step, dynamic=False)


def forward(problem: InnerProblem, val_loss: ValLoss, compile_: bool, costs: CostModel) -> HypergradResult:
    """Forward mode: carry the k tangents through every step; memory flat in T."""
    keys = hyper_keys(problem)
    hyper = hyper_vector(problem, keys)
    layout = layout_of(problem, keys)
    step = compiled_tangent_step() if compile_ else tangent_step
    params, velocity = problem.params, problem.velocity
    s_params = {n: torch.zeros((len(keys), *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
    s_velocity = {n: torch.zeros_like(s) for n, s in s_params.items()}
    s_hyper = torch.eye(len(keys), dtype=hyper.dtype, device=hyper.device)
    probe = problem.steps - problem.steps // 2
    norm_probe = torch.zeros((), dtype=torch.float64)
    losses = LossRecord(problem.steps, like=next(iter(params.values())))
    for t, batch in enumerate(problem.batches):
        params, velocity, s_params, s_velocity, loss = step(
            problem.train_loss, problem.nesterov, layout, (params, velocity, hyper), (s_params, s_velocity, s_hyper), batch
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
