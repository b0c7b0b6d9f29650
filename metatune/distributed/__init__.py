"""Tuning jobs on Ray Tune: one entry point, metagrad as a native Ray Tune searcher.

* :func:`run` runs one :class:`~metatune.job.TuningJob` (any distributable method) as a Ray
  Tune experiment and returns the same :class:`~metatune.tuners.base.TuneResult` as
  in-process tuning; ``mt.tune(..., backend="ray")`` and ``metatune compare --backend ray``
  call it.
* :class:`MetagradSearch` drops into a Ray user's own ``tune.Tuner``; their trainable
  reports :func:`hypergrad_report` of a :func:`metatune.hypergrad` result.
* :func:`ensure_ray` / :func:`shutdown`: the embedded local Ray, or a cluster by address.

Needs the ``ray`` extra: ``pip install "metatune[ray]"``.
"""

from __future__ import annotations

from typing import Any

from metatune.distributed.cluster import default_root, ensure_ray, shutdown
from metatune.distributed.runner import run
from metatune.distributed.search import MetagradSearch, TunerSearch
from metatune.job import Resources
from metatune.distributed.trainable import METRIC
from metatune.tuners.evaluation import hypergrad_metrics


def hypergrad_report(hg: Any) -> dict[str, float]:
    """What a trainable under :class:`MetagradSearch` reports for a
    :class:`~metatune.hypergrad.HypergradResult`: ``value`` (ℓ_val), ``dvalue_dlr``,
    ``dvalue_dmomentum``, ``growth_rate``, ``amplification`` and ``diverged``."""
    return {"value": float(hg.value), **hypergrad_metrics(hg), "diverged": bool(hg.diverged)}


__all__ = ["METRIC", "MetagradSearch", "Resources", "TunerSearch",
           "default_root", "ensure_ray", "hypergrad_report", "run", "shutdown"]
