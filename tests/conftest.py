"""Shared fixtures: small float64 problems with an independent reference available."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

torch.set_num_threads(1)


@dataclass
class Problem:
    """A training problem in the functional form metatune takes, plus its nn.Module."""

    model: torch.nn.Module
    params: dict[str, torch.Tensor]
    train_loss: Callable
    val_loss: Callable
    batches: list


def _mlp_problem(steps: int = 30, seed: int = 0) -> Problem:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=generator)
    x_val = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    y_val = torch.randint(0, 3, (40,), generator=generator)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3)).double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [torch.randperm(96, generator=generator)[:24] for _ in range(steps)]

    def train_loss(p, b):
        logits = torch.func.functional_call(model, p, (x[b],))
        return torch.nn.functional.cross_entropy(logits, y[b])

    def val_loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x_val,)), y_val)

    return Problem(model, params, train_loss, val_loss, batches)


def rotated_quadratic(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A = Q diag(λ) Qᵀ with a random orthogonal Q (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(eigenvalues.double()) @ q.T


def _quadratic_problem(steps: int = 40) -> Problem:
    eig = torch.logspace(-1, 1, 8, dtype=torch.float64)
    a = rotated_quadratic(eig)
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(8, generator=generator, dtype=torch.float64)
    noise = [0.1 * torch.randn(8, generator=generator, dtype=torch.float64) for _ in range(steps)]

    def train_loss(p, b):
        d = p["x"] - target - b
        return 0.5 * d @ a @ d

    def val_loss(p):
        d = p["x"] - target
        return 0.5 * d @ a @ d

    return Problem(torch.nn.Identity(), {"x": torch.zeros(8, dtype=torch.float64)}, train_loss, val_loss, noise)


@pytest.fixture
def mlp() -> Problem:
    return _mlp_problem()


@pytest.fixture
def quadratic() -> Problem:
    return _quadratic_problem()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One embedded local Ray for the whole test session: 4 logical CPUs and one declared GPU
    (no CUDA here: trials scheduled at gpu=0.25 must still run on the CPU)."""
    pytest.importorskip("ray")
    from metatune.distributed import ensure_ray, shutdown

    root = tmp_path_factory.mktemp("ray")
    ensure_ray(root=root, num_cpus=4, num_gpus=1)
    yield root
    shutdown()
