"""The one way results leave Ray: a driver-side Ray Tune callback, and the cancel stopper.

:class:`TrialRecorder` collects each point a Ray trial reports and, when the trial ends,
concludes its proposal in the job's tuner (:meth:`~metatune.tuners.base.Tuner.conclude`:
the method is told, every point is recorded as a :class:`~metatune.tuners.base.Trial`,
the budget charged and the job's callback called: a progress bar, the service's database
writer). A retried trial re-reports points it had already reported; each is concluded
once. A trial that errors after its retries is concluded with its reported points and
one failed outcome, with its error, for each point it never reported; the job goes on.

:class:`FiniteTensorBoard` is Ray Tune's TensorBoard logger for the same results, given only
their finite numbers.
"""

from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.stopper import Stopper

from metatune.distributed.trainable import outcome_from_result, reports_a_point
from metatune.tuners.base import Tuner
from metatune.tuners.evaluation import Outcome, Proposal

Cancel = Callable[[], bool] | threading.Event


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


@dataclass
class InFlight:
    """The proposals of the Ray trials still running (by trial id) and the outcomes each has
    reported so far: the searcher adds, the recorder concludes."""

    proposals: dict[str, Proposal] = field(default_factory=dict)
    outcomes: dict[str, dict[int, Outcome]] = field(default_factory=dict)

    def add(self, trial_id: str, proposal: Proposal) -> None:
        self.proposals[trial_id], self.outcomes[trial_id] = proposal, {}

    def report(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.outcomes and reports_a_point(result):
            index = int(result.get("point", 0))
            self.outcomes[trial_id][index] = outcome_from_result(result, self.proposals[trial_id].points[index])

    def pop(self, trial_id: str) -> tuple[Proposal | None, dict[int, Outcome]]:
        return self.proposals.pop(trial_id, None), self.outcomes.pop(trial_id, {})


class TrialRecorder(DriverOnly, Callback):
    """Concludes every Ray trial's proposal once, in the order trials end, in ``tuner``."""

    _live_fields = ("tuner", "flight")

    def __init__(self, tuner: Tuner, flight: InFlight) -> None:
        self.tuner, self.flight = tuner, flight

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self.flight.report(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial that ended (or was stopped by a cancel): what it reported."""
        if trial.last_result:
            self.flight.report(trial.trial_id, trial.last_result)
        proposal, reported = self.flight.pop(trial.trial_id)
        if proposal is not None and reported:
            self.tuner.conclude(proposal, [reported[i] for i in sorted(reported)])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial that failed after its retries: its reported points, the rest failed."""
        proposal, reported = self.flight.pop(trial.trial_id)
        if proposal is None:
            return
        error = _error_text(trial)
        self.tuner.conclude(proposal, [reported.get(i) or Outcome(point, math.nan, 0.0, error=error)
                                       for i, point in enumerate(proposal.points)])


def _error_text(trial: Any) -> str:
    """The last line of the trial's latest error (its exception type and message), from the
    error file Ray writes in the trial's local folder."""
    try:
        with open(trial.error_file) as log:
            lines = [line.strip() for line in log if line.strip()]
    except (OSError, TypeError):
        lines = []
    return lines[-1][:500] if lines else "trial failed (no error recorded)"


class CancelStopper(DriverOnly, Stopper):
    """Stops the whole run when ``cancel()`` is true or the event is set (Ray polls it about
    every 0.1 s and stops running trials at once)."""

    _live_fields = ("cancel",)

    def __init__(self, cancel: Cancel | None) -> None:
        self.cancel = cancel
        self.cancelled = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        cancel = self.cancel
        if cancel is not None and not self.cancelled:
            self.cancelled = bool(cancel.is_set() if isinstance(cancel, threading.Event) else cancel())
        return self.cancelled


class FiniteTensorBoard(TBXLoggerCallback):
    """Ray Tune's TensorBoard logger, given each result without its numbers that are not
    finite. A diverged run's ℓ_val is inf; TensorBoard cannot plot it, and tensorboardX
    warns "NaN or Inf found in input tensor." once for each such number it is handed (Ray's
    own logger leaves out NaN only). With a logger of this kind among the run's callbacks,
    Ray adds no TensorBoard logger of its own."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        super().log_trial_result(iteration, trial, finite_only(result))


def finite_only(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its real numbers that are inf or NaN (nested dicts likewise).

    Example:
        >>> finite_only({"value": float("inf"), "lr": 0.1, "done": True, "config": {"x": float("nan")}})
        {'lr': 0.1, 'done': True, 'config': {}}
    """
    return {key: finite_only(value) if isinstance(value, dict) else value for key, value in result.items()
            if not (isinstance(value, numbers.Real) and not math.isfinite(value))}


def tensorboard_loggers() -> list[Callback]:
    """:class:`FiniteTensorBoard`, or none where tensorboardX is not installed."""
    try:
        return [FiniteTensorBoard()]
    except ImportError:
        return []

