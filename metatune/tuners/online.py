"""``online``: adapt (η, β) inside each training run from short-horizon meta-gradients.

Hypergradient descent (Baydin et al., 2018), generalised to β and to K-step horizons:
every K steps, the last K steps are differentiated in reverse mode (the stretch that was
trained anyway, so the only extra cost is the backward pass), Adam moves
u = (log η, log(1 − β)) on log ℓ_val, and training continues from where it is. The same
stability guard as ``metagrad`` caps η. Each run of T steps is one trial (its value is
ℓ_val at the end; its (η, β) those reached at the end); the next run starts from them.

The meta-gradient over K ≪ T steps is biased towards what helps *now* (short-horizon
bias, Wu et al., 2018): greedy choices of η that lower the loss in K steps can be far
from the η best for the whole run. ``examples/short_horizon_bias.py`` measures it.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import numpy as np

from metatune import checks
from metatune.hypergrad import hypergrad
from metatune.objectives import Objective
from metatune.tuners.adam import adam_direction, adam_init, adam_update
from metatune.tuners.evaluation import Proposal
from metatune.tuners.metagrad import MetagradTuner
from metatune.tuners.records import LOG_FLOOR, Trial


class OnlineTuner(MetagradTuner):
    """Adapt (η, β) every ``horizon`` steps inside each run; see the module docstring."""

    name = "online"
    supports_groups = False
    schedule_shapes = ()  # it adapts one (η, β) as the run goes
    distributable = False  # each run starts where the last one ended: one sequential chain

    fixed_options: ClassVar[tuple[str, ...]] = ("mode", "outer", "screen", "starts")
    """metagrad's options this method sets itself (reverse mode, Adam, one chain, no screening)."""

    def __init__(self, objective: Objective, *, horizon: int = 10, meta_lr: float = 0.05,
                 **kwargs: Any) -> None:
        accepted = set(checks.constructor_keywords(OnlineTuner)) - set(self.fixed_options)
        checks.keywords("method 'online'", kwargs, accepted)
        horizon = checks.positive_int("horizon", horizon, note="steps between hyperparameter updates")
        super().__init__(objective, meta_lr=meta_lr, mode="reverse", outer="adam", screen=0, starts=1, **kwargs)
        self.horizon = min(horizon, self.steps)

    def run_cost(self) -> float:
        """One adaptive run: a reverse meta-gradient over each K-step stretch of the T steps."""
        full, rest = divmod(self.steps, self.horizon)
        per_stretch = self.costs.hypergrad
        return full * per_stretch("reverse", self.horizon) + (per_stretch("reverse", rest) if rest else 0.0)

    def prepare(self) -> float:
        """λ_max at θ₀, for the guard and the theory start the first run begins at."""
        return self.curvature().gradient_evals

    def replay(self, history: list[Trial]) -> Proposal | None:
        """A resumed run keeps ``history`` as it is: each run starts where the last ended, so
        the chain is not rebuilt from it."""
        self.keep(history)
        return None

    def search(self, pending: Proposal | None = None) -> None:
        """Adaptive runs, each from the (η, β) the last one ended at, until the budget is spent."""
        u = self.project(self.theory_point())
        while True:
            u = self.adaptive_run(u)

    def adaptive_run(self, u: np.ndarray) -> np.ndarray:
        """Train T steps from θ₀ adapting u every K steps; record the run; return the final u."""
        spent = self.run_cost()
        self.charge(spent)
        began = time.perf_counter()
        begin = self.decode_point(u)
        state, adam = u, adam_init(len(u))
        params, velocity, hg = self.params, None, None
        for first in range(0, self.steps, self.horizon):
            k = min(self.horizon, self.steps - first)
            batches = None if self.batches is None else self.batches[first : first + k]
            point = self.decode_point(state)
            hg = hypergrad(self.objective.train_loss, self.objective.val_loss, params, point.lr, point.momentum, k,
                           batches, mode="reverse", velocity=velocity, costs=self.costs)
            if hg.diverged:
                break
            if hg.value > LOG_FLOOR:  # ∇ log ℓ = 0 at ℓ = 0: what a run reports there is rounding
                lr, momentum = point.lrs[0], point.momenta[0]  # (chains.log_loss_gradient)
                adam = adam_update(adam, np.array([hg.lr * lr, -hg.momentum * (1.0 - momentum)]) / hg.value)
                state = self.project(state - self.meta_lr * adam_direction(adam))
            params, velocity = hg.params, hg.velocity
        value = math.inf if hg is None or hg.diverged else hg.value
        self.record(point, value, spent, time.perf_counter() - began, horizon=self.horizon,
                    start_lr=begin.lrs[0], start_momentum=begin.momenta[0])
        if not math.isfinite(value):  # back off: restart from a smaller learning rate
            return self.project(u - np.array([math.log(2.0), 0.0]))
        return self.project(state)
