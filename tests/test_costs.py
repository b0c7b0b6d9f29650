"""Cost multiples against matmul FLOPs counted by hand, and charges against the FLOPs a run executes.

Notation: a product of an (a×b) by a (b×c) matrix costs 2abc FLOPs. ``measure`` returns
ratios to one gradient evaluation G: ``primal`` (the gradient as computed inside a jvp),
``tangent`` (each tangent carried through it) and ``backward_step`` (a backward pass
through it).
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
    a tangent V: Ẏ = V X (u), its part of the gradient 2Ẏ Xᵀ (u)        2u → tangent 1
    backward through the gradient (seed 1): ∂/∂Y = 2·1 X (u), then ∂/∂W = (2·1 X) Xᵀ (u)
                                                                        2u → backward_step 1
    torch.func's jvp evaluates each product whose other factor (X) carries no tangent twice,
    so the gradient under a jvp costs 2G                                → primal 2
    """
    x = _randn(n, b, seed=1)
    costs = measure(lambda p, batch: (p["w"] @ x).pow(2).sum(), {"w": _randn(m, n)})
    assert costs == CostModel(tangent=1.0, backward_step=1.0, primal=2.0)


@pytest.mark.parametrize("n, h, o, b", [(2, 3, 5, 7), (6, 4, 3, 9)])
def test_a_one_hidden_layer_mlp_costs_its_hand_count(n, h, o, b):
    """ℓ = ‖W₂ tanh(W₁ X)‖², W₁ (h×n), W₂ (o×h); units p = 2hnb (layer 1), q = 2ohb (layer 2).

    gradient: Z = W₁X (p), Y = W₂H (q); δ = 2Y, ∂W₂ = δHᵀ (q), ∂H = W₂ᵀδ (q), ∂W₁ = δ₁Xᵀ (p)
        G = 2p + 3q
    a tangent: Ż = V₁X (p); Ẏ = V₂H + W₂Ḣ (2q); ∂Ẇ₂ = δ̇Hᵀ + δḢᵀ (2q); ∂Ḣ = V₂ᵀδ + W₂ᵀδ̇ (2q);
        ∂Ẇ₁ = δ̇₁Xᵀ (p)                                                        2p + 6q
    backward through the gradient, seed 1 on ∂W₁ and ∂W₂ (reverse over the five products,
    each with both factors needing a gradient except those with X):              2p + 6q
    under a jvp, the two products with X are evaluated twice, the other three once: 4p + 3q
    """
    x = _randn(n, b, seed=1)
    params = {"w1": _randn(h, n, seed=2), "w2": _randn(o, h, seed=3)}
    costs = measure(lambda p, batch: (p["w2"] @ torch.tanh(p["w1"] @ x)).pow(2).sum(), params)
    p, q = 2 * h * n * b, 2 * o * h * b
    gradient = 2 * p + 3 * q
    assert costs.tangent == pytest.approx((2 * p + 6 * q) / gradient, rel=1e-12)
    assert costs.backward_step == pytest.approx((2 * p + 6 * q) / gradient, rel=1e-12)
    assert costs.primal == pytest.approx((4 * p + 3 * q) / gradient, rel=1e-12)


def test_a_quadratic_form_costs_its_hand_count():
    """ℓ = ½ xᵀ(A x), A (n×n): matrix-vector products (2n² each) and a dot product (2n).

    gradient: A x (2n²), x·(Ax) (2n), backward Aᵀ(½x) (2n²)                 G = 4n² + 2n
    a tangent: A ẋ (2n²), ẋ·(Ax) + x·(Aẋ) (4n), Aᵀ(½ẋ) (2n²)                    4n² + 4n
    backward through the gradient: Aᵀ(·) and A(·) once more (2 × 2n²)           4n²
    under a jvp the two products with the constant A run twice, the dot once:   8n² + 2n
    """
    n = 20
    a = _randn(n, n, seed=1)
    costs = measure(lambda p, b: 0.5 * p["x"] @ (a @ p["x"]), {"x": _randn(n)})
    gradient = 4 * n * n + 2 * n
    assert costs.tangent == pytest.approx((4 * n * n + 4 * n) / gradient, rel=1e-12)
    assert costs.backward_step == pytest.approx(4 * n * n / gradient, rel=1e-12)
    assert costs.primal == pytest.approx((8 * n * n + 2 * n) / gradient, rel=1e-12)


