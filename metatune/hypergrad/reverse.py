"""Reverse mode: backpropagate through the unroll, in checkpointed segments; truncated
mode differentiates only the last K steps."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from metatune import dynamics
from metatune._types import Params, ValLoss
from metatune.costs import CostModel
from metatune.hypergrad.layout import growth_rate, hyper_keys, hyper_vector, layout_of, per_param
from metatune.hypergrad.result import HypergradResult, build_result
from metatune.unroll import InnerProblem, autograd_gradient, make_step, run_steps


def _segments(steps: int, window: int, every: int) -> list[tuple[int, int]]:
    """Segments [a, b) of at most ``every`` steps covering the last ``window`` steps."""
    start = steps - window
    return [(a, min(a + every, steps)) for a in range(start, steps, every)]


def _leaves(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: t.detach().requires_grad_() for n, t in tensors.items()}


def reverse(
    problem: InnerProblem, val_loss: ValLoss, window: int, every: int, mode: str, costs: CostModel
) -> HypergradResult:
    """Reverse mode through the last ``window`` steps, in segments of ``every`` steps.

    A graph-free pass stores the state at each segment start; the segments are then
    rebuilt with a graph from last to first, each backpropagating the adjoint
    λ_b = ∂ℓ_val/∂s_b to λ_a and accumulating ∂ℓ_val/∂h (one segment: plain backprop).
    """
    keys = hyper_keys(problem)
    segments = _segments(problem.steps, window, every)
    stored, losses = _store_segment_starts(problem, [a for a, _ in segments])
    probe = problem.steps - window // 2
    norms: dict[int, list[Tensor]] = {probe: [], problem.steps: []}
    layout = layout_of(problem, keys)
    hyper_grads = torch.zeros_like(hyper_vector(problem, keys))
    step = make_step(autograd_gradient(problem.train_loss, create_graph=True), problem.rule)
    adjoint: tuple[Params, Params] | None = None
    value = torch.tensor(math.nan)
    for a, b in reversed(segments):
        start_params, start_velocity = _leaves(stored[a][0]), _leaves(stored[a][1])
        hyper = hyper_vector(problem, keys).requires_grad_()
        end_params, end_state, segment_losses = run_steps(
            step, start_params, dynamics.MomentumState(start_velocity),
            per_param(layout, hyper), problem.batches[a:b], _adjoint_probes(a, norms),
        )
        if adjoint is None:  # the last segment ends in the validation loss
            final = (end_params, end_state.velocity)
            terminal = val_loss(end_params)
            value = terminal.detach()
            losses = torch.cat([losses, segment_losses])
        else:
            terminal = _dot(adjoint[0], end_params) + _dot(adjoint[1], end_state.velocity)
        for probed in (norms[t] for t in norms if a < t <= b):
            probed.clear()  # the inner gradients of the forward pass fired the hooks too
        inputs = [*start_params.values(), *start_velocity.values(), hyper]
        grads = torch.autograd.grad(terminal, inputs, allow_unused=True, materialize_grads=True)
        n = len(start_params)
        adjoint = dict(zip(start_params, grads[:n])), dict(zip(start_velocity, grads[n : 2 * n]))
        hyper_grads = hyper_grads + grads[-1]
    growth = growth_rate(_norm(norms[problem.steps]), _norm(norms[probe]), problem.steps - probe)
    spent = costs.hypergrad(mode, problem.steps, len(keys), window, every)
    return build_result(problem, keys, value, hyper_grads, growth, spent, mode, window, losses, final)


def _store_segment_starts(problem: InnerProblem, starts: list[int]) -> tuple[dict[int, tuple[Params, Params]], Tensor]:
    """Run the steps before the last segment without a graph; keep the state at each start."""
    plain = make_step(autograd_gradient(problem.train_loss, create_graph=False), problem.rule)
    params, state = problem.params, dynamics.MomentumState(problem.velocity)
    stored: dict[int, tuple[Params, Params]] = {}
    losses = []
    for a, b in zip([0, *starts], starts):
        with torch.no_grad():
            params, state, segment_losses = run_steps(plain, params, state, problem.hyperparameters(), problem.batches[a:b])
        stored[b] = (params, state.velocity)
        losses.append(segment_losses)
    return stored, torch.cat(losses)


def _adjoint_probes(offset: int, norms: dict[int, list[Tensor]]) -> Callable[[int, Params, dynamics.MomentumState], None]:
    """An ``on_step`` that hooks θ at the steps in ``norms`` to record ‖∂ℓ_val/∂θₜ‖²."""

    def on_step(t: int, params: Params, state: dynamics.MomentumState) -> None:
        bucket = norms.get(offset + t + 1)
        if bucket is None:
            return
        for tensor in params.values():  # θ only: v's gradient would include the path through θ
            if tensor.requires_grad:
                tensor.register_hook(lambda g, bucket=bucket: bucket.append((g.detach().double() ** 2).sum()))

    return on_step


def _norm(squares: list[Tensor]) -> float:
    return math.sqrt(float(sum(squares))) if squares else 0.0


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)
