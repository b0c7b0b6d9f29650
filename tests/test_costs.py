"""FLOP-counted cost multiples against hand counts."""

from __future__ import annotations

import pytest
import torch

from metatune.costs import DEFAULT, CostModel, measure


@pytest.mark.parametrize("sizes", [(3, 5, 7), (30, 2, 11), (8, 64, 128)])
def test_multiples_of_a_linear_model_do_not_depend_on_its_sizes(sizes):
    """Every counted op of ‖W X‖² is an (m·n·b) product, so the ratios are size-free."""
    m, n, b = sizes
    x = torch.randn(n, b, dtype=torch.float64)
    costs = measure(lambda p, batch: (p["w"] @ x).pow(2).sum(), {"w": torch.randn(m, n, dtype=torch.float64)})
    reference = measure(lambda p, batch: (p["w"] @ torch.ones(4, 4)).pow(2).sum(), {"w": torch.ones(4, 4)})
    assert costs == reference
    assert 1.0 <= costs.tangent <= 2.0 and 0.5 <= costs.backward_step <= 2.0


def test_a_quadratic_backward_step_costs_what_its_gradient_costs():
    """ℓ = ½ xᵀAx: the gradient is one product with A and so is H v = A v."""
    a = torch.randn(20, 20, dtype=torch.float64)
    a = a @ a.T
    costs = measure(lambda p, b: 0.5 * p["x"] @ (a @ p["x"]), {"x": torch.randn(20, dtype=torch.float64)})
    assert costs.backward_step == pytest.approx(1.0, rel=0.05)


def test_a_loss_without_counted_ops_gets_the_default():
    assert measure(lambda p, b: (p["x"] ** 4).sum(), {"x": torch.ones(3)}) == DEFAULT


def test_cost_formulas():
    costs = CostModel(tangent=1.5, backward_step=0.5)
    assert costs.hypergrad("forward", 10) == 10 * (1 + 2 * 1.5) + 1
    assert costs.hypergrad("reverse", 10) == 10 + 10 * 0.5 + 1
    assert costs.hypergrad("truncated", 10, window=4) == 10 + 4 * 0.5 + 1
    assert costs.hypergrad("reverse", 10, checkpoint=3) == 10 + 9 + 10 * 0.5 + 1
    assert costs.hvp == 2.5