def test_the_default_is_the_hand_count_of_a_product_of_two_parameters():
    """ℓ = ‖A B‖², A (m×n), B (n×b) both parameters; unit u = 2mnb.

    gradient: AB (u), ∂A = δBᵀ (u), ∂B = Aᵀδ (u)                                 G = 3u
    a tangent: ȦB + AḂ (2u), δ̇Bᵀ + δḂᵀ (2u), Ȧᵀδ + Aᵀδ̇ (2u)              6u → tangent 2
    backward through the gradient: likewise 6u                          → backward_step 2
    every product has a tangent on both factors: none is evaluated twice      → primal 1
    """
    params = {"a": _randn(4, 6, seed=1), "b": _randn(6, 5, seed=2)}
    assert measure(lambda p, batch: (p["a"] @ p["b"]).pow(2).sum(), params) == CostModel(2.0, 2.0, 1.0)
    assert DEFAULT == CostModel(tangent=2.0, backward_step=2.0, primal=1.0)


SMALL_CNN = {"width": 4, "batch_size": 16}


@pytest.mark.parametrize("name, kwargs", [("quadratic", {}), ("logistic-digits", {}), ("mlp-digits", {}),
                                          ("rnn-sequence", {}), ("cnn-digits", SMALL_CNN)])
def test_no_registered_objective_costs_more_than_the_default(name, kwargs):
    """The default charge is an upper bound: a forward step for k = 1..4 tangents, a backward
    step and an HVP of each objective cost at most DEFAULT's."""
    objective = mt.objectives.get(name, **kwargs)
    batches = objective.batches(0, 1)
    costs = measure(objective.train_loss, objective.init_params(0), None if batches is None else batches[0])
    for k in range(1, 5):
        assert costs.primal + k * costs.tangent <= DEFAULT.primal + k * DEFAULT.tangent + 1e-9
    assert costs.backward_step <= DEFAULT.backward_step + 1e-9 and costs.hvp <= DEFAULT.hvp + 1e-9


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
def test_a_hessian_vector_product_is_charged_the_flops_it_executes(model):
    """Linear layer on data: G = 4·(3·5·7); product of two parameters: G = 6·(3·5·7)."""
    params, x = {"w": _randn(3, 5)}, _randn(5, 7, seed=1)
    if model == "linear":
        loss, gradient = (lambda p, b: (p["w"] @ x).pow(2).sum()), 4 * 105
    else:
        params["x"] = x
        loss, gradient = (lambda p, b: (p["w"] @ p["x"]).pow(2).sum()), 6 * 105
    hvp = hessian_vector_product(loss, params)
    executed = _flops(lambda: hvp({n: torch.ones_like(p) for n, p in params.items()}))
    assert measure(loss, params).hvp == pytest.approx(executed / gradient, rel=1e-12)


def test_worked_examples_of_the_charges():
    """The documented formulas on numbers worked by hand, for their constant terms (the
    validation gradient, the recomputed segments), which the differences above cancel."""
    costs = CostModel(tangent=1.5, backward_step=0.5, primal=2.0)
    assert costs.hypergrad("forward", 10) == 21.0  # 10 steps × (1 + 2 × 0.5) + 1 validation gradient
    assert costs.hypergrad("forward", 10, hyperparameters=4) == 31.0  # 10 × (1 + 4 × 0.5) + 1
    assert costs.hypergrad("reverse", 10) == 16.0  # 10 forward + 10 × 0.5 backward + 1
    assert costs.hypergrad("truncated", 10, window=4) == 13.0  # 10 + 4 × 0.5 + 1
    # segments [0,3) [3,6) [6,9) [9,10): the last is kept from the forward pass, 9 steps run again
    assert costs.hypergrad("reverse", 10, checkpoint=3) == 25.0  # 10 + 9 + 5 + 1
    assert costs.hvp == 3.5  # the gradient under the jvp (2) and one tangent (1.5)
