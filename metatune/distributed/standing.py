"""One Ray Tune experiment per process that runs every job: its trial actors stay warm.

Starting a Ray Tune experiment costs about 1.6 s (Tune's set-up and its first trial actor's
process) and its first trial another 2 s (torch, metatune and the objective imported and
built in that actor): more than a small job's own work. A :class:`StandingExperiment`
starts once and runs each job given to it as a :class:`Lane`; with ``reuse_actors`` its
trial actors, torch imported, live across trials and jobs. It ends once it has had no job
for ``idle_seconds`` (or, between jobs, after :data:`MAX_TRIALS` trials, since Tune keeps every
trial it ran), and the next job starts another.

* :class:`LaneSearch`, the experiment's searcher, asks the lanes in turn (round robin) for a
  proposal, keeping each job's trials in flight at most its ``concurrency``, and parks
  trials in the slots it cannot fill so that their actors stay warm.
* :class:`LaneRecorder`, its one callback, hands each trial's reports to the lane that asked
  for it; the lane concludes the trial in its job's tuner (the one result path).
* :class:`LaneStopper` stops a trial at its next report once its job has ended (cancelled
  or failed), and every trial when the experiment is stopped.

A trial finds its job's :class:`~metatune.distributed.trainable.TrialSetup` by the lane's key
in Ray's internal key-value store (:func:`~metatune.distributed.trainable.publish`), where Ray
Tune keeps its own registered trainables: a job's data crosses to each actor once.
An error in one job (its callback raising, say) ends that job alone.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from metatune.job import Resources
from metatune.tuners.base import Tuner
from metatune.tuners.evaluation import Outcome
from metatune.distributed.recorder import DriverOnly, InFlight, error_text, result_loggers
from metatune.distributed.search import TunerSearch
from metatune.distributed.trainable import LANE, evaluate_trial, trial_resources, unpublish, wake

IDLE_SECONDS = 60.0
"""How long a standing experiment waits for another job before it ends (its actors with it)."""
MAX_TRIALS = 2_000
"""Trials after which a standing experiment takes no new job and ends once its jobs are done
(Tune keeps every trial of an experiment in memory and in its saved state)."""
PARK_SECONDS = 2.0
"""Longest a parked trial holds its actor before the searcher is asked again."""
MAX_LIVE_TRIALS = 1_024
"""Tune's own cap on trials running or waiting for resources (each job keeps to its concurrency)."""


@dataclass(eq=False)
class Lane:
    """One job in a standing experiment: its tuner, its searcher and the trials it has in flight.

    The experiment's thread asks and concludes under ``lock``; the job's own thread waits
    on ``done`` and may :meth:`close` it (a cancel) at any time: after that, nothing more
    reaches the tuner.
    """

    key: str
    label: str
    tuner: Tuner
    search: TunerSearch
    flight: InFlight
    concurrency: int
    resources: Resources
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None
    closed: bool = False
    exhausted: bool = False

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The config of this job's next trial, or None (nothing to run now, or ended)."""
        with self.lock:
            if self.closed or self.exhausted or len(self.flight.proposals) >= self.concurrency:
                return None
            try:
                config = self.search.suggest(trial_id)
            except Exception as error:  # noqa: BLE001 - this job fails, the others go on
                self._close(error)
                return None
            if config == Searcher.FINISHED:
                self.exhausted = True
                self._close_if_drained()
                return None
            if config is None:
                return None
            return {**config, LANE: self.key, "job": self.label, "cpu": self.resources.cpu,
                    "gpu": self.resources.gpu}

    def report(self, trial_id: str, result: dict[str, Any]) -> None:
        with self.lock:
            if not self.closed:
                self.flight.report(trial_id, result)

    def complete(self, trial_id: str, last_result: dict[str, Any] | None) -> None:
        """A trial that ended (or was stopped): conclude what it reported."""
        with self.lock:
            if self.closed:
                return
            try:
                if last_result:
                    self.flight.report(trial_id, last_result)
                proposal, reported = self.flight.pop(trial_id)
                if proposal is not None and reported:
                    self.tuner.conclude(proposal, [reported[i] for i in sorted(reported)])
            except Exception as error:  # noqa: BLE001
                self._close(error)
                return
            self._close_if_drained()

    def fail(self, trial_id: str, error: str) -> None:
        """A trial that failed after its retries: its reported points, the rest failed with ``error``."""
        with self.lock:
            if self.closed:
                return
            proposal, reported = self.flight.pop(trial_id)
            try:
                if proposal is not None:
                    self.tuner.conclude(proposal, [reported.get(i) or Outcome(point, float("nan"), 0.0, error=error)
                                                   for i, point in enumerate(proposal.points)])
            except Exception as failure:  # noqa: BLE001
                self._close(failure)
                return
            self._close_if_drained()

    def close(self, error: BaseException | None = None) -> None:
        """End the job now (a cancel, or the experiment gone): its trials still running are
        stopped at their next report and what they report is not recorded."""
        with self.lock:
            self._close(error)

    def _close(self, error: BaseException | None) -> None:
        if not self.closed:
            self.closed, self.error = True, error
            self.done.set()

    def _close_if_drained(self) -> None:
        if self.exhausted and not self.flight.proposals:
            self._close(None)


