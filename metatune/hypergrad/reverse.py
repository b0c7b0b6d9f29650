"""Reverse mode: backpropagate through the unroll, in checkpointed segments; truncated
mode differentiates only the last K steps."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import torch
import torch._functorch.config as functorch_config
from torch import Tensor

from metatune import dynamics
from metatune._types import Batch, Params, TrainLoss, ValLoss
from metatune.costs import CostModel
from metatune.hypergrad.layout import growth_rate, hyper_keys, hyper_vector, slices_of, split
from metatune.hypergrad.result import HypergradResult, build_result
from metatune.unroll import InnerProblem, StepFn, autograd_gradient, make_step, run_steps


def _segments(steps: int, window: int, every: int) -> list[tuple[int, int]]:
    """Segments [a, b) of at most ``every`` steps covering the last ``window`` steps."""
    start = steps - window
    return [(a, min(a + every, steps)) for a in range(start, steps, every)]


def _leaves(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: t.detach().requires_grad_() for n, t in tensors.items()}


def differentiable_step(train_loss: TrainLoss, nesterov: bool, params: Params, state: dynamics.MomentumState,
                        hyper: dynamics.Hyperparameters, batch: Batch) -> tuple[Params, dynamics.MomentumState, Tensor]:
    """One inner step whose gradient comes from ``torch.func.grad``, so that ``torch.compile``
    traces it whole; autograd differentiates the compiled step (through its gradient) as it
    would the eager one."""
    grads, loss = torch.func.grad_and_value(train_loss)(params, batch)
    new_params, new_state = dynamics.update_rule(nesterov)(params, state, grads, hyper)
    return new_params, new_state, loss


ACTIVATION_MEMORY_BUDGET = 0.5
"""The fraction of its saved tensors a compiled step may keep for the backward pass (the
partitioner recomputes the rest). Kept over 200 steps (``saved_tensors_hooks``), eager
autograd against compiled, on the 64-128-10 / 64-512-128-10 digits MLPs at batch 256:
77 / 423 MB eager; 101 / 547 MB at 1.0 (the default); 74 / 293 MB at 0.5, as fast as 1.0;
16 / 155 MB at 0.0, but 10–17 % slower on the wider one. At 0.5 a 64-64-10 MLP at batch 64
still keeps 16 % more than eager (2.15 against 1.86 MB over 20 steps)."""


@functools.cache
def compiled_differentiable_step() -> Callable[..., tuple[Params, dynamics.MomentumState, Tensor]]:
    """:func:`differentiable_step` through ``torch.compile`` (compiled once per loss function)."""
    return torch.compile(differentiable_step, dynamic=False)


def reverse(
    problem: InnerProblem, val_loss: ValLoss, window: int, every: int, mode: str, costs: CostModel,
    compile_: bool = False,
) -> HypergradResult:
    """Reverse mode through the last ``window`` steps, in segments of ``every`` steps.

    A graph-free pass stores the state at each segment start; the segments are then
    rebuilt with a graph (each step compiled if ``compile_``) from last to first, each
    backpropagating the adjoint λ_b = ∂ℓ_val/∂s_b to λ_a and accumulating ∂ℓ_val/∂h
    (one segment: plain backprop).
    The same backward pass also returns ∂ℓ_val/∂θₜ at the two probed steps of the growth
    rate (the middle of the window and T): θₜ there is one more input of ``autograd.grad``.
    """
    keys = hyper_keys(problem)
    segments = _segments(problem.steps, window, every)
    stored, losses = _store_segment_starts(problem, [a for a, _ in segments])
    probes = (problem.steps - window // 2, problem.steps)
    norms: dict[int, float] = {}
    slices = slices_of(problem)
    hyper_grads = torch.zeros_like(hyper_vector(problem, keys))
    step = _graph_step(problem, compile_)
    adjoint: tuple[Params, Params] | None = None
    value = torch.tensor(math.nan)
    for a, b in reversed(segments):
        start_params, start_velocity = _leaves(stored[a][0]), _leaves(stored[a][1])
        hyper = hyper_vector(problem, keys).requires_grad_()
        probed: dict[int, Params] = {}
        end_params, end_state, segment_losses = run_steps(
            step, start_params, dynamics.MomentumState(start_velocity),
            problem.hyperparameters(*split(problem, slices, hyper), start=a, stop=b), problem.batches[a:b],
            _keep_params_at(a, probes, probed), start=a,
        )
        if adjoint is None:  # the last segment ends in the validation loss
            final = (end_params, end_state.velocity)
            terminal = val_loss(end_params)
            value = terminal.detach()
            losses = torch.cat([losses, segment_losses])
        else:
            terminal = _dot(adjoint[0], end_params) + _dot(adjoint[1], end_state.velocity)
        inputs = [*start_params.values(), *start_velocity.values(), hyper]
        grads = torch.autograd.grad(terminal, inputs + _flat(probed), allow_unused=True,
                                    materialize_grads=True)
        n = len(start_params)
        adjoint = dict(zip(start_params, grads[:n])), dict(zip(start_velocity, grads[n : 2 * n]))
        hyper_grads = hyper_grads + grads[len(inputs) - 1]
        norms.update(_probe_norms(probed, grads[len(inputs):]))
    # the adjoints grow backwards in time: from λ_T to λ at the middle of the window
    growth = growth_rate(norms[probes[1]], norms[probes[0]], probes[1] - probes[0])
    spent = costs.hypergrad(mode, problem.steps, len(keys), window, every)
    return build_result(problem, keys, value, hyper_grads, growth, spent, mode, window, losses, final)


def _graph_step(problem: InnerProblem, compile_: bool) -> StepFn:
    """The step that builds the graph reverse mode backpropagates through: autograd's
    gradient with ``create_graph``, or :func:`differentiable_step` compiled."""
    if not compile_:
        return make_step(autograd_gradient(problem.train_loss, create_graph=True), problem.rule)
    compiled = compiled_differentiable_step()

    def step(params, state, hyper, batch):  # noqa: ANN001, ANN202
        with warnings.catch_warnings(), functorch_config.patch(activation_memory_budget=ACTIVATION_MEMORY_BUDGET):
            # dynamo reads .grad of the non-leaf inputs as it guards them
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
            return compiled(problem.train_loss, problem.nesterov, params, state, hyper, batch)

    return step


def _store_segment_starts(problem: InnerProblem, starts: list[int]) -> tuple[dict[int, tuple[Params, Params]], Tensor]:
    """Run the steps before the last segment without a graph; keep the state at each start."""
    plain = make_step(autograd_gradient(problem.train_loss, create_graph=False), problem.rule)
    params, state = problem.params, dynamics.MomentumState(problem.velocity)
    stored: dict[int, tuple[Params, Params]] = {}
    losses = []
    for a, b in zip([0, *starts], starts):
        with torch.no_grad():
            params, state, segment_losses = run_steps(plain, params, state, problem.hyperparameters(start=a, stop=b),
                                                      problem.batches[a:b], start=a)
        stored[b] = (params, state.velocity)
        losses.append(segment_losses)
    return stored, torch.cat(losses)


def _keep_params_at(offset: int, steps: tuple[int, ...], kept: dict[int, Params]
                    ) -> Callable[[int, Params, dynamics.MomentumState], None]:
    """An ``on_step`` that keeps θₜ (t counted from the run's start) at each of ``steps``."""

    def on_step(t: int, params: Params, state: dynamics.MomentumState) -> None:
        if offset + t + 1 in steps:
            kept[offset + t + 1] = params

    return on_step


def _flat(probed: dict[int, Params]) -> list[Tensor]:
    return [tensor for params in probed.values() for tensor in params.values()]


def _probe_norms(probed: dict[int, Params], grads: tuple[Tensor, ...]) -> dict[int, float]:
    """‖∂ℓ_val/∂θₜ‖ at each probed t from the gradients of its θₜ (in :func:`_flat` order).

    θ only: v's adjoint would include the path through θ."""
    norms, position = {}, 0
    for t, params in probed.items():
        squares = [(g.detach().double() ** 2).sum() for g in grads[position : position + len(params)]]
        norms[t] = math.sqrt(float(sum(squares)))
        position += len(params)
    return norms


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[n] * b[n]).sum() for n in a)
