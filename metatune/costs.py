"""What a meta-gradient costs, in gradient evaluations, and how those multiples are measured.

Three multiples of one gradient evaluation, counted in matmul/conv FLOPs by :func:`measure`
(``torch.utils.flop_counter``: deterministic, unlike wall time), so tuners charge each
objective what its meta-gradients cost:

* ``backward_step``: a backward pass through one gradient evaluation. Reverse mode pays it
  once a step; forward mode once a step per tangent, since it gets H s for each tangent s
  as a backward pass through the gradient (H is symmetric; :mod:`metatune.hypergrad.forward`).
* ``primal`` and ``tangent``: the gradient as computed inside a ``jvp``, and one tangent
  carried through it: what a Hessian-vector product by forward-over-reverse costs (the
  curvature estimates of :mod:`metatune.stability`). ``primal`` lies between 1 and 2, since
  ``torch.func.jvp`` computes twice each product one of whose factors carries no tangent
  (a layer times its data: 2 for a linear model) and once any other (conv layers, products
  of two parameters: 1).

``compile=True`` may fuse part of the work away and is charged the eager count all the same.
tests/test_costs.py checks the charges against the FLOPs the runs execute.

    forward:   T (1 + k · backward_step) + 1                       (k hyperparameters)
    reverse:   T + (W − last segment) + W · backward_step + 1     (window W, checkpoint segments)
    HVP (an unbatched jvp of the gradient): primal + tangent

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
    """Multiples of one gradient evaluation: a tangent, a backward step, the gradient under a jvp.

    The defaults are :data:`DEFAULT`'s.
    """

    tangent: float = 2.0
    backward_step: float = 2.0
    primal: float = 1.0

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
            return steps * (1.0 + hyperparameters * self.backward_step) + 1.0
        window = steps if window is None else window
        last = (window - 1) % (checkpoint or window) + 1
        return steps + (window - last) + window * self.backward_step + 1.0

    @property
    def hvp(self) -> float:
        """One Hessian-vector product by forward-over-reverse (it computes the gradient too)."""
        return self.primal + self.tangent


DEFAULT = CostModel()
"""The multiples of a product of two parameter matrices, ℓ = ‖A B‖², counted by hand (and
checked in tests/test_costs.py): tangent 2, backward step 2, primal 1. Conv and recurrent
networks come close to it and no registered objective measures above it (``metatune bench
cost``, table in BENCHMARKS.md: tangent / backward step / primal 1.98 / 1.99 / 1.02 on
cnn-digits, 1.96 / 1.96 / 1.04 on rnn-sequence); a product with data costs 1 / 1 / 2, a step
of 2 + k ≤ 1 + 2k gradients for k ≥ 1. It is charged where the counter sees no matmul or
conv (rosenbrock: elementwise ops only) and by :func:`metatune.hypergrad` unless ``costs=``
is given."""


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
    """Count matmul/conv FLOPs of one gradient, of one and of two tangents carried through it
    by a vmapped jvp, and of a double backward, and return their ratios (:data:`DEFAULT`
    when the loss has no counted ops).

    tangent = (F₂ − F₁)/G, primal = F₁/G − tangent, backward_step = F_bwd/G − 1, with G the
    FLOPs of a gradient and F_k those of the jvp carrying k tangents.

    Example:
        >>> loss = lambda p, b: (p["w"] @ torch.ones(3, 4)).pow(2).sum()
        >>> measure(loss, {"w": torch.ones(2, 3)})
        CostModel(tangent=1.0, backward_step=1.0, primal=2.0)
    """
    checks.function("train_loss", train_loss, "a function (params, batch) -> scalar tensor")
    params = check_params(params)
    gradient = _flops(lambda: torch.func.grad(train_loss)(params, batch))
    if gradient == 0:
        return DEFAULT
    grad_fn = torch.func.grad(train_loss)

    def push(tangent: Params) -> Params:
        return torch.func.jvp(lambda p: grad_fn(p, batch), (params,), (tangent,))[1]

    def carrying(k: int) -> int:
        tangents = {n: torch.ones((k, *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
        return _flops(lambda: torch.func.vmap(push)(tangents))

    one, two = carrying(1), carrying(2)
    backward = _flops(lambda: _double_backward(train_loss, params, batch))
    tangent = max(two - one, 0) / gradient
    return CostModel(tangent=tangent, backward_step=max(backward / gradient - 1.0, 0.0),
                     primal=max(one / gradient - tangent, 0.0))


def _double_backward(train_loss: TrainLoss, params: Params, batch: Batch) -> None:
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(train_loss(leaves, batch), tuple(leaves.values()), create_graph=True)
    torch.autograd.grad(grads, tuple(leaves.values()), grad_outputs=[torch.ones_like(g) for g in grads])
