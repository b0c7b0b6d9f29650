"""Train a population of K (η, β) settings at once, batched by ``torch.func.vmap``.

Member k runs ``torch.optim.SGD(lr=ηₖ, momentum=βₖ, nesterov=…)`` from the shared θ₀ over
the shared batches b₀ … b_{T−1}:

    gₖ = ∇ℓ(θₖ; bₜ),  (θₖ, vₖ) ← rule(θₖ, vₖ, gₖ, ηₖ, βₖ)      for t = 0 … T−1

with ``rule`` from :mod:`metatune.dynamics`. The K gradients of one step are one call of
``vmap(grad_and_value(train_loss))`` over a leading K axis of θ (the batch is shared, so
the K matrix products fuse into batched ones); the update rule then acts on the stacked
tensors with ηₖ, βₖ broadcast along that axis. A Python loop over the T steps keeps
memory at O(K·P) and lets ``chunk_size`` bound the activations of one step.

The arithmetic is that of K separate runs: the gain is the removal of per-run overhead
(Python, dispatch, kernel launches), large where one run is small. A member that
diverges turns NaN/inf in its own slot only; it is flagged, never raised.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metatune import checks, dynamics
from metatune._types import Batch, Batches, Params, TrainLoss, ValLoss
from metatune.errors import invalid
from metatune.unroll import check_batches, check_params, check_scalar_loss, check_steps

Settings = Tensor | Sequence[float]
"""K values of one hyperparameter: a 1-d tensor or a sequence of numbers."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

StepFn = Callable[..., tuple[Params, Params, Tensor]]


@dataclass(frozen=True)
class PopulationResult:
    """The outcome of every member of a population, indexed by member k = 0 … K−1.

    Attributes:
        values: (K,) ℓ_val(θ_T) of each member; NaN/inf kept as computed.
        train_losses: (K, T) ℓ(θₜ; bₜ) of each member before its update at step t.
        diverged: (K,) bool, True where the value, a training loss or θ_T is NaN/inf.
        lrs, momenta: (K,) the settings (η, β), in the dtype and on the device of params.
        gradient_evals: K·(T + 1): K·T training gradients plus K validation-loss
            evaluations, each counted as one unit (as :func:`metatune.hypergrad` counts).
        params: θ_T by name with a leading K axis, only with ``return_params=True``.
    """

    values: Tensor
    train_losses: Tensor = field(repr=False)
    diverged: Tensor
    lrs: Tensor
    momenta: Tensor
    gradient_evals: int
    params: Params | None = field(default=None, repr=False)

    @property
    def final_train_loss(self) -> Tensor:
        """(K,) the training loss of the last step, ℓ(θ_{T−1}; b_{T−1})."""
        return self.train_losses[:, -1]

    @property
    def best_index(self) -> int | None:
        """The member with the lowest validation loss among those that did not diverge."""
        if bool(self.diverged.all()):
            return None
        return int(torch.where(self.diverged, math.inf, self.values).argmin())


def train_population(
    train_loss: TrainLoss,
    val_loss: ValLoss,
    params: Params,
    lrs: Settings,
    momenta: Settings,
    steps: int,
    batches: Batches = None,
    nesterov: bool = False,
    *,
    chunk_size: int | None = None,
    compile: bool | str = False,
    return_params: bool = False,
) -> PopulationResult:
    """Train K momentum-SGD runs, member k with (``lrs[k]``, ``momenta[k]``), in one batched loop.

    Args:
        train_loss, val_loss, params, steps, batches, nesterov: as :func:`metatune.hypergrad`;
            every member starts from ``params`` and sees the same batches. Both losses run
            under ``torch.func.vmap``: no ``.item()`` or value-dependent Python branches.
        lrs: K learning rates, each finite and > 0.
        momenta: K momenta, each in [0, 1).
        chunk_size: members per vectorised call (``vmap``'s ``chunk_size``): bounds the
            memory of one step; None computes all K at once.
        compile: run each step through ``torch.compile``: True for its default mode or
            a mode name (``"reduce-overhead"`` adds CUDA graphs on a GPU). One-time
            compilation per loss function and K.
        return_params: also return θ_T of every member (K times the model's memory).

    Returns:
        :class:`PopulationResult`; diverging members are flagged, never raised.

    Raises:
        ValueError: naming the argument (or its index, ``lrs[3]``), its value and the valid range.

    Example:
        >>> loss = lambda p, b=None: (p["x"] ** 2).sum()
        >>> pop = train_population(loss, loss, {"x": torch.tensor([1.0])}, [0.1, 0.5, 100.0], [0.5, 0.0, 0.9], 20)
        >>> pop.diverged.tolist(), pop.best_index, pop.gradient_evals
        ([False, False, True], 1, 63)
    """
    params = check_params(params)
    steps = check_steps(steps)
    batch_list = check_batches(batches, steps)
    like = next(iter(params.values()))
    lr_vector, momentum_vector = check_settings(lrs, momenta, like)
    nesterov = checks.flag("nesterov", nesterov)
    chunk_size = checks.positive_int("chunk_size", chunk_size, optional=True,
                                     note="members per vectorised call")
    mode = _check_compile(compile)
    return_params = checks.flag("return_params", return_params)
    check_scalar_loss(train_loss(params, batch_list[0]), "train_loss(params, batch)")
    check_scalar_loss(val_loss(params), "val_loss(params)")
    advance = _population_step if mode is None else _compiled_step(mode)
    with torch.no_grad():
        final, losses = _train(advance, train_loss, params, lr_vector, momentum_vector, batch_list, nesterov, chunk_size)
        values = torch.func.vmap(val_loss, chunk_size=chunk_size)(final)
    k = len(lr_vector)
    return PopulationResult(
        values, losses, _diverged(values, losses, final), lr_vector, momentum_vector,
        k * (steps + 1), final if return_params else None,
    )


