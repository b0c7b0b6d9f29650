"""``mode="auto"``: its choice by hand-computed cases, its measurement by a law it must obey,
and its meta-gradient equal to the mode it picked."""

from __future__ import annotations

import pytest
import torch

import metatune as mt
from metatune.hypergrad import Plan, choose, stored_bytes_per_step


@pytest.mark.parametrize(("steps", "per_step", "budget", "plan"), [
    (100, 10, 1_000, Plan("reverse")),            # 100·10 = 1000 fits exactly
    (100, 10, 999, Plan("reverse", 10)),          # K = 10: (10 + 10)·10 = 200 fits
    (100, 10, 199, Plan("forward")),              # 200 does not
    (1000, 1, 64, Plan("reverse", 32)),           # K = ⌈√1000⌉ = 32: (⌈1000/32⌉ = 32) + 32 = 64
    (1000, 1, 63, Plan("forward")),
])
def test_choice_by_hand(steps, per_step, budget, plan):
    assert choose(steps, per_step, budget) == plan


def _mlp(batch: int, width: int = 16):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(batch, 1, generator=generator, dtype=torch.float64)
    params = {"w1": 0.3 * torch.randn(5, width, generator=generator, dtype=torch.float64),
              "w2": 0.3 * torch.randn(width, 1, generator=generator, dtype=torch.float64)}

    def loss(p, b=None):
        return ((torch.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2).mean()

    return loss, params


def test_stored_bytes_grow_linearly_with_the_batch_and_count_the_activations():
    """The graph of a step holds per-example activations: bytes are affine in the batch size
    with a slope of at least one hidden layer of float64 per example (16 · 8 bytes)."""
    sizes = [stored_bytes_per_step(*_mlp(batch)) for batch in (32, 64, 96)]
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0]
    assert (sizes[1] - sizes[0]) / 32 >= 16 * 8


def test_auto_takes_the_mode_that_fits_and_gives_its_meta_gradient():
    loss, params = _mlp(32)
    common = (loss, loss, params, 0.05, 0.6, 40)
    per_step = stored_bytes_per_step(loss, params)
    reverse = mt.hypergrad(*common, mode="reverse")
    roomy = mt.hypergrad(*common, mode="auto", memory_budget=40 * per_step)
    tight = mt.hypergrad(*common, mode="auto", memory_budget=(7 + 7) * per_step)  # K = ⌈√40⌉ = 7
    none = mt.hypergrad(*common, mode="auto", memory_budget=per_step)
    assert (roomy.mode, tight.mode, none.mode) == ("reverse", "reverse", "forward")
    assert roomy.gradient_evals < tight.gradient_evals < none.gradient_evals  # checkpointing recomputes
    for result in (roomy, tight, none):
        assert result.lr == pytest.approx(reverse.lr, rel=1e-9)
        assert result.momentum == pytest.approx(reverse.momentum, rel=1e-9)


def test_auto_rejects_a_bad_budget_and_a_checkpoint():
    loss, params = _mlp(8)
    with pytest.raises(ValueError, match="memory_budget"):
        mt.hypergrad(loss, loss, params, 0.05, 0.6, 5, mode="auto", memory_budget=0)
    with pytest.raises(ValueError, match="checkpoint"):
        mt.hypergrad(loss, loss, params, 0.05, 0.6, 5, mode="auto", checkpoint=2)
