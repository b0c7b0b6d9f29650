"""metatune: tune momentum SGD's learning rate and momentum by exact meta-gradients.

The engine (``unroll``, ``hypergrad``, ``stability``), named problems (``objectives``),
tuning methods (``tune`` of a ``TuningJob``: metagrad, online, and Optuna's samplers; every
setting a ``Point``), vmapped populations (``train_population``) and the equal-budget
comparison (``compare``).
"""

from __future__ import annotations

from metatune import costs, dynamics, objectives, stability
from metatune.compare import Comparison, compare
from metatune.errors import InvalidArgumentError, MetatuneError
from metatune.hypergrad import HypergradResult, hypergrad
from metatune.job import Resources, TuningJob
from metatune.point import Point
from metatune.population import PopulationResult, train_population
from metatune.tuners import METHODS, Trial, TuneResult
from metatune.tuning import tune
from metatune.unroll import UnrollResult, unroll

__all__ = [
    "METHODS",
    "Comparison",
    "HypergradResult",
    "InvalidArgumentError",
    "MetatuneError",
    "Point",
    "PopulationResult",
    "Resources",
    "Trial",
    "TuneResult",
    "TuningJob",
    "UnrollResult",
    "compare",
    "costs",
    "dynamics",
    "hypergrad",
    "objectives",
    "stability",
    "train_population",
    "tune",
    "unroll",
]
