"""Tuning methods behind one interface: ``mt.tune(objective, method="metagrad", budget=…)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metatune import checks
from metatune._types import Params
from metatune.objectives import Objective, get
from metatune.tuners.base import Callback, Trial, Tuner, TuneResult
from metatune.tuners.cmaes import CmaEsTuner
from metatune.tuners.gp import GPTuner
from metatune.tuners.grid import GridTuner
from metatune.tuners.metagrad import MetagradTuner
from metatune.tuners.online import OnlineTuner
from metatune.tuners.random_search import RandomTuner
from metatune.tuners.tpe import TPETuner

METHODS: dict[str, type[Tuner]] = {
    tuner.name: tuner for tuner in (MetagradTuner, OnlineTuner, TPETuner, RandomTuner, GridTuner, CmaEsTuner, GPTuner)
}


BACKENDS = ("local", "ray")


def accepted_options(method: str) -> list[str]:
    """The keyword options ``tune(objective, method, ...)`` passes to ``method`` (``steps``,
    ``space`` and the method's own, e.g. metagrad's ``mode``).

    Example:
        >>> options = accepted_options("online")  # online fixes metagrad's mode, outer, screen, starts
        >>> "horizon" in options, "steps" in options, "mode" in options
        (True, True, False)
    """
    tuner = METHODS[checks.choice("method", method, sorted(METHODS))]
    fixed = {"objective", "budget", "seed", "callback", *getattr(tuner, "fixed_options", ())}
    return sorted(set(checks.constructor_keywords(tuner)) - fixed)


def check_groups(method: str, groups: str | Sequence[str] | None, params: Params) -> tuple[str, ...]:
    """The parameter groups ``tune(objective, method, groups=groups)`` searches for ``params``
    (θ₀ of the objective): () for None, else the prefixes; a ValueError naming ``groups`` where
    they do not fit ``params`` or ``method`` searches one η and one β (grid, online).

    Example:
        >>> import torch
        >>> check_groups("tpe", "layers", {"0.weight": torch.ones(1), "2.bias": torch.ones(1)})
        ('0', '2')
    """
    return METHODS[checks.choice("method", method, sorted(METHODS))].check_groups(groups, params)


def tune(objective: Objective | str, method: str = "metagrad", budget: float = 20_000, seed: int = 0,
         *, callback: Callback | None = None, backend: str = "local", **options: Any) -> TuneResult:
    """Search (η, β) for ``objective`` with ``method`` within ``budget`` gradient evaluations.

    Args:
        objective: an :class:`~metatune.objectives.Objective` or a registered name.
        method: one of :data:`METHODS` ("metagrad", "online", "tpe", "random", "grid", "cmaes", "gp").
        budget: gradient evaluations the search may spend (tangents and Hessian-vector
            products count as their multiples of a gradient).
        seed: seeds θ₀, the minibatches and the method.
        callback: receives each :class:`Trial` as it is recorded.
        backend: "local" (every trial in this process) or "ray" (trials on Ray Tune through
            :func:`metatune.distributed.run`, which also takes ``resources``, ``concurrency``,
            ``cancel``, ``ray_address``, ``storage`` and ``max_retries``).
        options: passed to the method (:func:`accepted_options`: ``steps``, ``space``,
            metagrad's ``mode``, …).

    Raises:
        ValueError: a bad argument, or an option the method does not take (the message
            lists those it does).

    Example:
        >>> res = tune("quadratic", method="random", budget=3_000, seed=0, steps=50)
        >>> len(res.trials), res.best_value < res.trials[0].value or res.best is res.trials[0]
        (58, True)
    """
    if isinstance(objective, str):
        objective = get(objective)
    checks.choice("method", method, sorted(METHODS))
    checks.choice("backend", backend, BACKENDS)
    if backend == "ray":
        from metatune.distributed import run

        return run(objective, method, budget, seed, callback=callback, **options)
    checks.keywords(f"tune(method={method!r})", options, accepted_options(method))
    return METHODS[method](objective, budget=budget, seed=seed, callback=callback, **options).run()


__all__ = ["BACKENDS", "METHODS", "Trial", "TuneResult", "Tuner", "accepted_options", "check_groups", "tune"]
