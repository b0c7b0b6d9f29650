"""Cost multiples against matmul FLOPs counted by hand, and charges against the FLOPs a run executes.

Notation: a product of an (a×b) by a (b×c) matrix costs 2abc FLOPs. ``measure`` returns
the ratio to one gradient evaluation G of a backward pass through it, ``backward_step``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import metatune as mt
from metatune.costs import DEFAULT, CostModel, measure
from metatune.stability import hessian_vector_product

F64 = {"dtype": torch.float64}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


@pytest.mark.parametrize("m, n, b", [(3, 5, 7), (30, 2, 11), (8, 64, 128)])
def test_a_linear_layer_costs_its_hand_count(m, n, b):
    """ℓ = ‖W X‖², W (m×n) a parameter, X (n×b) data; one unit u = 2mnb.

    gradient: Y = W X (u), ∂ℓ/∂W = 2Y Xᵀ (u)                           G = 2u
    backward through the gradient (seed 1): ∂/∂Y = 2·1 X (u), then ∂/∂W = (2·1 X) Xᵀ (u)
                                                                        2u → backward_step 1
    """
    x = _randn(n, b, seed=1)
    costs = measure(lambda p, batch: (p["w"] @ x).pow(2).sum(), {"w": _randn(m, n)})
    assert costs == CostModel(backward_step=1.0)


@pytest.mark.parametrize("n, h, o, b", [(2, 3, 5, 7), (6, 4, 3, 9)])
def test_a_one_hidden_layer_mlp_costs_its_hand_count(n, h, o, b):
    """ℓ = ‖W₂ tanh(W₁ X)‖², W₁ (h×n), W₂ (o×h); units p = 2hnb (layer 1), q = 2ohb (layer 2).

    gradient: Z = W₁X (p), Y = W₂H (q); δ = 2Y, ∂W₂ = δHᵀ (q), ∂H = W₂ᵀδ (q), ∂W₁ = δ₁Xᵀ (p)
        G = 2p + 3q
    backward through the gradient, seed 1 on ∂W₁ and ∂W₂ (reverse over the five products,
    each with both factors needing a gradient except those with X):              2p + 6q
    """
    x = _randn(n, b, seed=1)
    params = {"w1": _randn(h, n, seed=2), "w2": _randn(o, h, seed=3)}
    costs = measure(lambda p, batch: (p["w2"] @ torch.tanh(p["w1"] @ x)).pow(2).sum(), params)
    p, q = 2 * h * n * b, 2 * o * h * b
    gradient = 2 * p + 3 * q
    assert costs.backward_step == pytest.approx((2 * p + 6 * q) / gradient, rel=1e-12)


def test_a_quadratic_form_costs_its_hand_count():
    """ℓ = ½ xᵀ(A x), A (n×n): matrix-vector products (2n² each) and a dot product (2n).

    gradient: A x (2n²), x·(Ax) (2n), backward Aᵀ(½x) (2n²)                 G = 4n² + 2n
    backward through the gradient: Aᵀ(·) and A(·) once more (2 × 2n²)           4n²
    """
    n = 20
    a = _randn(n, n, seed=1)
    costs = measure(lambda p, b: 0.5 * p["x"] @ (a @ p["x"]), {"x": _randn(n)})
    gradient = 4 * n * n + 2 * n
    assert costs.backward_step == pytest.approx(4 * n * n / gradient, rel=1e-12)


def test_the_default_is_the_hand_count_of_a_product_of_two_parameters():
    """ℓ = ‖A B‖², A (m×n), B (n×b) both parameters; unit u = 2mnb.

    gradient: AB (u), ∂A = δBᵀ (u), ∂B = Aᵀδ (u)                                 G = 3u
    backward through the gradient: each of the three products has both factors needing a
    gradient, 2 products each: 6u                                        → backward_step 2
    """
    params = {"a": _randn(4, 6, seed=1), "b": _randn(6, 5, seed=2)}
    assert measure(lambda p, batch: (p["a"] @ p["b"]).pow(2).sum(), params) == CostModel(2.0)
    assert DEFAULT == CostModel(backward_step=2.0)


SMALL_CNN = {"width": 4, "batch_size": 16}


@pytest.mark.parametrize("name, kwargs", [("quadratic", {}), ("logistic-digits", {}), ("mlp-digits", {}),
                                          ("rnn-sequence", {}), ("cnn-digits", SMALL_CNN)])
def test_no_registered_objective_costs_more_than_the_default(name, kwargs):
    """The default charge is an upper bound: each objective's backward step (and with it a
    forward step for any k, a reverse step and n HVPs) costs at most DEFAULT's."""
    objective = mt.objectives.get(name, **kwargs)
    batches = objective.batches(0, 1)
    costs = measure(objective.train_loss, objective.init_params(0), None if batches is None else batches[0])
    assert costs.backward_step <= DEFAULT.backward_step + 1e-9


def test_a_loss_without_counted_ops_gets_the_default():
    assert measure(lambda p, b: (p["x"] ** 4).sum(), {"x": torch.ones(3)}) == DEFAULT


# --- charges against the FLOPs a run executes -----------------------------------------------------


def _flops(fn) -> int:  # noqa: ANN001
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _charged_and_executed(hypergrad, long: int, short: int) -> tuple[float, float]:  # noqa: ANN001
    """Charge and FLOPs of ``hypergrad(long)`` minus those of ``hypergrad(short)`` (steps):
    the argument checks and the validation gradient cancel."""
    runs = {}
    flops = {s: _flops(lambda s=s: runs.setdefault(s, hypergrad(s))) for s in (long, short)}
    return runs[long].gradient_evals - runs[short].gradient_evals, flops[long] - flops[short]


