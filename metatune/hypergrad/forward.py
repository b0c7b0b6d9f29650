"""Forward mode: carry k tangents Sₜ = ∂sₜ/∂h through every step; memory flat in T.

For momentum SGD, sₜ₊₁ = rule(θₜ, vₜ, g(θₜ), h), so the tangents obey

    Sₜ₊₁ = ∂rule/∂(θ, v) · (Sθ, Sv) + ∂rule/∂g · H Sθ + ∂rule/∂h,    H = ∇²ℓ(θₜ; bₜ).

with ∂rule/∂h picking the hyperparameters of step t: for a schedule, η_t and β_t depend on
one value per step or on the two knots either side of t (:mod:`metatune.schedule`), so
those terms stay sparse. The only costly term is H Sθ, one Hessian-vector product per tangent. Since H is
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
from metatune.hypergrad.layout import Slices, growth_rate, hyper_keys, hyper_vector, slices_of, split, squared_norm
from metatune.hypergrad.result import HypergradResult, build_result
from metatune.unroll import InnerProblem, LossRecord

State = tuple[Params, Params]
"""(θ, v): parameters and velocity."""
Tangents = tuple[Params, Params]
"""(Sθ, Sv), each with a leading axis of k: tangent i moves hyperparameter i."""
Rows = dict[str, tuple[tuple[int, "Tensor | float"], ...]]
"""Per parameter: the (i, ∂h_t/∂z_i) pairs of its η (or β) at step t over the k-vector z —
one pair for a constant (coefficient 1), one or two for a schedule."""
StepHyper = tuple[dynamics.Hyperparameters, Rows, Rows]
"""(η, β) of each parameter at step t, and the rows of η and of β."""
StepOut = tuple[Params, Params, Params, Params, Tensor]
"""θ', v', Sθ', Sv' and ℓ(θ; batch)."""


def _add(rows: tuple[tuple[int, Tensor | float], ...], target: Tensor, term: Tensor, sign: float) -> None:
    """target[i] += sign · c · term for each (i, c) of ``rows``."""
    for i, c in rows:
        target[i] += sign * term if isinstance(c, float) and c == 1.0 else sign * c * term


def advance(nesterov: bool, hyper: StepHyper, state: State, tangents: Tangents, grads: Params,
            hvps: Params) -> tuple[Params, Params, Params, Params]:
    """The step of (θ, v) and of its k tangents given g and H Sθ (``dynamics``' rules).

    Heavy ball, v' = βv + g, θ' = θ − ηv':
        Sv' = β Sv + H Sθ + Sβ v,            Sθ' = Sθ − η Sv' − Sη v'
    Nesterov, θ' = θ − η(g + βv'):
        Sθ' = Sθ − η(H Sθ + β Sv' + Sβ v') − Sη (g + βv')
    where Sη = ∂η_t/∂z and Sβ = ∂β_t/∂z are the rows of ``hyper`` (one or two nonzero
    entries: z_i itself, or the knots either side of step t), so those terms touch one or two
    tangents each. Written out, since a jvp of the rule vmapped over k costs as much again as
    the products here (``tests/test_hypergrad.py`` checks it against one).
    """
    params, velocity = state
    s_params, s_velocity = tangents
    values, lr_rows, momentum_rows = hyper
    rule = dynamics.update_rule(nesterov)
    new_params, new_state = rule(params, dynamics.MomentumState(velocity), grads, values)
    new_velocity = new_state.velocity
    s_params_out, s_velocity_out = {}, {}
    for name in params:
        lr, momentum = values.lr[name], values.momentum[name]
        s_v = momentum * s_velocity[name] + hvps[name]
        _add(momentum_rows[name], s_v, velocity[name], 1.0)
        if nesterov:
            s_p = s_params[name] - lr * (hvps[name] + momentum * s_v)
            _add(momentum_rows[name], s_p, lr * new_velocity[name], -1.0)
            _add(lr_rows[name], s_p, grads[name] + momentum * new_velocity[name], -1.0)
        else:
            s_p = s_params[name] - lr * s_v
            _add(lr_rows[name], s_p, new_velocity[name], -1.0)
        s_params_out[name], s_velocity_out[name] = s_p, s_v
    return new_params, new_velocity, s_params_out, s_velocity_out


def step_hyperparameters(problem: InnerProblem, slices: Slices, hyper: Tensor, t: int) -> StepHyper:
    """Each parameter's (η_t, β_t) and their rows ∂h_t/∂z in the k-vector ``hyper``."""
    lr_values, momentum_values = split(problem, slices, hyper)
    out: list[tuple[Params, Rows]] = []
    for kind, path, given in (("lr", problem.lr, lr_values), ("momentum", problem.momentum, momentum_values)):
        at = path.at(t, given)
        rows = {g: tuple((slices[(kind, g)][0] + i, c) for i, c in path.coefficients(g, t, at[g])) for g in at}
        out.append(({n: at[g] for n, g in path.groups.items()}, {n: rows[g] for n, g in path.groups.items()}))
    (lrs, lr_rows), (momenta, momentum_rows) = out
    return dynamics.Hyperparameters(lrs, momenta), lr_rows, momentum_rows


