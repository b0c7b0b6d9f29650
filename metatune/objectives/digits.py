"""Networks on scikit-learn's 8×8 digits: the classifiers ``logistic-digits``, ``mlp-digits``,
``cnn-digits`` and the autoencoder ``autoencoder-digits``.

The data ship inside scikit-learn (no download); :func:`metatune.datasets.digits` shuffles
them with ``data_seed``, holds out a quarter for validation and standardises the features.
Each step sees a seeded minibatch of training rows; the loss is the mean cross-entropy
(plus ½ wd ‖W‖² on the training side of ``logistic-digits`` when ``weight_decay > 0``). The
validation loss is the cross-entropy over the whole held-out split.

Example:
    >>> from metatune.objectives import get
    >>> get("logistic-digits", batch_size=64).params["batch_size"]
    64
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import nn

from metatune.datasets import Split, digits
from metatune import checks
from metatune.objectives._supervised import Supervised, seeded_init
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register
from metatune.objectives.sequence import squared_error

N_FEATURES, N_CLASSES, SIDE = 64, 10, 8


def _digits_objective(
    name: str, description: str, build: Callable[[], nn.Module], *, space: SearchSpace, params: dict,
    data_seed: int, batch_size: int, steps: int, dtype: str, device: str, weight_decay: float = 0.0,
    reconstruct: bool = False,
) -> Objective:
    """The :class:`Objective` training ``build()`` on the digits split of ``data_seed``: by
    cross-entropy against the labels, or (``reconstruct``) by squared error against the
    images themselves."""
    checks.positive_int("steps", steps)
    checks.positive_int("batch_size", batch_size)
    checks.integer("data_seed", data_seed, low=0)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    data = digits(seed=data_seed, dtype=torch_dtype, device=device)
    if reconstruct:
        data = Split(data.x_train, data.x_train, data.x_val, data.x_val)
    penalty = (lambda p: 0.5 * weight_decay * (p["weight"] ** 2).sum()) if weight_decay > 0 else None
    model = build().to(dtype=torch_dtype, device=device)
    problem = Supervised(model, data, squared_error if reconstruct else F.cross_entropy, batch_size, penalty)
    return Objective(
        name=name, description=description, init_params=seeded_init(build, torch_dtype, device),
        train_loss=problem.train_loss, val_loss=problem.val_loss, batches=problem.batches,
        space=space, steps=steps, params=params,
    )


@register("logistic-digits")
def logistic_digits(
    *, data_seed: int = 0, batch_size: int = 128, weight_decay: float = 0.0, steps: int = 200,
    dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """Multinomial logistic regression 64 → 10 (convex; ill-conditioned by correlated pixels)."""
    checks.non_negative("weight_decay", weight_decay)
    return _digits_objective(
        "logistic-digits",
        f"multinomial logistic regression 64→10 on digits, batch {batch_size}, "
        f"weight decay {weight_decay:g}, data seed {data_seed}",
        lambda: nn.Linear(N_FEATURES, N_CLASSES),
        space=SearchSpace(lr_low=1e-3, lr_high=10.0),
        params={"data_seed": data_seed, "batch_size": batch_size, "weight_decay": weight_decay, "steps": steps},
        data_seed=data_seed, batch_size=batch_size, steps=steps, dtype=dtype, device=device,
        weight_decay=weight_decay,
    )


@register("mlp-digits")
def mlp_digits(
    *, hidden: int = 64, data_seed: int = 0, batch_size: int = 128, steps: int = 200,
    dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """A one-hidden-layer tanh MLP 64 → ``hidden`` → 10."""
    checks.positive_int("hidden", hidden)
    return _digits_objective(
        "mlp-digits",
        f"tanh MLP 64→{hidden}→10 on digits, batch {batch_size}, data seed {data_seed}",
        lambda: nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, N_CLASSES)),
        space=SearchSpace(lr_low=1e-3, lr_high=3.0),
        params={"hidden": hidden, "data_seed": data_seed, "batch_size": batch_size, "steps": steps},
        data_seed=data_seed, batch_size=batch_size, steps=steps, dtype=dtype, device=device,
    )


def _cnn(width: int) -> nn.Module:
    """conv 1→w 3×3 · tanh · conv w→2w 3×3 · tanh · 2×2 average pool · linear 2w·4·4 → 10.

    Smooth throughout (tanh, average pooling), so finite differences of the meta-gradient
    agree with the exact ones.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, SIDE, SIDE)),
        nn.Conv2d(1, width, 3, padding=1), nn.Tanh(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.Tanh(),
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(2 * width * (SIDE // 2) ** 2, N_CLASSES),
    )


@register("cnn-digits")
def cnn_digits(
    *, width: int = 16, data_seed: int = 0, batch_size: int = 256, steps: int = 200,
    dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """A small CNN on the 8×8 images (``width`` and 2·``width`` channels); worth a GPU."""
    checks.positive_int("width", width)
    return _digits_objective(
        "cnn-digits",
        f"tanh CNN 1→{width}→{2 * width} channels (3×3) + linear on 8×8 digits, batch {batch_size}, "
        f"data seed {data_seed}",
        lambda: _cnn(width),
        space=SearchSpace(lr_low=1e-3, lr_high=3.0),
        params={"width": width, "data_seed": data_seed, "batch_size": batch_size, "steps": steps},
        data_seed=data_seed, batch_size=batch_size, steps=steps, dtype=dtype, device=device,
    )


@register("autoencoder-digits")
def autoencoder_digits(
    *, hidden: int = 32, code: int = 8, data_seed: int = 0, batch_size: int = 128, steps: int = 200,
    dtype: str = "float32", device: str = "cpu",
) -> Objective:
    """A tanh autoencoder 64 → ``hidden`` → ``code`` → ``hidden`` → 64 reconstructing the
    standardised images; the loss is the mean squared reconstruction error (validation: over
    the held-out images). Four layers, so a per-layer space has 8 hyperparameters. The
    bottleneck learns slowly at small η (20 steps at η = 0.014, β = 0.5 lower the loss by
    1 %), so η ranges over [0.01, 10]. Held out: no tuning choice is made on it
    (``metatune bench tuning``'s unseen rows)."""
    checks.positive_int("hidden", hidden)
    checks.positive_int("code", code)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, code), nn.Tanh(),
                             nn.Linear(code, hidden), nn.Tanh(), nn.Linear(hidden, N_FEATURES))

    return _digits_objective(
        "autoencoder-digits",
        f"tanh autoencoder 64→{hidden}→{code}→{hidden}→64 on digits, batch {batch_size}, data seed {data_seed}",
        build,
        space=SearchSpace(lr_low=1e-2, lr_high=10.0),
        params={"hidden": hidden, "code": code, "data_seed": data_seed, "batch_size": batch_size, "steps": steps},
        data_seed=data_seed, batch_size=batch_size, steps=steps, dtype=dtype, device=device, reconstruct=True,
    )