def _two_layers():
    """Two linear layers on data, one per parameter group: G = 4·(3·5·7) + 4·(2·4·6) FLOPs."""
    x, z = _randn(5, 7, seed=1), _randn(4, 6, seed=2)

    def loss(p, batch=None):  # noqa: ANN001, ANN202
        return 1e-3 * ((p["a"] @ x).pow(2).sum() + (p["b"] @ z).pow(2).sum())

    return loss, {"a": _randn(3, 5, seed=3), "b": _randn(2, 4, seed=4)}, 4 * 3 * 5 * 7 + 4 * 2 * 4 * 6


GROUPS = ({"a": 0.01, "b": 0.02}, {"a": 0.5, "b": 0.3})


@pytest.mark.parametrize(
    "hyper, kwargs",
    [
        ((0.01, 0.5), {"mode": "forward"}),  # k = 2 tangents
        (GROUPS, {"mode": "forward"}),  # k = 4
        ((0.01, 0.5), {"mode": "reverse"}),
        ((0.01, 0.5), {"mode": "reverse", "checkpoint": 3}),
        ((0.01, 0.5), {"mode": "truncated", "truncate": 3}),
        (GROUPS, {"mode": "reverse"}),
    ],
)
def test_a_meta_gradient_is_charged_the_flops_it_executes(hyper, kwargs):
    """FLOPs of T = 8 steps minus those of T = 4, in gradients, equal the difference of the charges."""
    loss, params, gradient = _two_layers()
    costs = measure(loss, params)
    charged, executed = _charged_and_executed(
        lambda steps: mt.hypergrad(loss, loss, params, *hyper, steps, costs=costs, **kwargs), 8, 4)
    assert charged == pytest.approx(executed / gradient, rel=1e-12)


def test_the_charge_of_an_mlp_meta_gradient_is_the_flops_it_executes(mlp):
    """The same on a tanh MLP with biases and cross-entropy on its own minibatches."""
    costs = measure(mlp.train_loss, mlp.params, mlp.batches[0])
    gradient = _flops(lambda: torch.func.grad(mlp.train_loss)(mlp.params, mlp.batches[0]))
    args = (mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9)
    for kwargs in ({"mode": "forward"}, {"mode": "reverse"}, {"mode": "reverse", "checkpoint": 4}):
        charged, executed = _charged_and_executed(
            lambda steps, kw=kwargs: mt.hypergrad(*args, steps, mlp.batches, costs=costs, **kw), 10, 5)
        assert charged == pytest.approx(executed / gradient, rel=1e-9), kwargs


@pytest.mark.parametrize("model", ["linear", "product"])
def test_hessian_vector_products_are_charged_the_flops_they_execute(model):
    """Linear layer on data: G = 4·(3·5·7); product of two parameters: G = 6·(3·5·7). One
    operator, 1 and 3 products: the gradient is built once, each product is a backward pass."""
    params, x = {"w": _randn(3, 5)}, _randn(5, 7, seed=1)
    if model == "linear":
        loss, gradient = (lambda p, b: (p["w"] @ x).pow(2).sum()), 4 * 105
    else:
        params["x"] = x
        loss, gradient = (lambda p, b: (p["w"] @ p["x"]).pow(2).sum()), 6 * 105
    costs = measure(loss, params)
    for count in (1, 3):
        hvp = hessian_vector_product(loss, params)
        executed = _flops(lambda: [hvp({n: torch.ones_like(p) for n, p in params.items()}) for _ in range(count)])
        assert costs.hvps(count) == pytest.approx(executed / gradient, rel=1e-12)


def test_worked_examples_of_the_charges():
    """The documented formulas on numbers worked by hand, for their constant terms (the
    validation gradient, the recomputed segments), which the differences above cancel."""
    costs = CostModel(backward_step=0.5)
    assert costs.hypergrad("forward", 10) == 21.0  # 10 steps × (1 + 2 × 0.5) + 1 validation gradient
    assert costs.hypergrad("forward", 10, hyperparameters=4) == 31.0  # 10 × (1 + 4 × 0.5) + 1
    assert costs.hypergrad("reverse", 10) == 16.0  # 10 forward + 10 × 0.5 backward + 1
    assert costs.hypergrad("truncated", 10, window=4) == 13.0  # 10 + 4 × 0.5 + 1
    # segments [0,3) [3,6) [6,9) [9,10): the last is kept from the forward pass, 9 steps run again
    assert costs.hypergrad("reverse", 10, checkpoint=3) == 25.0  # 10 + 9 + 5 + 1
    assert costs.hvps(40) == 21.0  # the gradient with its graph once, 40 × 0.5 backward passes
    assert costs.hvps(0) == 0.0


@pytest.mark.parametrize("name, kwargs", [("logistic-digits", {}), ("mlp-digits", {})])
def test_the_tuners_curvature_estimate_is_charged_the_flops_it_executes(name, kwargs):
    """estimate_curvature's Lanczos run (products counted by the FLOPs, not by the operator),
    charged at the objective's measured multiple: executed FLOPs / G equal the charge."""
    from metatune.tuners.base import estimate_curvature

    objective = mt.objectives.get(name, **kwargs)
    params, batches = objective.init_params(0), objective.batches(0, 1)
    batch = None if batches is None else batches[0]
    costs = measure(objective.train_loss, params, batch)
    gradient = _flops(lambda: torch.func.grad(objective.train_loss)(params, batch))
    found = []
    executed = _flops(lambda: found.append(estimate_curvature(objective, params, batches, costs)))
    assert found[0].gradient_evals > 1 + costs.backward_step  # more than one product
    assert found[0].gradient_evals == pytest.approx(executed / gradient, rel=1e-9)