def tangent_step(train_loss: TrainLoss, nesterov: bool, hyper: StepHyper, state: State,
                 tangents: Tangents, batch: Batch) -> StepOut:
    """One step of (θ, v) and of its k tangents (eager): autograd's double backward for H Sθ."""
    grads, hvps, loss = gradient_and_hvps(train_loss, state[0], tangents[0], batch)
    return (*advance(nesterov, hyper, state, tangents, grads, hvps), loss)


def functional_tangent_step(train_loss: TrainLoss, nesterov: bool, hyper: StepHyper, state: State,
                            tangents: Tangents, batch: Batch) -> StepOut:
    """:func:`tangent_step` in ``torch.func`` terms (a vjp of the gradient, vmapped over the
    k tangents), which ``torch.compile`` traces whole."""

    def gradient(p: Params) -> tuple[Params, Tensor]:
        return torch.func.grad_and_value(train_loss)(p, batch)

    grads, vjp, loss = torch.func.vjp(gradient, state[0], has_aux=True)
    (hvps,) = torch.func.vmap(vjp)(tangents[0])
    return (*advance(nesterov, hyper, state, tangents, grads, hvps), loss)


@functools.cache
def compiled_tangent_step() -> Callable[..., StepOut]:
    """:func:`functional_tangent_step` through ``torch.compile`` (compiled once per loss function
    and per structure of the rows: a schedule's rows change with t, so compiling pays for
    constant hyperparameters)."""
    return torch.compile(functional_tangent_step, dynamic=False)


def forward(problem: InnerProblem, val_loss: ValLoss, compile_: bool, costs: CostModel) -> HypergradResult:
    """Forward mode: carry the k tangents through every step; memory flat in T."""
    keys = hyper_keys(problem)
    hyper = hyper_vector(problem, keys)
    slices = slices_of(problem)
    step = compiled_tangent_step() if compile_ else tangent_step
    constant = problem.lr.constant and problem.momentum.constant
    fixed = step_hyperparameters(problem, slices, hyper, 0) if constant else None
    params, velocity = problem.params, problem.velocity
    s_params = {n: torch.zeros((len(keys), *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
    s_velocity = {n: torch.zeros_like(s) for n, s in s_params.items()}
    probe = problem.steps - problem.steps // 2
    norm_probe = torch.zeros((), dtype=torch.float64)
    losses = LossRecord(problem.steps, like=next(iter(params.values())))
    for t, batch in enumerate(problem.batches):
        at = fixed or step_hyperparameters(problem, slices, hyper, t)
        params, velocity, s_params, s_velocity, loss = step(
            problem.train_loss, problem.nesterov, at, (params, velocity), (s_params, s_velocity), batch
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
