"""Named, seeded tuning problems and their registry (``mt.objectives.get("quadratic", kappa=1e3)``).

Built-ins: ``quadratic`` (rotated, exact optimum known), ``rosenbrock`` (non-convex valley),
``logistic-digits``, ``mlp-digits``, ``cnn-digits`` (scikit-learn digits classifiers),
``rnn-sequence`` (tanh RNN on the adding problem, where meta-gradients explode),
``mlp-regression`` (a tanh MLP on generated regression data), ``autoencoder-digits``
(a tanh autoencoder reconstructing the digits) and ``mlp-cancer`` (a tanh MLP on scikit-learn's
breast-cancer table, held out from tuning choices).
"""

from __future__ import annotations

from metatune.objectives import cancer as _cancer  # noqa: F401 - registers built-ins
from metatune.objectives import digits as _digits  # noqa: F401
from metatune.objectives import quadratic as _quadratic  # noqa: F401
from metatune.objectives import regression as _regression  # noqa: F401
from metatune.objectives import rosenbrock as _rosenbrock  # noqa: F401
from metatune.objectives import sequence as _sequence  # noqa: F401
from metatune.objectives.base import (
    ENTRY_POINT_GROUP,
    Objective,
    SearchSpace,
    describe,
    get,
    load_entry_points,
    names,
    parameters,
    register,
    unregister,
)

__all__ = ["ENTRY_POINT_GROUP", "Objective", "SearchSpace", "describe", "get", "load_entry_points", "names",
           "parameters", "register", "unregister"]
