"""The one way results leave Ray: a driver-side Ray Tune callback, and the cancel stopper.

:class:`TrialRecorder` turns each reported point into the library's
:class:`~metatune.tuners.base.Trial` through the job's tuner (which counts the budget and
calls the job's callback: a progress bar, the service's database writer). A retried trial
re-reports points it had already reported; they are recorded once. A trial that errors
after its retries is recorded ``failed`` with its error, one Trial per point it never
reported, and the job goes on.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ray.tune import Callback
from ray.tune.stopper import Stopper

from metatune.distributed.search import DriverOnly
from metatune.distributed.trainable import outcome_from_result, reports_a_point
from metatune.tuners.base import Tuner
from metatune.tuners.evaluation import Outcome, Proposal

Cancel = Callable[[], bool] | threading.Event


class TrialRecorder(DriverOnly, Callback):
    """Records every point of every Ray trial once, in arrival order, in ``tuner``."""

    _live_fields = ("tuner",)

    def __init__(self, tuner: Tuner) -> None:
        self.tuner = tuner
        self.seen: dict[str, set[int]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        self._record(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if reports_a_point(trial.last_result):
            self._record(trial, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        proposal = Proposal.from_config(trial.config, default_cost=self.tuner.trial_cost(), groups=self.tuner.groups)
        error = _error_text(trial)
        seen = self.seen.setdefault(trial.trial_id, set())
        share = proposal.cost / len(proposal.points)
        for index, (lr, momentum) in enumerate(proposal.points):
            if index not in seen:
                seen.add(index)
                self.tuner.record_outcome(Outcome(lr, momentum, float("nan"), 0.0, error=error), share, proposal.start)

    def _record(self, trial: Any, result: dict[str, Any]) -> None:
        index, seen = int(result.get("point", 0)), self.seen.setdefault(trial.trial_id, set())
        if index in seen:
            return
        seen.add(index)
        start = int(result.get("start", -1))
        self.tuner.record_outcome(outcome_from_result(result, self.tuner.groups), float(result["gradient_evals"]),
                                  None if start < 0 else start)


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
