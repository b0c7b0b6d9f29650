"""Hessian-vector products by a backward pass through the gradient (reverse-over-reverse).

The gradient g = ∇ℓ(θ; batch) is built once with its graph; since H = ∂g/∂θ is symmetric,
H v = (vᵀH)ᵀ is the vector-Jacobian product of g with v: one backward pass through the
gradient's graph, ``costs.backward_step`` gradients (:mod:`metatune.costs`). Forward mode
carries its tangents with these products, and the curvature estimates of
:mod:`metatune.stability` run Lanczos on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metatune._types import Batch, Params, TrainLoss


class GradientGraph:
    """∇ℓ(θ; batch) with its graph, and H v by a backward pass through it.

    Attributes:
        gradient: ∇ℓ by name (detached); loss: ℓ(θ; batch) (detached).

    Example:
        >>> graph = GradientGraph(lambda p, b: (p["x"] ** 3).sum(), {"x": torch.tensor([1.0, 2.0])}, None)
        >>> graph.hvp({"x": torch.tensor([1.0, 1.0])})["x"]  # 6 x ⊙ v
        tensor([ 6., 12.])
    """

    def __init__(self, train_loss: TrainLoss, params: Params, batch: Batch) -> None:
        self._leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        with torch.enable_grad():
            loss = train_loss(self._leaves, batch)
            grads = torch.autograd.grad(loss, list(self._leaves.values()), create_graph=True)
        # a gradient that does not depend on θ (a loss linear in a parameter) has no graph: H v = 0 there
        self._linked = [(name, g) for name, g in zip(self._leaves, grads) if g.requires_grad]
        self.gradient = {n: g.detach() for n, g in zip(self._leaves, grads)}
        self.loss = loss.detach()

    def hvp(self, vector: Params, *, keep: bool = True) -> Params:
        """H v for ``vector`` by name; ``keep=False`` frees the graph after this product."""
        if not self._linked:
            return {n: torch.zeros_like(p) for n, p in self._leaves.items()}
        products = torch.autograd.grad([g for _, g in self._linked], list(self._leaves.values()),
                                       grad_outputs=[vector[n] for n, _ in self._linked], retain_graph=keep,
                                       allow_unused=True, materialize_grads=True)
        return dict(zip(self._leaves, products))


def gradient_and_hvps(train_loss: TrainLoss, params: Params, directions: Params, batch: Batch,
                      ) -> tuple[Params, Params, Tensor]:
    """g = ∇ℓ(θ; batch), H s for each of the k directions s (leading axis of ``directions``), ℓ:
    1 + k · backward_step gradients."""
    graph = GradientGraph(train_loss, params, batch)
    k = next(iter(directions.values())).shape[0]
    columns = [graph.hvp({n: d[i] for n, d in directions.items()}, keep=i + 1 < k) for i in range(k)]
    return graph.gradient, {n: torch.stack([c[n] for c in columns]) for n in params}, graph.loss
