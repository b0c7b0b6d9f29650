"""Small data sets that ship with the installed packages (no download at run time)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Split(NamedTuple):
    """Features and integer labels for training and validation."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def digits(
    *, seed: int = 0, val_fraction: float = 0.25, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Split:
    """scikit-learn's 8×8 digits (1797 × 64, 10 classes), shuffled by ``seed`` and split.

    Pixels are centred on the training mean and divided by one deviation, that of all
    training pixels. (Per-pixel standardisation would divide the rarely inked border
    pixels by a tiny training deviation and blow up the validation rows where they are inked.)
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.data, dtype=torch.float64)
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(x)))
    val, train = order[:n_val], order[n_val:]
    centred = x - x[train].mean(0)
    x = centred / centred[train].std()
    to = dict(device=device)
    return Split(x[train].to(dtype=dtype, **to), y[train].to(**to), x[val].to(dtype=dtype, **to), y[val].to(**to))


def breast_cancer(
    *, seed: int = 0, val_fraction: float = 0.25, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Split:
    """scikit-learn's Wisconsin breast-cancer table (569 × 30, 2 classes), shuffled by ``seed``
    and split; each feature standardised by its training mean and deviation (every feature is
    dense, unlike the digits' border pixels)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.as_tensor(data.data, dtype=torch.float64)
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(x)))
    val, train = order[:n_val], order[n_val:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    to = dict(device=device)
    return Split(x[train].to(dtype=dtype, **to), y[train].to(**to), x[val].to(dtype=dtype, **to), y[val].to(**to))


def minibatch_indices(n: int, batch_size: int, steps: int, *, seed: int = 0) -> list[Tensor]:
    """``steps`` index tensors of ``batch_size`` rows, epoch-wise shuffles of ``range(n)`` seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(n // batch_size, 1)
    batches: list[Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        batches.extend(order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return batches[:steps]
