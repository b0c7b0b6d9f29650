"""What runs inside a Ray trial: evaluate one proposal and report one result per point.

A trial's config is a :class:`~metatune.tuners.evaluation.Proposal` (``to_config``). The trial rebuilds the job's objective on the
device Ray gave it (``ray.get_gpu_ids()``: Ray sets ``CUDA_VISIBLE_DEVICES``, so that GPU is
``cuda:0`` here; CPU trials run torch on one thread), keeps θ₀ and the minibatches for the
next trial of the same job in a reused actor, evaluates through the same
:func:`~metatune.tuners.evaluation.evaluate` as the in-process tuners, and reports each
point's validation loss, η, β, ρ, stability, cost, wall time and (metagrad) its
meta-gradient and growth rate. Trials never write anywhere but Ray's own results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from metatune import objectives
from metatune.objectives import Objective
from metatune.point import Point
from metatune.tuners.base import is_diverged
from metatune.tuners.evaluation import Context, Outcome, Proposal, evaluate
from metatune.tuners.groups import largest_spectral_radius
from metatune.tuners.optuna_base import told_value

METRIC = "objective"
"""The metric searchers minimise: log ℓ_val, or a penalty for a diverged run (Optuna's told value)."""

_CONTEXTS: dict[tuple[str, str], Context] = {}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one tuning job shares (sent once through Ray's object store)."""

    key: str
    objective: Objective
    registered: bool
    seed: int
    steps: int
    eigenvalues: tuple[float, ...]
    groups: tuple[str, ...] = ()


def is_registered(objective: Objective) -> bool:
    """Whether ``objective`` can be rebuilt from the registry by its name and parameters."""
    return objective.name in objectives.names() and set(objective.params) <= set(objectives.parameters(objective.name))


def assigned_device() -> str:
    """``cuda:0`` (the GPU Ray assigned) when this trial holds a GPU and CUDA works, else ``cpu``."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return "cuda:0"
    torch.set_num_threads(1)
    return "cpu"


def context_for(setup: TrialSetup, device: str) -> Context:
    """θ₀, minibatches and cost model of ``setup``'s job on ``device``, built once per worker process."""
    key = (setup.key, device)
    if key not in _CONTEXTS:
        objective = setup.objective
        if setup.registered and device != "cpu":
            objective = objectives.get(objective.name, **{**objective.params, "device": device})
        _CONTEXTS.clear()  # one job's data at a time per reused actor
        _CONTEXTS[key] = Context.build(objective, setup.seed, setup.steps)
    return _CONTEXTS[key]


def result_metrics(outcome: Outcome, index: int, evals: float, context: Context, setup: TrialSetup,
                   start: int | None, node: str | None = None) -> dict[str, Any]:
    """One point's report: the names Ray's ResultGrid and TensorBoard show (the point as
    :meth:`~metatune.point.Point.to_params`), and ``node``, the Ray node id of the trial."""
    rho = largest_spectral_radius(outcome.point, setup.eigenvalues)
    return {"node": node or "",
        "point": index, **outcome.point.to_params(), "value": outcome.value,
        METRIC: told_value(outcome.value, context.initial_value),
        "diverged": is_diverged(outcome.value, context.initial_value), "spectral_radius": rho,
        "stable": rho < 1.0, "gradient_evals": evals, "wall_time": outcome.seconds,
        "start": -1 if start is None else start, **outcome.metrics,
    }


def evaluate_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune function trainable (bind ``setup`` with ``tune.with_parameters``)."""
    import ray
    from ray import tune

    context = context_for(setup, assigned_device())
    proposal = Proposal.from_config(config)
    share = proposal.cost / len(proposal.points)
    node = ray.get_runtime_context().get_node_id()
    for index, outcome in enumerate(evaluate(context, proposal)):
        tune.report(result_metrics(outcome, index, share, context, setup, proposal.start, node))


OUTCOME_METRICS = ("final_train_loss", "dvalue_dlr", "dvalue_dmomentum", "growth_rate", "amplification")
"""The method-specific metrics an :class:`Outcome` carries back from a report (per group and
knot also ``dvalue_dlr[<prefix>]``, ``dvalue_dlr@<k>``, … and likewise ``dvalue_dmomentum``)."""


def outcome_from_result(result: dict[str, Any], point: Point) -> Outcome:
    """The :class:`Outcome` a trial reported for ``point`` (inverse of :func:`result_metrics`;
    the point is the proposal's own, not parsed back from the flat names)."""
    per_slot = tuple(f"{name}{mark}" for name in OUTCOME_METRICS[1:3] for mark in "[@")
    metrics = {k: float(v) for k, v in result.items() if k in OUTCOME_METRICS or k.startswith(per_slot)}
    return Outcome(point, float(result.get("value", math.nan)), float(result.get("wall_time", 0.0)), metrics,
                   node=str(result.get("node") or "") or None)


def reports_a_point(result: dict[str, Any] | None) -> bool:
    """Whether ``result`` is one of :func:`result_metrics`' reports (not Ray's bookkeeping)."""
    return bool(result) and METRIC in result
