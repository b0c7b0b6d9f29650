"""Exact meta-gradients ∂ℓ_val(θ_T)/∂(η, β) through an unrolled momentum-SGD run.

With h = (η, β) and state sₜ = (θₜ, vₜ), the sensitivity Sₜ = ∂sₜ/∂h obeys
Sₜ₊₁ = Jₜ Sₜ + Bₜ (DESIGN.md §1). Three modes compute ∂ℓ_val/∂h = ∇ℓ_val(θ_T)ᵀ S_T:

* ``forward``: propagate S with ``torch.func.jvp`` of each step, the k tangents batched
  by ``torch.func.vmap``; memory flat in T.
* ``reverse``: backpropagate through the unroll; ``checkpoint=K`` stores the state
  every K steps and recomputes each segment, trading time for memory.
* ``truncated``: reverse through the last ``truncate`` steps only (short-horizon bias);
  equals ``reverse`` when ``truncate == steps``.

Each result also reports the growth rate of the sensitivities, a finite-time Lyapunov
estimate γ = (log‖X_b‖ − log‖X_a‖)/(b − a) over the second half of the differentiated
window, X the θ-part of the tangents (forward) or of the adjoints (reverse). γ ≈ log ρ > 0 when the
meta-gradient explodes; γ ≈ 0 (forward) or < 0 (reverse) when it settles.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from metatune import dynamics
from metatune.costs import DEFAULT, CostModel
from metatune._types import Batch, Batches, HyperArg, Params, TrainLoss, ValLoss
from metatune.errors import invalid
from metatune.unroll import (
    InnerProblem,
    autograd_gradient,
    check_scalar_loss,
    is_finite,
    LossRecord,
    make_step,
    prepare,
    run_steps,
)

MODES = ("forward", "reverse", "truncated")

HyperKey = tuple[str, str]
"""("lr" | "momentum", group prefix): one differentiated hyperparameter scalar."""


@dataclass(frozen=True)
class HypergradResult:
    """A meta-gradient and what it is worth.

    Attributes:
        value: ℓ_val(θ_T).
        lr: ∂ℓ_val/∂η (a dict keyed by prefix for per-layer learning rates).
        momentum: ∂ℓ_val/∂β (likewise).
        growth_rate: per-step log growth γ of the sensitivities (module docstring).
        diverged: True when the run or the meta-gradient is NaN/inf.
        gradient_evals: cost in gradient-evaluation units.
        mode: the mode used; steps: T; window: steps differentiated through.
        train_losses: ℓ(θₜ; bₜ) for each inner step.
        params, velocity: the final θ_T and v_T (detached), to continue training from.
    """

    value: float
    lr: float | dict[str, float]
    momentum: float | dict[str, float]
    growth_rate: float
    diverged: bool
    gradient_evals: float
    mode: str
    steps: int
    window: int
    train_losses: Tensor = field(repr=False)
    params: Params = field(repr=False, default_factory=dict)
    velocity: Params = field(repr=False, default_factory=dict)

    @property
    def amplification(self) -> float:
        """exp(γ · window): how much the sensitivities grew over the differentiated window."""
        return math.exp(min(self.growth_rate * self.window, 700.0))


def hypergrad(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    params: Params,
    lr: HyperArg,
    momentum: HyperArg,
    steps: int,
    batches: Batches = None,
    nesterov: bool = False,
    mode: str = "forward",
    truncate: int | None = None,
    checkpoint: int | None = None,
    compile: bool = False,  # noqa: A002 - the name users know from torch.compile
    *,
    velocity: Params | None = None,
    costs: CostModel = DEFAULT,
) -> HypergradResult:
    """Differentiate ``val_loss(θ_T)`` with respect to η and β through T inner steps.

    Args:
        train_loss, params, lr, momentum, steps, batches, nesterov: as :func:`metatune.unroll`.
        val_loss: ``val_loss(params) -> scalar``, evaluated at θ_T.
        mode: "forward", "reverse" or "truncated".
        truncate: K in 1..steps, the window of "truncated" mode.
        checkpoint: for "reverse"/"truncated", keep the state every K steps and recompute.
        velocity: initial velocity (default zeros), to differentiate a stretch of a longer run.
        costs: the multiples used for ``gradient_evals`` (:func:`metatune.costs.measure`).
        compile: forward mode only: run each step through ``torch.compile`` (one-time
            compilation of tens of seconds, then several times faster on small models).

    Returns:
        :class:`HypergradResult`; a diverging run is flagged ``diverged``, never raised.

    Example:
        >>> loss = lambda p, b=None: (p["x"] ** 2).sum()
        >>> hg = hypergrad(loss, loss, {"x": torch.tensor([1.0])}, lr=0.1, momentum=0.5, steps=5)
        >>> hg.lr < 0  # a larger step would lower the loss further
        True
    """
    problem = prepare(train_loss, params, lr, momentum, steps, batches, nesterov, velocity)
    check_scalar_loss(val_loss(problem.params), "val_loss(params)")
    window = _window(mode, truncate, steps)
    if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1):
        raise invalid("checkpoint", checkpoint, "None or an integer >= 1 (steps between stored states)")
    if mode == "forward":
        if checkpoint is not None:
            raise invalid("checkpoint", checkpoint, "None in forward mode (its memory is already flat in T)")
        return _forward(problem, val_loss, compile, costs)
    if compile:
        raise invalid("compile", compile, "False unless mode='forward'")
    return _reverse(problem, val_loss, window, checkpoint or window, mode, costs)


def _window(mode: str, truncate: int | None, steps: int) -> int:
    if mode not in MODES:
        raise invalid("mode", mode, f"one of {MODES}")
    if mode != "truncated":
        if truncate is not None:
            raise invalid("truncate", truncate, "None unless mode='truncated'")
        return steps
    if isinstance(truncate, bool) or not isinstance(truncate, int) or not 1 <= truncate <= steps:
        raise invalid("truncate", truncate, f"an integer in [1, steps={steps}] for mode='truncated'")
    return truncate


def _hyper_keys(problem: InnerProblem) -> list[HyperKey]:
    return [("lr", g) for g in problem.lr.values] + [("momentum", g) for g in problem.momentum.values]


def _hyper_vector(problem: InnerProblem, keys: list[HyperKey]) -> Tensor:
    """The k differentiated hyperparameters as one detached 1-d tensor, in ``keys`` order."""
    source = {"lr": problem.lr.values, "momentum": problem.momentum.values}
    return torch.stack([source[kind][group].detach() for kind, group in keys])


Layout = tuple[tuple[str, int, int], ...]
"""(parameter name, index of its η, index of its β) in the hyperparameter vector."""


def _layout(problem: InnerProblem, keys: list[HyperKey]) -> Layout:
    index = {key: i for i, key in enumerate(keys)}
    return tuple(
        (n, index[("lr", problem.lr.groups[n])], index[("momentum", problem.momentum.groups[n])])
        for n in problem.params
    )


def _per_param(layout: Layout, hyper: Tensor) -> dynamics.Hyperparameters:
    return dynamics.Hyperparameters({n: hyper[i] for n, i, _ in layout}, {n: hyper[j] for n, _, j in layout})


def _growth_rate(norm_a: float, norm_b: float, span: int) -> float:
    """(log‖X_b‖ − log‖X_a‖)/span; 0 when undefined (span < 1 or a zero norm)."""
    if span < 1 or not norm_a > 0 or not norm_b > 0 or not math.isfinite(norm_a):
        return 0.0 if math.isfinite(norm_b) else math.inf
    return (math.log(norm_b) - math.log(norm_a)) / span


def _squared_norm(tensors: dict[str, Tensor]) -> Tensor:
    return sum((t.double() ** 2).sum() for t in tensors.values())


def _result(problem, keys, value, grads: Tensor, growth, cost, mode, window, losses, final) -> HypergradResult:  # noqa: ANN001
    numbers = grads.detach().tolist()
    by_kind: dict[str, dict[str, float]] = {"lr": {}, "momentum": {}}
    for (kind, group), number in zip(keys, numbers):
        by_kind[kind][group] = number
    lr = by_kind["lr"] if problem.lr.per_group else by_kind["lr"][dynamics.SCALAR_GROUP]
    mom = by_kind["momentum"] if problem.momentum.per_group else by_kind["momentum"][dynamics.SCALAR_GROUP]
    diverged = not is_finite(value, losses, *numbers)
    params, velocity = ({n: t.detach() for n, t in state.items()} for state in final)
    return HypergradResult(
        float(value), lr, mom, growth, diverged, cost, mode, problem.steps, window, losses, params, velocity
    )


def _tangent_step(
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
        new_p, new_state = rule(p, dynamics.MomentumState(v), grads, _per_param(layout, h))
        return new_p, new_state.velocity, loss

    def push(sp: Params, sv: Params, sh: Tensor) -> tuple:
        return torch.func.jvp(step, state, (sp, sv, sh))

    out_dims = ((None, None, None), (0, 0, 0))
    (params, velocity, loss), (s_params, s_velocity, _) = torch.func.vmap(push, out_dims=out_dims)(*tangents)
    return params, velocity, s_params, s_velocity, loss


@functools.cache
def _compiled_tangent_step() -> Callable[..., tuple[Params, Params, Params, Params, Tensor]]:
    """:func:`_tangent_step` through ``torch.compile`` (compiled once per loss function)."""
    return torch.compile(_tangent_step, dynamic=False)


def _forward(problem: InnerProblem, val_loss: ValLoss, compile_: bool, costs: CostModel) -> HypergradResult:
    """Forward mode: carry the k tangents through every step; memory flat in T."""
    keys = _hyper_keys(problem)
    hyper = _hyper_vector(problem, keys)
    layout = _layout(problem, keys)
    advance = _compiled_tangent_step() if compile_ else _tangent_step
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
            norm_probe = _squared_norm(s_params)
    val_grad, value = torch.func.grad_and_value(val_loss)(params)
    grads = sum(torch.einsum("k...,...->k", s_params[n], val_grad[n]) for n in params)
    growth = _growth_rate(math.sqrt(float(norm_probe)), math.sqrt(float(_squared_norm(s_params))), problem.steps - probe)
    spent = costs.hypergrad("forward", problem.steps, len(keys))
    return _result(problem, keys, value, grads, growth, spent, "forward", problem.steps, losses.tensor,
                   (params, velocity))


def _segments(steps: int, window: int, every: int) -> list[tuple[int, int]]:
    """Segments [a, b) of at most ``every`` steps covering the last ``window`` steps."""
    start = steps - window
    return [(a, min(a + every, steps)) for a in range(start, steps, every)]


def _leaves(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: t.detach().requires_grad_() for n, t in tensors.items()}


def _reverse(
    problem: InnerProblem, val_loss: ValLoss, window: int, every: int, mode: str, costs: CostModel
) -> HypergradResult:
    """Reverse mode through the last ``window`` steps, in segments of ``every`` steps.

    A graph-free pass stores the state at each segment start; the segments are then
    rebuilt with a graph from last to first, each backpropagating the adjoint
    λ_b = ∂ℓ_val/∂s_b to λ_a and accumulating ∂ℓ_val/∂h (one segment: plain backprop).
    """
    keys = _hyper_keys(problem)
    segments = _segments(problem.steps, window, every)
    stored, losses = _store_segment_starts(problem, [a for a, _ in segments])
    probe = problem.steps - window // 2
    norms: dict[int, list[Tensor]] = {probe: [], problem.steps: []}
    layout = _layout(problem, keys)
    hyper_grads = torch.zeros_like(_hyper_vector(problem, keys))
    step = make_step(autograd_gradient(problem.train_loss, create_graph=True), problem.rule)
    adjoint: tuple[Params, Params] | None = None
    value = torch.tensor(math.nan)
    for a, b in reversed(segments):
        start_params, start_velocity = _leaves(stored[a][0]), _leaves(stored[a][1])
        hyper = _hyper_vector(problem, keys).requires_grad_()
        end_params, end_state, segment_losses = run_steps(
            step, start_params, dynamics.MomentumState(start_velocity),
            _per_param(layout, hyper), problem.batches[a:b], _adjoint_probes(a, norms),
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
    growth = _growth_rate(_norm(norms[problem.steps]), _norm(norms[probe]), problem.steps - probe)
    spent = costs.hypergrad(mode, problem.steps, len(keys), window, every)
    return _result(problem, keys, value, hyper_grads, growth, spent, mode, window, losses, final)


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
