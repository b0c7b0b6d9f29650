"""``quadratic``: ½ (θ − θ*)ᵀ A (θ − θ*) with a rotated, ill-conditioned A = Q diag(λ) Qᵀ.

λ is log-spaced over [1, κ] (``spectrum="log"``) or evenly spaced (``spectrum="linear"``:
few small eigenvalues, the slow modes harder for Lanczos to resolve), Q a seeded random
rotation, so the coordinates are coupled (not diagonal). Full-batch and deterministic: the training and validation losses are
the same function, and heavy ball's rate-optimal η* = 4/(√κ + 1)², β* = ((√κ − 1)/(√κ + 1))²
and ρ* = √β* are exact (λ from 1 to κ): a tuner's result can be compared with the physical limit.
"""

from __future__ import annotations

import math

import torch

from metatune import checks
from metatune.objectives.base import Objective, SearchSpace, default_device, default_dtype, register
from metatune.stability import optimal_hyperparameters


SPECTRA = ("log", "linear")


@register("quadratic")
def quadratic(
    *, dim: int = 50, kappa: float = 1000.0, rotation_seed: int = 0, steps: int = 300,
    spectrum: str = "log", dtype: str = "float64", device: str = "cpu",
) -> Objective:
    """Build the rotated quadratic of dimension ``dim`` and condition number ``kappa``."""
    dim = checks.integer("dim", dim, low=2)
    checks.number("kappa", kappa, low=1.0, note="the condition number")
    rotation_seed = checks.integer("rotation_seed", rotation_seed, low=0)
    steps = checks.positive_int("steps", steps)
    checks.choice("spectrum", spectrum, SPECTRA)
    torch_dtype, device = default_dtype(dtype), default_device(device)
    generator = torch.Generator().manual_seed(rotation_seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = (torch.logspace(0.0, math.log10(kappa), dim, dtype=torch.float64) if spectrum == "log"
                   else torch.linspace(1.0, kappa, dim, dtype=torch.float64))
    matrix = (rotation @ torch.diag(eigenvalues) @ rotation.T).to(torch_dtype).to(device)
    minimiser = torch.randn(dim, generator=generator, dtype=torch.float64).to(torch_dtype).to(device)

    def loss(params, batch=None):  # noqa: ANN001, ANN202
        d = params["x"] - minimiser
        return 0.5 * d @ (matrix @ d)

    def init_params(seed: int):  # noqa: ANN202
        start = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return {"x": (minimiser.cpu().double() + start).to(torch_dtype).to(device)}

    lr, momentum = optimal_hyperparameters(1.0, kappa)
    return Objective(
        name="quadratic",
        description=f"rotated quadratic, dimension {dim}, condition number {kappa:g}, {spectrum} spectrum "
                    "(full batch)",
        init_params=init_params,
        train_loss=loss,
        val_loss=loss,
        batches=lambda seed, steps: None,
        space=SearchSpace(lr_low=1e-5, lr_high=1e-1, momentum_low=0.0, momentum_high=0.99),
        steps=steps,
        params={"dim": dim, "kappa": kappa, "rotation_seed": rotation_seed, "steps": steps, "spectrum": spectrum},
        optimum={"lr": lr, "momentum": momentum, "spectral_radius": math.sqrt(momentum),
                 "lambda_min": 1.0, "lambda_max": float(kappa)},
    )
