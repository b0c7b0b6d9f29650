"""metatune: tune momentum SGD's learning rate and momentum by exact meta-gradients."""

from __future__ import annotations

from metatune import dynamics, stability
from metatune.errors import InvalidArgumentError, MetatuneError
from metatune.hypergrad import HypergradResult, hypergrad
from metatune.unroll import UnrollResult, unroll

__all__ = [
    "HypergradResult",
    "InvalidArgumentError",
    "MetatuneError",
    "UnrollResult",
    "dynamics",
    "hypergrad",
    "stability",
    "unroll",
]
