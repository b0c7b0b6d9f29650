"""Type aliases shared across the library."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from torch import Tensor

Params = dict[str, Tensor]
"""Model parameters by name, as ``dict(model.named_parameters())``."""

Batch = Any
"""One minibatch, passed unchanged to ``train_loss``."""

Batches = Union[Sequence[Batch], None]
"""At least ``steps`` batches, or None to pass ``batch=None`` at every step."""

TrainLoss = Callable[[Params, Batch], Tensor]
"""``train_loss(params, batch) -> scalar tensor``."""

ValLoss = Callable[[Params], Tensor]
"""``val_loss(params) -> scalar tensor``."""

Scalar = Union[float, Tensor]
"""A scalar hyperparameter: a Python number or a 0-d tensor."""

HyperArg = Union[Scalar, Mapping[str, Scalar]]
"""A hyperparameter as given by a user: one scalar, or scalars keyed by name prefix."""
