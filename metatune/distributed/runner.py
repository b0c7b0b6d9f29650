"""``run``: one tuning job as a Ray Tune experiment, returning the same TuneResult as in-process.

The job's tuner is built in the driver (θ₀, the cost model, the curvature for ρ, the
method's state); Ray trials evaluate proposals; results come back through one
:class:`~metatune.distributed.recorder.TrialRecorder` into that tuner, which charges the
budget and calls ``callback`` with each Trial. Sequential Optuna samplers (tpe, cmaes,
gp) run inside Ray Tune's ``OptunaSearch`` with the tuner's sampler and distributions,
``num_samples`` = the fixed-(η, β) runs the budget affords; metagrad, random and grid run
through :class:`~metatune.distributed.search.TunerSearch` (random and grid as vmapped
populations of up to 64 settings per Ray trial).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from metatune import checks
from metatune.errors import invalid
from metatune.objectives import Objective, get
from metatune.tuners import METHODS, Trial, TuneResult, accepted_options
from metatune.tuners.base import Tuner
from metatune.tuners.groups import flat_point
from metatune.tuners.optuna_base import OptunaTuner, told_value
from metatune.distributed.cluster import default_root, ensure_ray
from metatune.distributed.recorder import Cancel, CancelStopper, TrialRecorder
from metatune.distributed.search import TunerSearch
from metatune.distributed.trainable import METRIC, Job, evaluate_trial, is_registered


@dataclass(frozen=True)
class Resources:
    """What one Ray trial holds: CPUs and (possibly fractional) GPUs, e.g. gpu=0.25 lets four
    trials share a GPU."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        checks.number("resources.cpu", self.cpu, low=0.0, high=1024.0, low_open=True, note="CPUs per trial")
        checks.number("resources.gpu", self.gpu, low=0.0, high=64.0,
                      note="GPUs per trial; 0.25: four trials per GPU")

    @classmethod
    def parse(cls, value: Resources | dict[str, float] | None) -> Resources:
        if value is None or isinstance(value, Resources):
            return value or cls()
        if not isinstance(value, dict) or set(value) - {"cpu", "gpu"}:
            raise invalid("resources", value, "a dict with keys among 'cpu', 'gpu'")
        return cls(**value)


RUN_OPTIONS = ("resources", "concurrency", "cancel", "ray_address", "storage", "max_retries", "reuse_actors",
               "history")
"""The keyword arguments :func:`run` takes for itself; the rest go to the method."""


def build_tuner(objective: Objective, method: str, budget: float, seed: int,
                callback: Callable[[Trial], None] | None, options: dict[str, Any]) -> Tuner:
    """The driver-side tuner of a Ray job (its ledger and, unless Optuna runs it, its strategy)."""
    checks.choice("method", method, sorted(METHODS))
    if not METHODS[method].distributable:
        choices = sorted(m for m, t in METHODS.items() if t.distributable)
        raise invalid("method", method, f"one of {choices} on Ray ({method!r} runs in-process only)")
    checks.keywords(f"method {method!r} on Ray", options, accepted_options(method) + list(RUN_OPTIONS))
    return METHODS[method](objective, budget=budget, seed=seed, callback=callback, **options)


