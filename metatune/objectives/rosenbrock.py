"""``rosenbrock``: the non-convex banana valley Σᵢ (a − xᵢ)² + b (xᵢ₊₁ − xᵢ²)².

The sum runs over consecutive pairs i = 0 … dim−2 (the classic two-dimensional
(1 − x)² + 100 (y − x²)² for ``dim=2``, a=1, b=100), with minimum 0 at (1, …, 1) for a = 1
(at (a, a²) for dim = 2). The valley floor is flat and its walls steep
(Hessian eigenvalues from ≈ 0.5 to ≈ 10³ near the start), so a learning rate stable on
the walls crawls along the floor: the textbook case for momentum. Full batch and
deterministic; the validation loss is the training loss.

Example:
    >>> from metatune.objectives import get
    >>> objective = get("rosenbrock")
    >>> round(float(objective.train_loss({"x": torch.tensor([1.0, 1.0], dtype=torch.float64)}, None)), 6)
    0.0
"""

from __future__ import annotations

import torch
from torch import Tensor

from metatune._types import Params
from metatune import checks
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register

CLASSIC_START = (-1.2, 1.0)
"""Rosenbrock's own starting point, repeated along the coordinates for dim > 2."""


def rosenbrock_value(x: Tensor, a: float, b: float) -> Tensor:
    """Σᵢ (a − xᵢ)² + b (xᵢ₊₁ − xᵢ²)² over consecutive pairs (out of place, no value-dependent branches)."""
    head, tail = x[:-1], x[1:]
    return ((a - head) ** 2 + b * (tail - head**2) ** 2).sum()


@register("rosenbrock")
def rosenbrock(
    *, dim: int = 2, a: float = 1.0, b: float = 100.0, jitter: float = 0.1, steps: int = 500,
    dtype: str = "float64", device: str = "cpu",
) -> Objective:
    """Build the ``dim``-dimensional Rosenbrock function started near (−1.2, 1, −1.2, …).

    ``init_params(seed)`` adds ``jitter`` · N(0, 1) noise (seeded) to the classic start.
    """
    dim = checks.integer("dim", dim, low=2)
    checks.number("a", a, note="the valley floor's position")
    checks.positive("b", b, note="the steepness of the valley walls")
    checks.non_negative("jitter", jitter, note="the deviation of the seeded start")
    steps = checks.positive_int("steps", steps)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    start = torch.tensor([CLASSIC_START[i % 2] for i in range(dim)], dtype=torch.float64)

    def loss(params: Params, batch: None = None) -> Tensor:
        return rosenbrock_value(params["x"], a, b)

    def init_params(seed: int) -> Params:
        noise = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return {"x": (start + jitter * noise).to(dtype=torch_dtype, device=device)}

    return Objective(
        name="rosenbrock",
        description=f"Rosenbrock valley, dimension {dim}, a={a:g}, b={b:g}, start (−1.2, 1, …) ± {jitter:g} (full batch)",
        init_params=init_params,
        train_loss=loss,
        val_loss=loss,
        batches=lambda seed, steps: None,
        space=SearchSpace(lr_low=1e-5, lr_high=1e-2),
        steps=steps,
        params={"dim": dim, "a": a, "b": b, "jitter": jitter, "steps": steps},
    )
