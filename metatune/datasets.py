"""Small data sets that ship with the installed packages (no download at run time)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor


class Split(NamedTuple):
    """Features and integer labels for training and validation."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


def _shuffled_split(data: Any, seed: int, val_fraction: float, dtype: torch.dtype, device: str | torch.device,
                    standardise: Callable[[Tensor, Tensor], Tensor]) -> Split:
    """A scikit-learn data set's rows shuffled by ``seed``, ``val_fraction`` held out, and the
    features passed through ``standardise(x, train_rows)`` (statistics from the training rows)."""
    x = torch.as_tensor(data.data, dtype=torch.float64)
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(x)))
    val, train = order[:n_val], order[n_val:]
    x = standardise(x, train)
    to = dict(device=device)
    return Split(x[train].to(dtype=dtype, **to), y[train].to(**to), x[val].to(dtype=dtype, **to), y[val].to(**to))


def digits(
    *, seed: int = 0, val_fraction: float = 0.25, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Split:
    """scikit-learn's 8×8 digits (1797 × 64, 10 classes), shuffled by ``seed`` and split.

    Pixels are centred on the training mean and divided by one deviation, that of all
    training pixels. (Per-pixel standardisation would divide the rarely inked border
    pixels by a tiny training deviation and blow up the validation rows where they are inked.)
    """
    from sklearn.datasets import load_digits

    def standardise(x: Tensor, train: Tensor) -> Tensor:
        centred = x - x[train].mean(0)
        return centred / centred[train].std()

    return _shuffled_split(load_digits(), seed, val_fraction, dtype, device, standardise)


def breast_cancer(
    *, seed: int = 0, val_fraction: float = 0.25, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Split:
    """scikit-learn's Wisconsin breast-cancer table (569 × 30, 2 classes), shuffled by ``seed``
    and split; each feature standardised by its training mean and deviation (every feature is
    dense, unlike the digits' border pixels)."""
    from sklearn.datasets import load_breast_cancer

    return _shuffled_split(load_breast_cancer(), seed, val_fraction, dtype, device,
                           lambda x, train: (x - x[train].mean(0)) / x[train].std(0))


def minibatch_indices(n: int, batch_size: int, steps: int, *, seed: int = 0) -> list[Tensor]:
    """``steps`` index tensors of ``batch_size`` rows, epoch-wise shuffles of ``range(n)`` seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(n // batch_size, 1)
    batches: list[Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(n, generator=generator)
        batches.extend(order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch))
    return batches[:steps]
