"""Ray Tune searchers over metatune's ask/tell methods.

:class:`TunerSearch` lets Ray drive any :class:`~metatune.tuners.base.Tuner` (metagrad's
chains, Optuna's samplers over the tuner's own study, random search and the grid as
vmapped populations): ``suggest`` asks for a proposal that fits the budget not yet
committed (:meth:`~metatune.tuners.base.Tuner.propose`: never a point the job has recorded);
:class:`~metatune.distributed.standing.LaneRecorder` concludes it when its trial ends. :class:`MetagradSearch` is metagrad for a Ray user's own trainable:
it proposes ``{"lr", "momentum"}`` and turns the reported meta-gradient into the next
proposal with the same chains (:mod:`metatune.tuners.chains`) the tuner uses.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from metatune import checks
from metatune.errors import invalid
from metatune.objectives import SearchSpace
from metatune.point import MetaGradient, Point
from metatune.tuners.base import Tuner
from metatune.tuners.chains import MetagradChains, Step, check_options
from metatune.tuners.evaluation import Proposal
from metatune.tuners.records import BUDGET_SLACK
from metatune.distributed.recorder import DriverOnly, InFlight
from metatune.distributed.trainable import METRIC


class TunerSearch(DriverOnly, Searcher):
    """Ray Tune searcher asking ``tuner`` for proposals within its remaining budget.

    ``flight``: the proposals in flight, shared with the job's
    :class:`~metatune.distributed.standing.Lane` (which removes each as its trial ends). ``pending``: a proposal to run first (one a resumed job had asked but
    not recorded). Returns ``Searcher.FINISHED`` once the budget not yet committed affords no
    run, or nothing more fits and no trial is in flight (the trials in flight still end and
    are recorded); None while the method waits for results (e.g. every metagrad chain has a
    step running).
    """

    _live_fields = ("tuner", "flight", "pending")

    def __init__(self, tuner: Tuner, flight: InFlight, pending: Proposal | None = None) -> None:
        super().__init__(metric=METRIC, mode="min")
        self.tuner, self.flight, self.pending = tuner, flight, pending
        self.limit = tuner.remaining()
        self.committed = 0.0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        proposal, self.pending = self.pending or self.tuner.propose(self.limit - self.committed), None
        if proposal is None:
            exhausted = self.limit - self.committed + BUDGET_SLACK < self.tuner.trial_cost()  # not even one run fits
            return Searcher.FINISHED if exhausted or not self.flight.proposals or self.tuner.finished() else None
        self.committed += proposal.cost
        self.flight.add(trial_id, proposal)
        return proposal.to_config()

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Nothing: the recorder concludes the trial (one result path)."""


class MetagradSearch(DriverOnly, Searcher):
    """metagrad as a Ray Tune searcher for your own trainable.

    Each start is one chain of meta-gradient steps; chains run as concurrent trials. Your
    trainable receives ``config["lr"]``, ``config["momentum"]`` (and ``config["start"]``, the
    chain, and ``config["attempt"]``, its step count),
    computes :func:`metatune.hypergrad` there and reports
    :func:`metatune.distributed.hypergrad_report` of it (the validation loss ``value`` with
    ``dvalue_dlr``, ``dvalue_dmomentum``, ``growth_rate`` and ``amplification``). Trial
    count and stopping are Ray's (``num_samples``, stoppers). Restoring a stopped Ray
    experiment does not restore the chains (they start again from ``starts``).

    Args:
        space: the box (η, β) stays in (default: η ∈ [1e-4, 1], β ∈ [0, 0.99]).
        starts: the chains' first (lr, momentum), or how many to place on a scrambled Sobol
            design of the space (η log-uniform).
        outer, meta_lr, max_amplification: as for ``mt.tune(..., method="metagrad")``.
        lr_cap: ``lr_cap(momentum)``, the largest η allowed (e.g. from a critical lr).
        metric: the reported loss to minimise.
        seed: seeds the Sobol starts.
    """

    def __init__(self, space: SearchSpace | None = None, starts: list[tuple[float, float]] | int = 2, *,
                 outer: str = "bfgs", meta_lr: float = 0.03, max_amplification: float = 1e8,
                 lr_cap: Any = None, metric: str = "value", seed: int = 0) -> None:
        checks.instance("metric", metric, str, "the name of a reported metric, e.g. 'value'")
        super().__init__(metric=metric, mode="min")
        space = checks.instance("space", space, SearchSpace, "a SearchSpace", optional=True) or SearchSpace()
        check_options(outer, meta_lr, max_amplification)
        seed = checks.integer("seed", seed, low=0)
        if isinstance(starts, numbers.Integral):
            count = checks.positive_int("starts", starts, note="or a list of (lr, momentum)")
            starts = sobol_points(space, count, seed)
        self.chains = MetagradChains(space, start_points(starts), outer=outer, meta_lr=meta_lr, lr_cap=lr_cap,
                                     max_amplification=max_amplification)
        self.steps: dict[str, Step] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        step = self.chains.ask()
        if step is None:
            return Searcher.FINISHED if self.chains.finished() else None
        self.steps[trial_id] = step
        attempt = self.chains.starts[step.start].attempts
        return {**step.point.to_params(), "start": step.start, "attempt": attempt}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        step = self.steps.pop(trial_id, None)
        if step is None:
            return
        result = result or {}
        value = math.nan if error else float(result.get(self.metric, math.nan))
        gradient = MetaGradient((float(result.get("dvalue_dlr", math.nan)),),
                                (float(result.get("dvalue_dmomentum", math.nan)),),
                                amplification=float(result.get("amplification", 1.0)))
        self.chains.tell(step, value, gradient, diverged=error or bool(result.get("diverged", False)))


def start_points(starts: Any) -> list[Point]:
    """A user's ``starts``, a non-empty list of (lr, momentum) pairs, as points."""
    if isinstance(starts, (str, bytes)) or not isinstance(starts, (list, tuple)) or not starts:
        raise invalid("starts", starts, "a non-empty list of (lr, momentum) pairs")
    points = []
    for i, pair in enumerate(starts):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise invalid(f"starts[{i}]", pair, "an (lr, momentum) pair")
        points.append(Point.scalar(checks.learning_rate(f"starts[{i}][0]", pair[0]),
                                   checks.momentum(f"starts[{i}][1]", pair[1])))
    return points


def sobol_points(space: SearchSpace, n: int, seed: int) -> list[tuple[float, float]]:
    """``n`` scrambled Sobol points of the space (η log-uniform when the space says so)."""
    from scipy.stats import qmc

    with warnings.catch_warnings():  # any n is fine for starts: balance needs powers of two
        warnings.simplefilter("ignore", UserWarning)
        unit = qmc.Sobol(d=2, scramble=True, seed=seed).random(n)
    if space.lr_log:
        lrs = np.exp(np.log(space.lr_low) + unit[:, 0] * (np.log(space.lr_high) - np.log(space.lr_low)))
    else:
        lrs = space.lr_low + unit[:, 0] * (space.lr_high - space.lr_low)
    momenta = space.momentum_low + unit[:, 1] * (space.momentum_high - space.momentum_low)
    return [(float(lr), float(m)) for lr, m in zip(lrs, momenta)]