def search_for(tuner: Tuner, history: Sequence[Trial] = ()) -> tuple[Any, int]:
    """The Ray searcher and ``num_samples`` for ``tuner``'s method, its state rebuilt from the
    job's ``history`` when it resumes (Optuna's samplers are told the recorded trials)."""
    if isinstance(tuner, OptunaTuner) and tuner.batch_size == 1:
        from ray.tune.search.optuna import OptunaSearch

        tuner.keep(list(history))
        told = [t for t in history if t.status != "failed"]
        points = [flat_point(t.lr, t.momentum) for t in told]
        rewards = [told_value(t.value, tuner.initial_value) for t in told]
        samples = int((tuner.remaining() + 1e-9) // tuner.trial_cost())
        return OptunaSearch(space=tuner.distributions(), sampler=tuner.make_sampler(), metric=METRIC, mode="min",
                            points_to_evaluate=points or None, evaluated_rewards=rewards or None), samples
    return TunerSearch(tuner, tuner.replay(list(history))), -1


def run(objective: Objective | str, method: str = "metagrad", budget: float = 20_000, seed: int = 0, *,
        resources: Resources | dict[str, float] | None = None, concurrency: int = 1,
        callback: Callable[[Trial], None] | None = None, cancel: Cancel | None = None,
        ray_address: str | None = None, storage: str | Path | None = None, max_retries: int = 2,
        reuse_actors: bool = True, history: Sequence[Trial] = (), **options: Any) -> TuneResult:
    """Run one tuning job on Ray Tune; return when it is done or cancelled.

    Args:
        objective, method, budget, seed, options: as for :func:`metatune.tune`.
        resources: per trial, ``{"cpu": 1, "gpu": 0}`` by default.
        concurrency: trials running at once.
        callback: receives each :class:`~metatune.tuners.base.Trial` in the driver.
        cancel: a callable or ``threading.Event``; when true, the run stops within seconds
            (Ray polls it every 0.1 s) and the result is marked ``cancelled``.
        ray_address: a running cluster (default ``RAY_ADDRESS``, else an embedded local Ray).
        storage: folder for Ray's results (default ``<ray root>/results``).
        max_retries: how often a crashed trial is retried before it is recorded failed.
        history: trials this job recorded before it was interrupted: kept (not run again),
            charged to the budget, and told to the method so it goes on from there.
        reuse_actors: run a job's trials in the same worker processes (≈40 ms a trial instead
            of ≈2 s; the objective's data is built once per worker).

    Example:
        >>> res = run("quadratic", "random", budget=1_000, seed=0)  # doctest: +SKIP
    """
    objective = get(objective) if isinstance(objective, str) else objective
    resources = Resources.parse(resources)
    concurrency = checks.positive_int("concurrency", concurrency, note="trials running at once")
    max_retries = checks.integer("max_retries", max_retries, low=0)
    reuse_actors = checks.flag("reuse_actors", reuse_actors)
    if cancel is not None and not callable(cancel) and not hasattr(cancel, "is_set"):
        raise invalid("cancel", cancel, "None, a threading.Event or a function returning True to stop")
    registered = is_registered(objective)
    if resources.gpu > 0 and not registered:
        raise invalid("resources.gpu", resources.gpu, "0 for an objective that is not registered (GPU trials "
                                                      "rebuild the objective on their device by name)")
    tuner = build_tuner(objective, method, budget, seed, callback, options)
    tuner.curvature()  # for ρ in reports: outside the timed run, as in-process
    began = time.perf_counter()
    tuner.spent += tuner.prepare()
    job = Job(uuid.uuid4().hex, objective, registered, tuner.seed, tuner.steps, tuple(tuner.curvature().eigenvalues),
              tuner.groups)
    ensure_ray(ray_address)
    stopper = CancelStopper(cancel)
    searcher, samples = search_for(tuner, history)
    fit(job, tuner, searcher, samples, resources, concurrency, stopper, storage, max_retries, reuse_actors)
    result = tuner.result(time.perf_counter() - began)
    result.cancelled = stopper.cancelled
    return result


def fit(job: Job, tuner: Tuner, searcher: Any, samples: int, resources: Resources, concurrency: int,
        stopper: CancelStopper, storage: str | Path | None, max_retries: int, reuse_actors: bool = True) -> None:
    """Build the Ray Tune ``Tuner`` for ``job`` and run it to the end."""
    from ray import tune

    if samples == 0:
        return
    trainable = tune.with_resources(tune.with_parameters(evaluate_trial, job=job),
                                    {"cpu": resources.cpu, "gpu": resources.gpu})
    storage = Path(storage) if storage else default_root() / "results"
    name = f"{tuner.objective.name}-{tuner.name}-seed{tuner.seed}-{job.key[:8]}"
    tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=samples, max_concurrent_trials=concurrency,
                                    reuse_actors=reuse_actors, trial_dirname_creator=_dirname, trial_name_creator=_dirname),
        run_config=tune.RunConfig(name=name, storage_path=str(storage.absolute()), stop=stopper,
                                  callbacks=[TrialRecorder(tuner)], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_retries)),
    ).fit()


def _dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"

