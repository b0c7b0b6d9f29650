"""``run``: one :class:`~metatune.job.TuningJob` on Ray Tune, returning the same TuneResult as
in-process.

The job's tuner is built in the driver (θ₀, the cost model, the curvature for ρ, the
method's state) and runs the same lifecycle as in-process (:class:`~metatune.tuners.base.Tuner`:
start, ask, conclude, finish). The job runs as a lane of this process's standing Ray Tune
experiment (:mod:`metatune.distributed.standing`), whose trial actors outlive the job: a
:class:`~metatune.distributed.search.TunerSearch` asks the tuner for proposals, Ray trials
evaluate them (random and grid as vmapped populations of up to 64 settings per trial;
Optuna's samplers ask their own study, as in-process), and the experiment's one recorder
concludes each proposal in the tuner, which tells the method, charges the budget and calls
``callback`` with each Trial.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from metatune import checks
from metatune.errors import invalid
from metatune.job import TuningJob
from metatune.objectives import Objective
from metatune.tuners import Callback, Trial, TuneResult, build_tuner, tuner_class
from metatune.distributed import standing
from metatune.distributed.cluster import default_root, ensure_ray
from metatune.distributed.recorder import InFlight
from metatune.distributed.search import TunerSearch
from metatune.distributed.trainable import TrialSetup, is_registered, publish, unpublish

Cancel = Callable[[], bool] | threading.Event


def run(job: TuningJob, *, objective: Objective | None = None, callback: Callback | None = None,
        cancel: Cancel | None = None, ray_address: str | None = None, storage: str | Path | None = None,
        max_retries: int = 2, reuse_actors: bool = True, history: Sequence[Trial] = ()) -> TuneResult:
    """Run ``job`` on Ray Tune (its ``resources`` per trial, ``concurrency`` trials at once);
    return when it is done or cancelled. Several threads may run jobs at once: they share
    the standing experiment and its actors.

    Args:
        job: what to run (its ``backend`` is not read: this is the Ray backend).
        objective: the objective to use instead of building the job's from the registry.
        callback: receives each :class:`~metatune.tuners.base.Trial` in the driver.
        cancel: a callable or ``threading.Event``; when true, the run returns within 0.1 s,
            marked ``cancelled``, and its running trials stop at their next report (what
            they report then is not recorded).
        ray_address: a running cluster (default ``RAY_ADDRESS``, else an embedded local Ray).
        storage: folder for Ray's results (default ``<ray root>/results``).
        max_retries: how often a crashed trial is retried before it is recorded failed.
        reuse_actors: run trials, of this job and the next, in the same worker processes
            (≈20 ms a trial instead of ≈2 s; torch is imported once per worker).
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
    flight = InFlight()
    lane = standing.Lane(setup.key, f"{tuner.objective.name}-{tuner.name}-seed{tuner.seed}-{setup.key[:8]}", tuner,
                         TunerSearch(tuner, flight, pending), flight, job.concurrency, job.resources)
    publish(setup)
    try:
        standing.join(lane, Path(storage) if storage else default_root() / "results", max_retries, reuse_actors)
        cancelled = standing.wait(lane, lambda: is_cancelled(cancel))
    finally:
        lane.close()
        unpublish(setup.key)
    if lane.error is not None:
        raise lane.error
    return tuner.finish(cancelled)


def is_cancelled(cancel: Cancel | None) -> bool:
    """Whether ``cancel`` (None, an event or a callable) says stop."""
    if cancel is None:
        return False
    return bool(cancel.is_set() if isinstance(cancel, threading.Event) else cancel())
