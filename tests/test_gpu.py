"""GPU paths: the hot loops never wait on the host (skipped without CUDA).

``torch.cuda.set_sync_debug_mode("error")`` raises on any operation that synchronises the
host with the device (``.item()``, ``float(tensor)``, a data-dependent shape, a copy to the
CPU); each test runs the per-step function of a loop under it, after a warm-up step outside.
"""

from __future__ import annotations

import pytest
import torch

from metatune import dynamics
from metatune.bench.common import digits_mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def problem():
    model, params, train_loss, val_loss, batches = digits_mlp((64,), 128, 6, "cuda")
    return params, train_loss, batches


def _no_sync(run) -> None:  # noqa: ANN001
    run()  # warm-up: first-call allocations, lazy initialisations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_a_forward_mode_step_stays_on_the_gpu(problem):
    from metatune.hypergrad.forward import tangent_step

    params, train_loss, batches = problem
    layout = tuple((n, 0, 1) for n in params)
    hyper = torch.tensor([0.05, 0.9], device="cuda")
    tangents = ({n: torch.zeros((2, *p.shape), device="cuda") for n, p in params.items()},
                {n: torch.zeros((2, *p.shape), device="cuda") for n, p in params.items()},
                torch.eye(2, device="cuda"))
    velocity = {n: torch.zeros_like(p) for n, p in params.items()}

    def run() -> None:
        state, s = (params, velocity, hyper), tangents
        for batch in batches:
            p, v, sp, sv, _ = tangent_step(train_loss, False, layout, state, s, batch)
            state, s = (p, v, hyper), (sp, sv, tangents[2])

    _no_sync(run)


def test_a_reverse_mode_unroll_and_its_backward_stay_on_the_gpu(problem):
    from metatune.unroll import autograd_gradient, make_step, run_steps

    params, train_loss, batches = problem
    step = make_step(autograd_gradient(train_loss, create_graph=True), dynamics.heavy_ball)

    def run() -> None:
        lr = torch.tensor(0.05, device="cuda", requires_grad=True)
        momentum = torch.tensor(0.9, device="cuda", requires_grad=True)
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        hyper = dynamics.Hyperparameters({n: lr for n in leaves}, {n: momentum for n in leaves})
        final, _, _ = run_steps(step, leaves, dynamics.init_state(leaves), hyper, batches)
        torch.autograd.grad(train_loss(final, batches[0]), (lr, momentum))

    _no_sync(run)


def test_a_population_step_stays_on_the_gpu(problem):
    from metatune.population import _population_step

    params, train_loss, batches = problem
    k = 16
    stacked = {n: p.expand(k, *p.shape).clone() for n, p in params.items()}
    shape = lambda p: (k, *([1] * (p.dim() - 1)))  # noqa: E731
    lrs, momenta = torch.linspace(0.01, 0.1, k, device="cuda"), torch.linspace(0.0, 0.9, k, device="cuda")
    hyper = dynamics.Hyperparameters({n: lrs.view(shape(p)) for n, p in stacked.items()},
                                     {n: momenta.view(shape(p)) for n, p in stacked.items()})

    def run() -> None:
        p, v = stacked, {n: torch.zeros_like(t) for n, t in stacked.items()}
        for batch in batches:
            p, v, _ = _population_step(train_loss, dynamics.heavy_ball, p, v, hyper, batch, None)

    _no_sync(run)
