"""What a meta-gradient costs, in gradient evaluations, and how that is measured.

Everything metatune differentiates goes through a gradient: a meta-gradient through the
gradients of the inner steps, a Hessian-vector product through one gradient
(:mod:`metatune.hessian`). Its cost is one multiple of a gradient evaluation, counted in
matmul/conv FLOPs by :func:`measure` (``torch.utils.flop_counter``: deterministic, unlike
wall time), so that tuners charge each objective what its meta-gradients cost:

* ``backward_step``: a backward pass through one gradient evaluation. Reverse mode pays it
  once a step; forward mode once a step per tangent (H s for each tangent s, H symmetric);
  a Hessian-vector product once, after the gradient is built with its graph.

``compile=True`` may fuse part of the work away and is charged the eager count all the same.
tests/test_costs.py checks the charges against the FLOPs the runs execute.

    forward:   T (1 + k · backward_step) + 1                       (k hyperparameters)
    reverse:   T + (W − last segment) + W · backward_step + 1     (window W, checkpoint segments)
    n HVPs at one θ:  1 + n · backward_step

The + 1 of a meta-gradient is the validation gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from metatune import checks
from metatune._types import Batch, Params, TrainLoss
from metatune.hessian import GradientGraph
from metatune.unroll import check_params


@dataclass(frozen=True)
class CostModel:
    """The gradient evaluations a backward pass through one gradient costs (``backward_step``).

    The default is :data:`DEFAULT`'s.
    """

    backward_step: float = 2.0

    def __post_init__(self) -> None:
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
            return steps * (1.0 + hyperparameters * self.backward_step) + 1.0
        window = steps if window is None else window
        last = (window - 1) % (checkpoint or window) + 1
        return steps + (window - last) + window * self.backward_step + 1.0

    def hvps(self, count: int) -> float:
        """``count`` Hessian-vector products at one θ: the gradient with its graph once, then a
        backward pass through it per product (nothing when ``count`` is 0)."""
        count = checks.integer("count", count, low=0, note="Hessian-vector products")
        return 0.0 if count == 0 else 1.0 + count * self.backward_step


DEFAULT = CostModel()
"""The multiple of a product of two parameter matrices, ℓ = ‖A B‖², counted by hand (and
checked in tests/test_costs.py): a backward step costs 2 gradients. Conv and recurrent
networks come close to it and no registered objective measures above it (``metatune bench
cost``, table in BENCHMARKS.md: 1.99 on cnn-digits, 1.96 on rnn-sequence); a product with
data costs 1. It is charged where the counter sees no matmul or conv (rosenbrock:
elementwise ops only) and by :func:`metatune.hypergrad` unless ``costs=`` is given."""


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
    """Count the matmul/conv FLOPs G of one gradient and F of a gradient built with its graph
    followed by one backward pass through it, and return backward_step = F/G − 1
    (:data:`DEFAULT` when the loss has no counted ops).

    Example:
        >>> loss = lambda p, b: (p["w"] @ torch.ones(3, 4)).pow(2).sum()
        >>> measure(loss, {"w": torch.ones(2, 3)})
        CostModel(backward_step=1.0)
    """
    checks.function("train_loss", train_loss, "a function (params, batch) -> scalar tensor")
    params = check_params(params)
    gradient = _flops(lambda: torch.func.grad(train_loss)(params, batch))
    if gradient == 0:
        return DEFAULT
    backward = _flops(lambda: _double_backward(train_loss, params, batch))
    return CostModel(backward_step=max(backward / gradient - 1.0, 0.0))


def _double_backward(train_loss: TrainLoss, params: Params, batch: Batch) -> None:
    """The gradient with its graph and one backward pass through it (what a step of reverse
    mode, a tangent of forward mode and an HVP execute)."""
    GradientGraph(train_loss, params, batch).hvp({n: torch.ones_like(p) for n, p in params.items()}, keep=False)
