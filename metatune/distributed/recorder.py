"""What the driver keeps of Ray trials, and the TensorBoard logger of their results.

:class:`InFlight` holds a job's proposals whose trials still run and the points each has
reported (:class:`~metatune.distributed.standing.LaneRecorder` hands them over and concludes
each trial once, when it ends: the one way results leave Ray). A retried trial re-reports
points it had already reported; each is concluded once. A trial that errors after its
retries is concluded with its reported points and one failed outcome, with its error
(:func:`error_text`), for each point it never reported; the job goes on.

:class:`FiniteTensorBoard` is Ray Tune's TensorBoard logger for the same results, given only
their finite numbers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from metatune.distributed.trainable import outcome_from_result, reports_a_point
from metatune.tuners.evaluation import Outcome, Proposal


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


def error_text(trial: Any) -> str:
    """The last line of the trial's latest error (its exception type and message), from the
    error file Ray writes in the trial's local folder."""
    try:
        with open(trial.error_file) as log:
            lines = [line.strip() for line in log if line.strip()]
    except (OSError, TypeError):
        lines = []
    return lines[-1][:500] if lines else "trial failed (no error recorded)"


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


def result_loggers() -> list[Callback]:
    """Ray Tune's JSON and CSV result files and :class:`FiniteTensorBoard` (where tensorboardX is
    installed): given to the experiment ahead of its recorder, so that a trial's files are
    written before its job is told it ended."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    loggers: list[Callback] = [JsonLoggerCallback(), CSVLoggerCallback()]
    try:
        loggers.append(FiniteTensorBoard())
    except ImportError:
        pass
    return loggers
