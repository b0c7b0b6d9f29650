"""Adam (Kingma & Ba, 2015) as an optax-style pair of pure functions over numpy vectors.

``state = adam_init(n)``; after each gradient g, ``state = adam_update(state, g)``; the step
direction is ``adam_direction(state)`` = m̂/(√v̂ + ε), with the bias-corrected moments
m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ). A step is then u ← u − α · direction. metagrad's chains
(``outer="adam"``) and the online tuner use it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FIRST_DECAY = 0.9
"""β₁, the first moment's decay (the paper's default)."""
SECOND_DECAY = 0.999
"""β₂, the second moment's decay (the paper's default)."""
EPSILON = 1e-8
"""ε in the direction's denominator: keeps a coordinate with zero gradient history finite."""


class AdamState(NamedTuple):
    """Gradients seen (t) and the moment estimates m, v."""

    step: int
    first_moment: np.ndarray
    second_moment: np.ndarray


def adam_init(size: int) -> AdamState:
    """No gradient seen yet: t = 0, m = v = 0."""
    return AdamState(0, np.zeros(size), np.zeros(size))


def adam_update(state: AdamState, grad: np.ndarray) -> AdamState:
    """m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², t ← t + 1."""
    first = FIRST_DECAY * state.first_moment + (1 - FIRST_DECAY) * grad
    second = SECOND_DECAY * state.second_moment + (1 - SECOND_DECAY) * grad * grad
    return AdamState(state.step + 1, first, second)


def adam_direction(state: AdamState) -> np.ndarray:
    """m̂/(√v̂ + ε) after at least one update.

    Example:
        >>> state = adam_update(adam_init(2), np.array([2.0, -0.5]))
        >>> adam_direction(state).round(6).tolist()  # the first step is the gradient's sign
        [1.0, -1.0]
    """
    t = state.step
    return (state.first_moment / (1 - FIRST_DECAY**t)) / (np.sqrt(state.second_moment / (1 - SECOND_DECAY**t))
                                                          + EPSILON)