def check_settings(lrs: Settings, momenta: Settings, like: Tensor) -> tuple[Tensor, Tensor]:
    """Validate K learning rates and K momenta; return them as 1-d tensors like ``like``."""
    lr_vector = _as_vector(lrs, "lrs")
    momentum_vector = _as_vector(momenta, "momenta")
    if len(momentum_vector) != len(lr_vector):
        raise invalid("momenta", f"{len(momentum_vector)} values", f"as many values as lrs ({len(lr_vector)})")
    checks.LEARNING_RATE.check_all("lrs", lr_vector.cpu().numpy())
    checks.MOMENTUM.check_all("momenta", momentum_vector.cpu().numpy())
    return lr_vector.to(dtype=like.dtype, device=like.device), momentum_vector.to(dtype=like.dtype, device=like.device)


def _as_vector(values: Settings, name: str) -> Tensor:
    expected = "a non-empty 1-d tensor or sequence of numbers"
    if isinstance(values, (str, bytes, bool)):
        raise invalid(name, values, expected)
    try:
        vector = values.detach() if isinstance(values, Tensor) else torch.as_tensor(values)
        if vector.dtype == torch.bool or vector.is_complex():
            raise TypeError(vector.dtype)
        # Python numbers go straight to float64 (not through the float32 default dtype).
        vector = vector if isinstance(values, Tensor) else torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise invalid(name, type(values).__name__, expected) from None
    if vector.dim() != 1 or len(vector) == 0:
        raise invalid(name, f"a tensor of shape {tuple(vector.shape)}", expected)
    return vector.to(torch.float64)


def _check_compile(compile_: bool | str) -> str | None:
    """The torch.compile mode to use, or None for eager."""
    if compile_ is False:
        return None
    if compile_ is True:
        return "default"
    return checks.choice("compile", compile_, COMPILE_MODES, note="or True, False")


def _train(
    advance: StepFn,
    train_loss: TrainLoss,
    params: Params,
    lrs: Tensor,
    momenta: Tensor,
    batches: list[Batch],
    nesterov: bool,
    chunk_size: int | None,
) -> tuple[Params, Tensor]:
    """The T-step loop: θ and v carry a leading K axis; returns θ_T and the (K, T) losses."""
    k = len(lrs)
    stacked = {n: p.expand(k, *p.shape).clone() for n, p in params.items()}
    velocity = {n: torch.zeros_like(p) for n, p in stacked.items()}
    hyper = dynamics.Hyperparameters(_along_members(lrs, stacked), _along_members(momenta, stacked))
    rule = dynamics.update_rule(nesterov)
    losses = torch.empty((k, len(batches)), dtype=lrs.dtype, device=lrs.device)
    for t, batch in enumerate(batches):
        stacked, velocity, loss = advance(train_loss, rule, stacked, velocity, hyper, batch, chunk_size)
        losses[:, t] = loss
    return stacked, losses


def _along_members(values: Tensor, stacked: Params) -> Params:
    """``values`` (K,) as a view of shape (K, 1, …, 1) per parameter, to broadcast over it."""
    return {n: values.view(-1, *([1] * (p.dim() - 1))) for n, p in stacked.items()}


def _population_step(
    train_loss: TrainLoss,
    rule: dynamics.UpdateRule,
    params: Params,
    velocity: Params,
    hyper: dynamics.Hyperparameters,
    batch: Batch,
    chunk_size: int | None,
) -> tuple[Params, Params, Tensor]:
    """One step of every member: the K gradients by vmap, then ``rule`` on the stacked state.

    ``hyper`` holds (K, 1, …) views, so the rule's ``β v + g`` and ``θ − η v`` act per member.
    Returns θ', v' and the (K,) losses ℓ(θₖ; batch).
    """
    grad_fn = torch.func.vmap(torch.func.grad_and_value(train_loss), in_dims=(0, None), chunk_size=chunk_size)
    grads, loss = grad_fn(params, batch)
    new_params, state = rule(params, dynamics.MomentumState(velocity), grads, hyper)
    return new_params, state.velocity, loss


@functools.cache
def _compiled_step(mode: str) -> StepFn:
    """:func:`_population_step` through ``torch.compile`` (compiled once per loss function and K).

    Modes with CUDA graphs replay into the same output buffers at every step, so each
    step is marked as a new one and its outputs are copied out before the next replay.
    """
    compiled = torch.compile(_population_step, dynamic=False, mode=mode)
    if mode not in CUDA_GRAPH_MODES:
        return compiled

    def replay(*args: object) -> tuple[Params, Params, Tensor]:
        torch.compiler.cudagraph_mark_step_begin()
        params, velocity, loss = compiled(*args)
        return {n: p.clone() for n, p in params.items()}, {n: v.clone() for n, v in velocity.items()}, loss.clone()

    return replay


def _diverged(values: Tensor, losses: Tensor, params: Params) -> Tensor:
    finite = torch.isfinite(values) & torch.isfinite(losses).all(dim=1)
    for p in params.values():
        finite &= torch.isfinite(p.reshape(p.shape[0], -1)).all(dim=1)
    return ~finite
