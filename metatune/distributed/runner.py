"""``run``: one :class:`~metatune.job.TuningJob` as a Ray Tune experiment, returning the same
TuneResult as in-process.

The job's tuner is built in the driver (θ₀, the cost model, the curvature for ρ, the
method's state) and runs the same lifecycle as in-process (:class:`~metatune.tuners.base.Tuner`:
start, ask, conclude, finish): a :class:`~metatune.distributed.search.TunerSearch` asks it
for proposals, Ray trials evaluate them (random and grid as vmapped populations of up to 64
settings per trial; Optuna's samplers ask their own study, as in-process), and one
:class:`~metatune.distributed.recorder.TrialRecorder` concludes each proposal in the tuner,
which tells the method, charges the budget and calls ``callback`` with each Trial.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metatune import checks
from metatune.errors import invalid
from metatune.job import Resources, TuningJob
from metatune.objectives import Objective
from metatune.tuners import Callback, Trial, TuneResult, build_tuner, tuner_class
from metatune.tuners.base import Tuner
from metatune.distributed.cluster import default_root, ensure_ray
from metatune.distributed.recorder import Cancel, CancelStopper, InFlight, TrialRecorder, tensorboard_loggers
from metatune.distributed.search import TunerSearch
from metatune.distributed.trainable import TrialSetup, evaluate_trial, is_registered


def run(job: TuningJob, *, objective: Objective | None = None, callback: Callback | None = None,
        cancel: Cancel | None = None, ray_address: str | None = None, storage: str | Path | None = None,
        max_retries: int = 2, reuse_actors: bool = True, history: Sequence[Trial] = ()) -> TuneResult:
    """Run ``job`` on Ray Tune (its ``resources`` per trial, ``concurrency`` trials at once);
    return when it is done or cancelled.

    Args:
        job: what to run (its ``backend`` is not read: this is the Ray backend).
        objective: the objective to use instead of building the job's from the registry.
        callback: receives each :class:`~metatune.tuners.base.Trial` in the driver.
        cancel: a callable or ``threading.Event``; when true, the run stops within seconds
            (Ray polls it every 0.1 s) and the result is marked ``cancelled``.
        ray_address: a running cluster (default ``RAY_ADDRESS``, else an embedded local Ray).
        storage: folder for Ray's results (default ``<ray root>/results``).
        max_retries: how often a crashed trial is retried before it is recorded failed.
        reuse_actors: run a job's trials in the same worker processes (≈40 ms a trial instead
            of ≈2 s; the objective's data is built once per worker).
        history: trials this job recorded before it was interrupted: kept (not run again),
            charged to the budget, and told to the method so it goes on from there.

    Example:
        >>> res = run(TuningJob("quadratic", "random", budget=1_000))  # doctest: +SKIP
    """
    checks.instance("job", job, TuningJob, "a metatune.TuningJob")
    max_retries = checks.integer("max_retries", max_retries, low=0)
    reuse_actors = bool(checks.flag("reuse_actors", reuse_actors))
    if cancel is not None and not callable(cancel) and not hasattr(cancel, "is_set"):
        raise invalid("cancel", cancel, "None, a threading.Event or a function returning True to stop")
    if not tuner_class(job.method).distributable:
        raise invalid("method", job.method, f"a method Ray can run ({job.method!r} runs in-process only)")
    tuner = build_tuner(job, objective, callback)
    registered = objective is None or is_registered(objective)
    if job.resources.gpu > 0 and not registered:
        raise invalid("resources.gpu", job.resources.gpu, "0 for an objective that is not registered (GPU trials "
                                                          "rebuild the objective on their device by name)")
    pending = tuner.start(history)
    setup = TrialSetup(uuid.uuid4().hex, tuner.objective, registered, tuner.seed, tuner.steps,
                       tuple(tuner.curvature().eigenvalues), tuner.groups)
    ensure_ray(ray_address)
    stopper, flight = CancelStopper(cancel), InFlight()
    fit(setup, tuner, TunerSearch(tuner, flight, pending), TrialRecorder(tuner, flight), job.resources,
        job.concurrency, stopper, storage, max_retries, reuse_actors)
    return tuner.finish(stopper.cancelled)


def fit(setup: TrialSetup, tuner: Tuner, searcher: TunerSearch, recorder: TrialRecorder, resources: Resources,
        concurrency: int, stopper: CancelStopper, storage: str | Path | None, max_retries: int,
        reuse_actors: bool = True) -> None:
    """Build the Ray Tune ``Tuner`` for the job and run it to the end (results also to
    TensorBoard, their finite numbers only: :class:`~metatune.distributed.recorder.FiniteTensorBoard`)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(evaluate_trial, setup=setup),
                                    {"cpu": resources.cpu, "gpu": resources.gpu})
    storage = Path(storage) if storage else default_root() / "results"
    name = f"{tuner.objective.name}-{tuner.name}-seed{tuner.seed}-{setup.key[:8]}"
    tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=concurrency,
                                    reuse_actors=reuse_actors, trial_dirname_creator=_dirname,
                                    trial_name_creator=_dirname),
        run_config=tune.RunConfig(name=name, storage_path=str(storage.absolute()), stop=stopper,
                                  callbacks=[recorder, *tensorboard_loggers()], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_retries)),
    ).fit()


def _dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"
