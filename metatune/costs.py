"""What a meta-gradient costs, in gradient evaluations, and how that multiple is measured.

A tangent carried through one inner step (forward mode) and a backward pass through one
inner step (reverse mode) each cost some multiple of one gradient evaluation. The default
multiples (2 each) are the matmul/conv FLOP ratios measured on the digits and sequence
objectives; :func:`measure` counts them for any training loss with
``torch.utils.flop_counter`` (deterministic, unlike wall time), so tuners charge each
objective what its meta-gradients really cost.

    forward:   T (1 + k · tangent) + 1
    reverse:   T + (W − last segment) + W · backward_step + 1     (window W, checkpoint segments)
    HVP (jvp of the gradient): 1 + tangent

The + 1 is the validation gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from metatune import checks
from metatune._types import Batch, Params, TrainLoss
from metatune.unroll import check_params


@dataclass(frozen=True)
class CostModel:
    """Multiples of one gradient evaluation: a tangent through a step, a backward through a step."""

    tangent: float = 2.0
    backward_step: float = 2.0

    def __post_init__(self) -> None:
        checks.non_negative("tangent", self.tangent, note="gradient evaluations per tangent and step")
        checks.non_negative("backward_step", self.backward_step, note="gradient evaluations per step")

    def hypergrad(self, mode: str, steps: int, hyperparameters: int = 2, window: int | None = None,
                  checkpoint: int | None = None) -> float:
        """Gradient evaluations of one meta-gradient (module docstring)."""
        checks.choice("mode", mode, ("forward", "reverse", "truncated"))
        steps = checks.positive_int("steps", steps)
        checks.positive_int("hyperparameters", hyperparameters)
        checks.integer("window", window, low=1, high=steps, optional=True)
        checks.positive_int("checkpoint", checkpoint, optional=True)
        if mode == "forward":
            return steps * (1.0 + hyperparameters * self.tangent) + 1.0
        window = steps if window is None else window
        last = (window - 1) % (checkpoint or window) + 1
        return steps + (window - last) + window * self.backward_step + 1.0

    @property
    def hvp(self) -> float:
        """One Hessian-vector product by forward-over-reverse (it computes the gradient too)."""
        return 1.0 + self.tangent


DEFAULT = CostModel()


def _mv_flops(matrix_shape, vector_shape, *args, **kwargs) -> int:  # noqa: ANN001, ARG001
    return 2 * matrix_shape[0] * matrix_shape[1]


def _dot_flops(a_shape, b_shape, *args, **kwargs) -> int:  # noqa: ANN001, ARG001
    return 2 * a_shape[0]


_EXTRA_FORMULAS = {torch.ops.aten.mv: _mv_flops, torch.ops.aten.dot: _dot_flops}


def _flops(fn) -> int:  # noqa: ANN001
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


def measure(train_loss: TrainLoss, params: Params, batch: Batch = None) -> CostModel:
    """Count matmul/conv FLOPs of one gradient, of two tangents through it, and of a double
    backward, and return their ratios (:data:`DEFAULT` when the loss has no counted ops).

    Example:
        >>> loss = lambda p, b: (p["w"] @ torch.ones(3, 4)).pow(2).sum()
        >>> measure(loss, {"w": torch.ones(2, 3)})
        CostModel(tangent=1.5, backward_step=1.0)
    """
    checks.function("train_loss", train_loss, "a function (params, batch) -> scalar tensor")
    params = check_params(params)
    gradient = _flops(lambda: torch.func.grad(train_loss)(params, batch))
    if gradient == 0:
        return DEFAULT
    tangents = {n: torch.ones((2, *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
    grad_fn = torch.func.grad(train_loss)

    def push(tangent: Params) -> Params:
        return torch.func.jvp(lambda p: grad_fn(p, batch), (params,), (tangent,))[1]

    with_tangents = _flops(lambda: torch.func.vmap(push)(tangents))
    backward = _flops(lambda: _double_backward(train_loss, params, batch))
    return CostModel(tangent=max(with_tangents / gradient - 1.0, 0.0) / 2.0,
                     backward_step=max(backward / gradient - 1.0, 0.0))


def _double_backward(train_loss: TrainLoss, params: Params, batch: Batch) -> None:
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(train_loss(leaves, batch), tuple(leaves.values()), create_graph=True)
    torch.autograd.grad(grads, tuple(leaves.values()), grad_outputs=[torch.ones_like(g) for g in grads])
