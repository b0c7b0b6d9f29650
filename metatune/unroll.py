"""Run T inner momentum-SGD steps functionally over a fixed batch sequence.

θₜ₊₁, vₜ₊₁ = rule(θₜ, vₜ, ∇ℓ(θₜ; bₜ), η, β) for t = 0 … T−1, the rule from
:mod:`metatune.dynamics`. The result equals ``torch.optim.SGD(lr=η, momentum=β,
nesterov=…)`` step for step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from metatune import checks, dynamics
from metatune._types import Batch, Batches, HyperArg, Params, TrainLoss
from metatune.errors import invalid

GradFn = Callable[[Params, Batch], tuple[Params, Tensor]]
"""``grad_fn(params, batch) -> (∇ℓ by name, ℓ)``."""

HyperAt = Callable[[int], dynamics.Hyperparameters]
"""Each parameter's (η, β) at step t."""

StepFn = Callable[
    [Params, dynamics.MomentumState, dynamics.Hyperparameters, Batch],
    tuple[Params, dynamics.MomentumState, Tensor],
]


class UnrollResult(NamedTuple):
    """Final parameters θ_T, final velocity v_T and the training loss ℓ(θₜ; bₜ) of every step."""

    params: Params
    velocity: Params
    losses: Tensor


@dataclass(frozen=True)
class InnerProblem:
    """A validated inner training run: what :func:`unroll` and the hypergradients share."""

    train_loss: TrainLoss
    params: Params
    velocity: Params
    lr: dynamics.GroupedPath
    momentum: dynamics.GroupedPath
    steps: int
    batches: list[Batch]
    nesterov: bool

    @property
    def rule(self) -> dynamics.UpdateRule:
        return dynamics.update_rule(self.nesterov)

    def hyperparameters(self, lr: Mapping[str, Tensor] | None = None, momentum: Mapping[str, Tensor] | None = None,
                        start: int = 0, stop: int | None = None) -> HyperAt:
        """Per-parameter (η, β) at each step t in ``start … stop − 1``, optionally from
        replacement group tensors (the same object at every step when both are constant)."""
        if self.lr.constant and self.momentum.constant:
            fixed = dynamics.Hyperparameters(self.lr.per_param(0, lr), self.momentum.per_param(0, momentum))
            return lambda t: fixed
        lrs, momenta = self.lr.every_step(lr, start, stop), self.momentum.every_step(momentum, start, stop)
        lr_of, momentum_of = self.lr.groups, self.momentum.groups
        return lambda t: dynamics.Hyperparameters({n: lrs[t - start][g] for n, g in lr_of.items()},
                                                  {n: momenta[t - start][g] for n, g in momentum_of.items()})


def prepare(
    train_loss: TrainLoss,
    params: Params,
    lr: HyperArg,
    momentum: HyperArg,
    steps: int,
    batches: Batches,
    nesterov: bool,
    velocity: Params | None = None,
) -> InnerProblem:
    """Check every argument where it enters and return the validated :class:`InnerProblem`.

    Raises:
        ValueError: naming the argument, its value and the valid range.
    """
    params = check_params(params)
    steps = check_steps(steps)
    batch_list = check_batches(batches, steps)
    like = next(iter(params.values()))
    lr_g = dynamics.group_hyperparameter(lr, params, name="lr", like=like, steps=steps, log=True)
    momentum_g = dynamics.group_hyperparameter(momentum, params, name="momentum", like=like, steps=steps)
    dynamics.check_lr(lr_g)
    dynamics.check_momentum(momentum_g)
    nesterov = checks.flag("nesterov", nesterov)
    start = dynamics.init_state(params).velocity if velocity is None else check_velocity(velocity, params)
    check_scalar_loss(train_loss(params, batch_list[0]), "train_loss(params, batch)")
    return InnerProblem(train_loss, params, start, lr_g, momentum_g, steps, batch_list, nesterov)


def check_params(params: Params, name: str = "params") -> Params:
    """A non-empty dict of finite floating-point tensors, detached from any graph."""
    if not isinstance(params, dict) or not params:
        raise invalid(name, type(params).__name__, "a non-empty dict of name -> tensor")
    for key, value in params.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise invalid(f"{name}[{key!r}]", type(value).__name__, "a floating-point tensor")
        if not bool(torch.isfinite(value).all()):
            raise invalid(f"{name}[{key!r}]", "a tensor with NaN or inf", "finite values")
    return {key: value.detach() for key, value in params.items()}


def check_velocity(velocity: Params, params: Params) -> Params:
    """A velocity for ``params``: the same names, each tensor of its parameter's shape."""
    velocity = check_params(velocity, "velocity")
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    given = {n: tuple(v.shape) for n, v in velocity.items()}
    if given != shapes:
        raise invalid("velocity", given, f"tensors shaped like params, {shapes}")
    return velocity


def check_steps(steps: int) -> int:
    """T, an integer >= 1."""
    return checks.positive_int("steps", steps)


