"""``mlp-cancer``: a tanh MLP on scikit-learn's breast-cancer table (30 features, 2 classes).

Held out: registered before any tuner ran on it, so no tuning choice was made on it
(``metatune bench schedule``'s unseen rows). The data ship inside scikit-learn (no
download); :func:`metatune.datasets.breast_cancer` shuffles them with ``data_seed``, holds
out a quarter for validation and standardises each feature. Each step sees a seeded
minibatch; the loss is the mean cross-entropy, the validation loss that over the held-out rows.

Example:
    >>> from metatune.objectives import get
    >>> get("mlp-cancer", hidden=8).params["hidden"]
    8
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from metatune import checks
from metatune.datasets import breast_cancer
from metatune.objectives._supervised import Supervised, seeded_init
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register

N_FEATURES, N_CLASSES = 30, 2


@register("mlp-cancer")
def mlp_cancer(
    *, hidden: int = 32, data_seed: int = 0, batch_size: int = 64, steps: int = 200,
    dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """A one-hidden-layer tanh MLP 30 → ``hidden`` → 2 on the breast-cancer table."""
    checks.positive_int("hidden", hidden)
    checks.positive_int("steps", steps)
    checks.positive_int("batch_size", batch_size)
    checks.integer("data_seed", data_seed, low=0)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    data = breast_cancer(seed=data_seed, dtype=torch_dtype, device=device)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, N_CLASSES))

    problem = Supervised(build().to(dtype=torch_dtype, device=device), data, F.cross_entropy, batch_size)
    return Objective(
        name="mlp-cancer",
        description=f"tanh MLP 30→{hidden}→2 on breast cancer, batch {batch_size}, data seed {data_seed}",
        init_params=seeded_init(build, torch_dtype, device), train_loss=problem.train_loss,
        val_loss=problem.val_loss, batches=problem.batches, space=SearchSpace(lr_low=1e-3, lr_high=3.0),
        steps=steps, params={"hidden": hidden, "data_seed": data_seed, "batch_size": batch_size, "steps": steps},
    )
