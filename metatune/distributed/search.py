"""Ray Tune searchers over metatune's ask/tell methods.

:class:`TunerSearch` lets Ray drive any :class:`~metatune.tuners.base.Tuner` strategy
(metagrad's chains, random search and the grid as vmapped populations): ``suggest`` asks
for a proposal that fits the budget not yet committed, ``on_trial_complete`` tells the
tuner what the trial's points gave. :class:`MetagradSearch` is metagrad for a Ray user's
own trainable: it proposes ``{"lr", "momentum"}`` and turns the reported meta-gradient into
the next proposal with the same chains (:mod:`metatune.tuners.chains`) the tuner uses.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from metatune import checks
from metatune.objectives import SearchSpace
from metatune.tuners.base import Tuner
from metatune.tuners.chains import MetagradChains, Step, check_options
from metatune.tuners.evaluation import Outcome, Proposal
from metatune.distributed.trainable import METRIC, outcome_from_result, reports_a_point


class DriverOnly:
    """Objects Ray pickles into its experiment folder but only ever uses live in the driver:
    the live state (tuners, events, callables) stays out of the pickle."""

    _live_fields: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._live_fields}

    def save(self, checkpoint_path: str) -> None:
        """A job resumes from the library's own records (its trials), not from Ray's searcher
        checkpoints: nothing to save."""

    def restore(self, checkpoint_path: str) -> None:
        """See :meth:`save`."""


class TunerSearch(DriverOnly, Searcher):
    """Ray Tune searcher driving ``tuner.ask``/``tuner.tell`` within ``tuner``'s remaining budget.

    ``pending``: a proposal to run first (one a resumed job had asked but not recorded).
    Returns ``Searcher.FINISHED`` when nothing more fits and no trial is in flight; None
    while the method waits for results (e.g. every metagrad chain has a step running).
    """

    _live_fields = ("tuner", "pending")

    def __init__(self, tuner: Tuner, pending: Proposal | None = None) -> None:
        super().__init__(metric=METRIC, mode="min")
        self.tuner, self.pending = tuner, pending
        self.limit = tuner.remaining()
        self.committed = 0.0
        self.proposals: dict[str, Proposal] = {}
        self.outcomes: dict[str, dict[int, Outcome]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        proposal, self.pending = self.pending or self.tuner.ask(self.limit - self.committed), None
        if proposal is None:
            return Searcher.FINISHED if not self.proposals or self.tuner.finished() else None
        self.committed += proposal.cost
        self.proposals[trial_id], self.outcomes[trial_id] = proposal, {}
        return proposal.to_config()

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.outcomes and reports_a_point(result):
            self.outcomes[trial_id][int(result.get("point", 0))] = outcome_from_result(result, self.tuner.groups)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self.proposals:
            return
        if result and not error:
            self.on_trial_result(trial_id, result)
        proposal, got = self.proposals.pop(trial_id), self.outcomes.pop(trial_id)
        outcomes = [got.get(i) or Outcome(lr, m, math.nan, 0.0, error="trial failed")
                    for i, (lr, m) in enumerate(proposal.points)]
        self.tuner.complete(proposal, outcomes)


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
        self.chains = MetagradChains(space, list(starts), outer=outer, meta_lr=meta_lr, lr_cap=lr_cap,
                                     max_amplification=max_amplification)
        self.steps: dict[str, Step] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        step = self.chains.ask()
        if step is None:
            return Searcher.FINISHED if self.chains.finished() else None
        self.steps[trial_id] = step
        attempt = self.chains.starts[step.start].attempts
        return {"lr": step.lr, "momentum": step.momentum, "start": step.start, "attempt": attempt}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        step = self.steps.pop(trial_id, None)
        if step is None:
            return
        result = result or {}
        value = math.nan if error else float(result.get(self.metric, math.nan))
        self.chains.tell(step, value, float(result.get("dvalue_dlr", math.nan)),
                         float(result.get("dvalue_dmomentum", math.nan)),
                         float(result.get("amplification", 1.0)), diverged=error or bool(result.get("diverged", False)))


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
