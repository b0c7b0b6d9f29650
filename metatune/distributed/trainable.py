"""What runs inside a Ray trial: evaluate one proposal and report one result per point.

A trial's config is a :class:`~metatune.tuners.evaluation.Proposal` (``to_config``) with the
key of its job (:data:`LANE`) and the resources it holds. The trial fetches the job's
:class:`TrialSetup` by that key from Ray's internal key-value store (:func:`publish`), rebuilds
the job's objective on the device Ray gave it (``ray.get_gpu_ids()``: Ray sets
``CUDA_VISIBLE_DEVICES``, so that GPU is ``cuda:0`` here; CPU trials run torch on one thread),
keeps θ₀ and the minibatches of the last few jobs in its (reused) actor, evaluates through the same
:func:`~metatune.tuners.evaluation.evaluate` as the in-process tuners, and reports each
point's validation loss, η, β, ρ, stability, cost, wall time and (metagrad) its
meta-gradient and growth rate. Trials never write anywhere but Ray's own results.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
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

LANE = "lane"
"""The config key naming a trial's job (its :class:`TrialSetup`'s key)."""
SETUP_NAMESPACE = "metatune-setups"
"""The namespace of Ray's internal key-value store that holds the setups of running jobs."""
KEPT_CONTEXTS = 4
"""Jobs whose θ₀ and minibatches an actor keeps (jobs running side by side share actors)."""

_CONTEXTS: OrderedDict[tuple[str, str], Context] = OrderedDict()
_SETUPS: OrderedDict[str, TrialSetup] = OrderedDict()


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


def publish(setup: TrialSetup) -> None:
    """Make ``setup`` available to trials on every node of the Ray this process is connected to."""
    from ray import cloudpickle
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(setup.key, cloudpickle.dumps(setup), overwrite=True, namespace=SETUP_NAMESPACE)


def unpublish(key: str) -> None:
    """Drop a job's setup once it has ended (when Ray is still there)."""
    from ray.experimental import internal_kv

    if internal_kv._internal_kv_initialized():
        internal_kv._internal_kv_del(key, namespace=SETUP_NAMESPACE)


def setup_for(key: str) -> TrialSetup:
    """The :class:`TrialSetup` :func:`publish` made available under ``key`` (kept per actor)."""
    if key not in _SETUPS:
        from ray import cloudpickle
        from ray.experimental import internal_kv

        blob = internal_kv._internal_kv_get(key, namespace=SETUP_NAMESPACE)
        if blob is None:
            raise RuntimeError(f"job {key} has ended: its setup is no longer published")
        _SETUPS[key] = cloudpickle.loads(blob)
        while len(_SETUPS) > KEPT_CONTEXTS:
            _SETUPS.popitem(last=False)
    _SETUPS.move_to_end(key)
    return _SETUPS[key]


def trial_resources(config: dict[str, Any]) -> Any:
    """What a trial holds: its job's ``cpu`` and ``gpu`` (Ray Tune's resources of a config)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory({"cpu": float(config.get("cpu", 1.0)), "gpu": float(config.get("gpu", 0.0))})


def context_for(setup: TrialSetup, device: str) -> Context:
    """θ₀, minibatches and cost model of ``setup``'s job on ``device``, built once per worker
    process and kept for the last :data:`KEPT_CONTEXTS` jobs."""
    key = (setup.key, device)
    if key not in _CONTEXTS:
        objective = setup.objective
        if setup.registered and device != "cpu":
            objective = objectives.get(objective.name, **{**objective.params, "device": device})
        _CONTEXTS[key] = Context.build(objective, setup.seed, setup.steps)
        while len(_CONTEXTS) > KEPT_CONTEXTS:
            _CONTEXTS.popitem(last=False)
    _CONTEXTS.move_to_end(key)
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


def wake(experiment: str, wakes: int) -> None:
    """End the trials ``experiment`` parked before its ``wakes``-th call (the count is kept in
    Ray's internal key-value store under the experiment's name)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(f"wake:{experiment}", str(wakes), overwrite=True, namespace=SETUP_NAMESPACE)


def park(experiment: str, seconds: float, wakes: int, poll: float = 0.01) -> None:
    """Hold this actor for up to ``seconds``, ending as soon as ``experiment`` calls
    :func:`wake` a ``wakes + 1``-th time.

    A standing experiment with nothing to run parks as many trials as its last job ran at
    once, so that their actors stay warm and Ray Tune keeps stepping (with no trial running
    it waits for its searcher in steps of a second). The searcher wakes them when it hands
    out the next job's trials: those are pending by the time the parked trials end, so Tune
    gives them the parked trials' actors."""
    from ray.experimental import internal_kv

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and \
            int(internal_kv._internal_kv_get(f"wake:{experiment}", namespace=SETUP_NAMESPACE) or 0) <= wakes:
        time.sleep(poll)


def evaluate_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: evaluate the proposal in ``config`` for the job its
    :data:`LANE` names, reporting each point (or :func:`park`, for a ``park`` config)."""
    import ray
    from ray import tune

    if config.get("park"):
        park(str(config["experiment"]), float(config["park"]), int(config["wakes"]))
        tune.report({"parked": 1.0})
        return
    setup = setup_for(config[LANE])
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
