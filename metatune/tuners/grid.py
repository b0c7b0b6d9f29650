"""``grid``: a square grid (η log-spaced, β linear) sized to the budget, in seeded random order.

The points are those of Optuna's GridSampler over the same lists; the grid is walked here
because GridSampler ends a study by calling ``Study.stop()`` from ``tell``, which Optuna
allows only inside ``Study.optimize`` and not in the ask/tell loop the tuners share.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from metatune.point import Point
from metatune.tuners.base import Tuner
from metatune.tuners.evaluation import Proposal
from metatune.tuners.records import BUDGET_SLACK


class GridTuner(Tuner):
    """⌊√n⌋ × ⌊√n⌋ points, n the trials the budget affords, trained 64 at a time as populations."""

    name = "grid"
    supports_groups = False  # side^(2G) points: a grid does not scale to per-group spaces
    schedule_shapes = ()  # nor to 2K knots
    batch_size = 64

    def grid(self) -> list[tuple[float, float]]:
        side = max(math.isqrt(int(self.budget // self.trial_cost())), 1)
        space = self.space
        make = np.geomspace if space.lr_log else np.linspace
        lrs = make(space.lr_low, space.lr_high, side).tolist()
        momenta = np.linspace(space.momentum_low, space.momentum_high, side).tolist()
        points = [Point.scalar(lr, m) for lr, m in itertools.product(lrs, momenta)]
        order = np.random.default_rng(self.seed).permutation(len(points))
        return [points[i] for i in order]

    def prepare(self) -> float:
        self.pending = self.grid()
        return 0.0

    def ask(self, remaining: float) -> Proposal | None:
        n = min(self.batch_size, len(self.pending), int((remaining + BUDGET_SLACK) // self.trial_cost()))
        if n < 1:
            return None
        batch, self.pending = self.pending[:n], self.pending[n:]
        return self.points(batch)

    def finished(self) -> bool:
        return not self.pending
