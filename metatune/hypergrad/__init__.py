"""Exact meta-gradients ∂ℓ_val(θ_T)/∂(η, β) through an unrolled momentum-SGD run.

With h = (η, β) and state sₜ = (θₜ, vₜ), the sensitivity Sₜ = ∂sₜ/∂h obeys
Sₜ₊₁ = Jₜ Sₜ + Bₜ, Jₜ the Jacobian of step t with respect to sₜ and Bₜ its
derivative with respect to h. Three modes compute ∂ℓ_val/∂h = ∇ℓ_val(θ_T)ᵀ S_T:

* ``forward``: propagate the k tangents S through each step, H Sθ by one backward pass
  through the step's gradient per tangent (:mod:`metatune.hypergrad.forward`); memory
  flat in T.
* ``reverse``: backpropagate through the unroll; ``checkpoint=K`` stores the state
  every K steps and recomputes each segment, trading time for memory.
* ``truncated``: reverse through the last ``truncate`` steps only (short-horizon bias);
  equals ``reverse`` when ``truncate == steps``.
* ``auto``: reverse when its stored graph fits ``memory_budget``, checkpointed reverse when
  only that fits, else forward (:mod:`metatune.hypergrad.auto`).

Each result also reports the growth rate of the sensitivities, a finite-time Lyapunov
estimate γ = (log‖X_b‖ − log‖X_a‖)/(b − a) over the second half of the differentiated
window, X the θ-part of the tangents (forward) or of the adjoints (reverse). γ ≈ log ρ > 0 when the
meta-gradient explodes; γ ≈ 0 (forward) or < 0 (reverse) when it settles.
"""

from __future__ import annotations

from metatune import checks
from metatune._types import Batches, HyperArg, Params, TrainLoss, ValLoss
from metatune.costs import DEFAULT, CostModel
from metatune.errors import invalid
from metatune.hypergrad.auto import DEFAULT_MEMORY_BUDGET, Plan, choose, resolve, stored_bytes_per_step
from metatune.hypergrad.forward import forward
from metatune.hypergrad.result import HypergradResult
from metatune.hypergrad.reverse import reverse
from metatune.unroll import check_scalar_loss, prepare

MODES = ("forward", "reverse", "truncated", "auto")


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
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
) -> HypergradResult:
    """Differentiate ``val_loss(θ_T)`` with respect to η and β through T inner steps.

    Args:
        train_loss, params, lr, momentum, steps, batches, nesterov: as :func:`metatune.unroll`.
        val_loss: ``val_loss(params) -> scalar``, evaluated at θ_T.
        mode: "forward", "reverse", "truncated" or "auto" (reverse, checkpointed when its
            graph exceeds ``memory_budget`` bytes, forward when even that does not fit).
        truncate: K in 1..steps, the window of "truncated" mode.
        checkpoint: for "reverse"/"truncated", keep the state every K steps and recompute.
        velocity: initial velocity (default zeros), to differentiate a stretch of a longer run.
        costs: the multiples used for ``gradient_evals`` (:func:`metatune.costs.measure`).
        compile: run each step through ``torch.compile``, in every mode: a one-time
            compilation (tens of seconds on a CPU; ``metatune bench hypergrad --compile``
            reports it), then faster steps where dispatch, not arithmetic, bounds them.

    Returns:
        :class:`HypergradResult`; a diverging run is flagged ``diverged``, never raised.

    Example:
        >>> import torch
        >>> loss = lambda p, b=None: (p["x"] ** 2).sum()
        >>> hg = hypergrad(loss, loss, {"x": torch.tensor([1.0])}, lr=0.1, momentum=0.5, steps=5)
        >>> hg.lr < 0  # a larger step would lower the loss further
        True
    """
    problem = prepare(train_loss, params, lr, momentum, steps, batches, nesterov, velocity)
    check_scalar_loss(val_loss(problem.params), "val_loss(params)")
    if mode == "auto":
        checks.positive("memory_budget", memory_budget, note="bytes")
        if checkpoint is not None:
            raise invalid("checkpoint", checkpoint, "None with mode='auto' (it chooses the checkpointing)")
        plan = resolve(mode, train_loss, problem.params, steps, problem.batches[0], memory_budget)
        mode, checkpoint = plan.mode, plan.checkpoint
    window = _window(mode, truncate, steps)
    checkpoint = checks.positive_int("checkpoint", checkpoint, optional=True,
                                     note="steps between stored states")
    compile = checks.flag("compile", compile)  # noqa: A001
    checks.instance("costs", costs, CostModel, "a CostModel (metatune.costs.measure gives one)")
    if mode == "forward":
        if checkpoint is not None:
            raise invalid("checkpoint", checkpoint, "None in forward mode (its memory is already flat in T)")
        return forward(problem, val_loss, compile, costs)
    return reverse(problem, val_loss, window, checkpoint or window, mode, costs, compile)


def _window(mode: str, truncate: int | None, steps: int) -> int:
    checks.choice("mode", mode, MODES)
    if mode != "truncated":
        if truncate is not None:
            raise invalid("truncate", truncate, "None unless mode='truncated'")
        return steps
    return checks.integer("truncate", truncate, low=1, high=steps,
                          note=f"steps={steps}, for mode='truncated'")



__all__ = ["DEFAULT_MEMORY_BUDGET", "MODES", "HypergradResult", "Plan", "choose", "hypergrad", "resolve",
           "stored_bytes_per_step"]
