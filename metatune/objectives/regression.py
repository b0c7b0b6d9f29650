"""``mlp-regression``: a tanh MLP fitting a smooth nonlinear function of 8 inputs from noisy samples.

Inputs x ~ N(0, I₈); target y = sin(2x₀) + x₁x₂ + ½x₃² − cos(x₄) + 0.1 ε, ε ~ N(0, 1) (the last
three inputs are distractors); mean squared error: a regression network on generated data,
three layers, so per-layer spaces have 6 hyperparameters.

Example:
    >>> from metatune.objectives import get
    >>> objective = get("mlp-regression")
    >>> objective.steps, sorted({n.split(".")[0] for n in objective.init_params(0)})
    (200, ['0', '2', '4'])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metatune.datasets import Split
from metatune import checks
from metatune.objectives._supervised import Supervised, seeded_init
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register
from metatune.objectives.sequence import squared_error

INPUTS = 8


def target_function(x: Tensor) -> Tensor:
    """sin(2x₀) + x₁x₂ + ½x₃² − cos(x₄)."""
    return torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3] ** 2 - torch.cos(x[:, 4])


def regression_split(*, n_train: int, n_val: int, noise: float, seed: int, dtype: torch.dtype,
                     device: str | torch.device) -> Split:
    """Noisy training and validation samples of :func:`target_function`, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, INPUTS, generator=generator, dtype=torch.float64)
    y = target_function(x) + noise * torch.randn(n_train + n_val, generator=generator, dtype=torch.float64)
    to = {"dtype": dtype, "device": device}
    return Split(x[:n_train].to(**to), y[:n_train].to(**to), x[n_train:].to(**to), y[n_train:].to(**to))


def _network(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(INPUTS, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 1), nn.Flatten(0))


@register("mlp-regression")
def mlp_regression(
    *, hidden: int = 64, n_train: int = 2048, n_val: int = 512, noise: float = 0.1, data_seed: int = 0,
    batch_size: int = 64, steps: int = 200, dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """Build the regression problem and an 8-``hidden``-``hidden``-1 tanh network."""
    sizes = {"hidden": hidden, "n_train": n_train, "n_val": n_val, "batch_size": batch_size, "steps": steps}
    for name, value in sizes.items():
        checks.positive_int(name, value)
    checks.non_negative("noise", noise, note="the deviation of the targets' noise")
    checks.integer("data_seed", data_seed, low=0)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    data = regression_split(n_train=n_train, n_val=n_val, noise=float(noise), seed=data_seed, dtype=torch_dtype,
                            device=device)
    problem = Supervised(_network(hidden).to(dtype=torch_dtype, device=device), data, squared_error, batch_size)
    return Objective(
        name="mlp-regression",
        description=f"tanh MLP {INPUTS}-{hidden}-{hidden}-1 regressing a nonlinear function, {n_train} noisy "
        f"samples, batch {batch_size}, data seed {data_seed}",
        init_params=seeded_init(lambda: _network(hidden), torch_dtype, device),
        train_loss=problem.train_loss, val_loss=problem.val_loss, batches=problem.batches,
        space=SearchSpace(lr_low=1e-3, lr_high=3.0),
        steps=steps,
        params={"hidden": hidden, "n_train": n_train, "n_val": n_val, "noise": noise, "data_seed": data_seed,
                "batch_size": batch_size, "steps": steps},
    )