class LaneSearch(DriverOnly, Searcher):
    """The standing experiment's searcher: asks its lanes in turn; ``FINISHED`` once it has
    had no lane for ``idle_seconds``, has run :data:`MAX_TRIALS` trials and has no lane, or
    is stopped. It takes no lane after that.

    When no lane has a trial to run and fewer trials run than the last job ran at once, it
    parks a trial in the free slot (:func:`~metatune.distributed.trainable.park`), so that the
    actor a finished trial leaves is kept for it; handing out a lane's trial wakes the parked
    ones, whose actors then run the lane's pending trials."""

    _live_fields = ("lanes", "by_trial", "lock", "turn", "resources")

    def __init__(self, name: str, idle_seconds: float = IDLE_SECONDS) -> None:
        super().__init__()  # no metric: the lanes' tuners read the reports, and a parked trial reports none
        self.name, self.idle_seconds = name, idle_seconds
        self.lanes: dict[str, Lane] = {}
        self.by_trial: dict[str, Lane | None] = {}  # None: a parked trial
        self.resources: Resources | None = None
        self.lock = threading.Lock()
        self.turn = itertools.count()
        self.idle_since = time.monotonic()
        self.trials = self.wakes = self.warm = 0
        self.closed = self.stopping = False

    def add(self, lane: Lane) -> bool:
        """Take ``lane`` (False once this experiment is ending: start another)."""
        with self.lock:
            if self.closed or self.stopping or self.trials >= MAX_TRIALS:
                return False
            self.lanes[lane.key] = lane
            self.resources, self.warm = lane.resources, lane.concurrency
            return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        with self.lock:
            lanes = list(self.lanes.values())
        if lanes:
            first = next(self.turn) % len(lanes)
            for lane in lanes[first:] + lanes[:first]:
                config = lane.suggest(trial_id)
                if config is not None:
                    with self.lock:
                        if None in self.by_trial.values():  # parked trials end now, their actors reused
                            self.wakes += 1
                            wake(self.name, self.wakes)
                        self.by_trial[trial_id] = lane
                        self.trials += 1
                    return config
        with self.lock:
            for key in [key for key, lane in self.lanes.items() if lane.closed]:
                del self.lanes[key]
            if self.lanes:
                self.idle_since = time.monotonic()
            elif self.stopping or self.trials >= MAX_TRIALS or time.monotonic() - self.idle_since > self.idle_seconds:
                self.closed = True
                return Searcher.FINISHED
            if len(self.by_trial) >= self.warm or self.stopping or self.resources is None:
                return None
            self.by_trial[trial_id] = None  # a free slot: park a trial there (see trainable.park)
            return {"park": PARK_SECONDS, "experiment": self.name, "wakes": self.wakes, "job": "parked",
                    "cpu": self.resources.cpu, "gpu": self.resources.gpu}

    def lane_of(self, trial_id: str, forget: bool = False) -> Lane | None:
        with self.lock:
            return self.by_trial.pop(trial_id, None) if forget else self.by_trial.get(trial_id)

    def lane_or_park(self, trial_id: str) -> tuple[bool, Lane | None]:
        """Whether ``trial_id`` is one of this experiment's trials, and its lane (None: parked)."""
        with self.lock:
            return trial_id in self.by_trial, self.by_trial.get(trial_id)

    def busy(self) -> bool:
        with self.lock:
            return any(not lane.closed for lane in self.lanes.values())

    def close_all(self, error: BaseException) -> None:
        """Take no more lanes and end the open ones with ``error``."""
        with self.lock:
            self.closed = True
            lanes = list(self.lanes.values())
        for lane in lanes:
            lane.close(error)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Nothing: :class:`LaneRecorder` concludes the trial (one result path)."""


class LaneRecorder(DriverOnly, Callback):
    """Hands each trial's reports and its end to the lane that asked for it."""

    _live_fields = ("search",)

    def __init__(self, search: LaneSearch) -> None:
        self.search = search

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        lane = self.search.lane_of(trial.trial_id)
        if lane is not None:
            lane.report(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        lane = self.search.lane_of(trial.trial_id, forget=True)
        if lane is not None:
            lane.complete(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        lane = self.search.lane_of(trial.trial_id, forget=True)
        if lane is not None:
            lane.fail(trial.trial_id, error_text(trial))


class LaneStopper(DriverOnly, Stopper):
    """Stops a trial whose job has ended, and every trial once the experiment is stopped."""

    _live_fields = ("search",)

    def __init__(self, search: LaneSearch) -> None:
        self.search = search

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        known, lane = self.search.lane_or_park(trial_id)
        return not known or (lane is not None and lane.closed)

    def stop_all(self) -> bool:
        return self.search.stopping


class StandingExperiment:
    """A Ray Tune experiment running in a thread of its own until it ends (see the module)."""

    _names = itertools.count()

    def __init__(self, storage: Path, max_retries: int, reuse_actors: bool,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.storage, self.max_retries, self.reuse_actors = storage, max_retries, reuse_actors
        self.name = f"metatune-{os.getpid()}-{next(self._names)}-{uuid.uuid4().hex[:6]}"
        self.search = LaneSearch(self.name, idle_seconds)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, name=self.name, daemon=True)
        self.thread.start()

    @property
    def key(self) -> tuple[str, int, bool]:
        return str(self.storage), self.max_retries, self.reuse_actors

    def _fit(self) -> None:
        from ray import tune

        # Tune reads every trial's results back into a ResultGrid when the experiment ends; the
        # lanes have them already, and a trial parked and stopped before it reported has none.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        try:
            tune.Tuner(
                tune.with_resources(evaluate_trial, trial_resources),
                tune_config=tune.TuneConfig(search_alg=self.search, num_samples=-1,
                                            max_concurrent_trials=MAX_LIVE_TRIALS, reuse_actors=self.reuse_actors,
                                            trial_dirname_creator=_dirname, trial_name_creator=_dirname),
                run_config=tune.RunConfig(name=self.name, storage_path=str(self.storage.absolute()),
                                          stop=LaneStopper(self.search),
                                          callbacks=[*result_loggers(), LaneRecorder(self.search)], verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=self.max_retries)),
            ).fit()
        except BaseException as error:  # noqa: BLE001 - handed to every job still open
            self.error = error
        finally:
            self.search.close_all(self.error or RuntimeError("Ray Tune's experiment ended before the job did"))
            unpublish(f"wake:{self.name}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every trial, end the experiment and wait up to ``timeout`` seconds for it."""
        self.search.stopping = True
        self.thread.join(timeout)


def _dirname(trial: Any) -> str:
    return f"{trial.config.get('job', 'trial')}-{trial.trial_id}"


_experiments: list[StandingExperiment] = []
_registry_lock = threading.Lock()


def join(lane: Lane, storage: Path, max_retries: int, reuse_actors: bool,
         idle_seconds: float | None = None) -> StandingExperiment:
    """Give ``lane`` to this process's standing experiment for (``storage``, ``max_retries``,
    ``reuse_actors``), starting one where none takes it (ending after ``idle_seconds``
    without a job, default :data:`IDLE_SECONDS`). Idle experiments of other settings
    are stopped first (their warm actors hold resources)."""
    key = (str(storage), max_retries, reuse_actors)
    with _registry_lock:
        _experiments[:] = [e for e in _experiments if e.thread.is_alive()]
        for experiment in _experiments:
            if experiment.key != key and not experiment.search.busy():
                experiment.search.stopping = True
        for experiment in _experiments:
            if experiment.key == key and not experiment.search.stopping and experiment.search.add(lane):
                return experiment
        experiment = StandingExperiment(storage, max_retries, reuse_actors,
                                        IDLE_SECONDS if idle_seconds is None else idle_seconds)
        if not experiment.search.add(lane):  # pragma: no cover - a fresh experiment takes its first lane
            raise RuntimeError("a new Ray Tune experiment refused its first job")
        _experiments.append(experiment)
        return experiment


def stop_all(timeout: float = 30.0) -> None:
    """Stop every standing experiment of this process (before Ray itself is stopped)."""
    with _registry_lock:
        experiments, _experiments[:] = list(_experiments), []
    for experiment in experiments:
        experiment.search.stopping = True
    for experiment in experiments:
        experiment.stop(timeout)


def wait(lane: Lane, cancelled: Callable[[], bool], poll: float = 0.1) -> bool:
    """Wait until ``lane`` is done; returns True when ``cancelled()`` ended it first."""
    while not lane.done.wait(poll):
        if cancelled():
            lane.close()
            return True
    return False