def check_batches(batches: Batches, steps: int) -> list[Batch]:
    """``steps`` batches from a sequence of at least that many, or ``[None] * steps``."""
    if batches is None:
        return [None] * steps
    if not isinstance(batches, Sequence) and not hasattr(batches, "__getitem__"):
        raise invalid("batches", type(batches).__name__, "a sequence (list, tuple) of batches, or None")
    if len(batches) < steps:
        raise invalid("batches", f"{len(batches)} batches", f"at least steps={steps} batches")
    return [batches[t] for t in range(steps)]


def check_scalar_loss(loss: object, where: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise invalid(where, shape, "a scalar (0-d) tensor; reduce it with .mean() or .sum()")
    return loss


def functional_gradient(train_loss: TrainLoss) -> GradFn:
    """∇ℓ with ``torch.func.grad_and_value``: composes with jvp/vmap and with autograd."""
    return torch.func.grad_and_value(train_loss)


def autograd_gradient(train_loss: TrainLoss, *, create_graph: bool) -> GradFn:
    """∇ℓ with ``torch.autograd.grad``; ``create_graph`` keeps it differentiable (reverse mode)."""

    def grad_fn(params: Params, batch: Batch) -> tuple[Params, Tensor]:
        if not create_graph:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            loss = train_loss(params, batch)
            grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
        return dict(zip(params, grads)), loss

    return grad_fn


def make_step(grad_fn: GradFn, rule: dynamics.UpdateRule) -> StepFn:
    """One inner step ``(θ, state, hyper, batch) -> (θ', state', ℓ(θ; batch))``."""

    def step(params, state, hyper, batch):  # noqa: ANN001, ANN202
        grads, loss = grad_fn(params, batch)
        new_params, new_state = rule(params, state, grads, hyper)
        return new_params, new_state, loss

    return step


def run_steps(
    step: StepFn,
    params: Params,
    state: dynamics.MomentumState,
    hyper: HyperAt,
    batches: Sequence[Batch],
    on_step: Callable[[int, Params, dynamics.MomentumState], None] | None = None,
    start: int = 0,
) -> tuple[Params, dynamics.MomentumState, Tensor]:
    """Apply ``step`` once per batch at (η, β) = ``hyper(start + t)``; ``on_step(t, θₜ₊₁,
    stateₜ₊₁)`` sees each new state (t counted from ``start``).

    Returns the final θ and state and the detached per-step losses, copied into one
    tensor so that no step's graph outlives the step.
    """
    losses = LossRecord(len(batches), like=next(iter(params.values())))
    for t, batch in enumerate(batches):
        params, state, loss = step(params, state, hyper(start + t), batch)
        losses.record(t, loss)
        if on_step is not None:
            on_step(t, params, state)
    return params, state, losses.tensor


class LossRecord:
    """Per-step losses written into one preallocated tensor (no per-step objects kept)."""

    def __init__(self, steps: int, like: Tensor) -> None:
        self.tensor = torch.full((steps,), math.nan, dtype=like.dtype, device=like.device)

    def record(self, t: int, loss: Tensor) -> None:
        self.tensor[t] = loss.detach()


def unroll(
    train_loss: TrainLoss,
    params: Params,
    lr: HyperArg,
    momentum: HyperArg,
    steps: int,
    batches: Batches = None,
    nesterov: bool = False,
    *,
    velocity: Params | None = None,
) -> UnrollResult:
    """Train for ``steps`` momentum-SGD steps and return θ_T, v_T and the per-step losses.

    Args:
        train_loss: ``train_loss(params, batch) -> scalar``.
        params: initial θ₀ by name (not modified).
        lr: η > 0: a scalar, a tensor of length ``steps`` (η_t per step),
            :class:`~metatune.schedule.Knots` (η at K knots, interpolated in log η over the
            steps), or a dict of name prefix -> any of those (per-layer).
        momentum: β in [0, 1), same forms as ``lr`` (knots interpolated linearly in β).
        steps: T >= 1.
        batches: at least T batches, or None to pass ``batch=None``.
        nesterov: Nesterov momentum instead of heavy ball.
        velocity: initial velocity (default zeros, as ``torch.optim.SGD``), to resume a run.

    Returns:
        :class:`UnrollResult`; a run that diverges returns NaN/inf values, it does not raise.

    Example:
        >>> loss = lambda p, b: (p["x"] ** 2).sum()
        >>> run = unroll(loss, {"x": torch.tensor([1.0])}, lr=0.1, momentum=0.5, steps=3)
        >>> round(float(run.params["x"]), 4)
        0.302
    """
    problem = prepare(train_loss, params, lr, momentum, steps, batches, nesterov, velocity)
    step = make_step(autograd_gradient(problem.train_loss, create_graph=False), problem.rule)
    state = dynamics.MomentumState(problem.velocity)
    with torch.no_grad():
        final, state, losses = run_steps(step, problem.params, state, problem.hyperparameters(), problem.batches)
    return UnrollResult(final, state.velocity, losses)


def is_finite(*values: Tensor | float) -> bool:
    """True when every tensor or number is finite (NaN/inf mean the run diverged)."""
    for value in values:
        if isinstance(value, Tensor):
            if not bool(torch.isfinite(value).all()):
                return False
        elif not math.isfinite(value):
            return False
    return True
