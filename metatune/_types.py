"""Type aliases shared across the library."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from torch import Tensor

if TYPE_CHECKING:
    from metatune.schedule import Knots

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

HyperValue = Union[Scalar, "Knots"]
"""One group's hyperparameter: a scalar, a tensor of one value per step, or Knots."""

HyperArg = Union[HyperValue, Mapping[str, HyperValue]]
"""A hyperparameter as given by a user: one value (or path), or values keyed by name prefix."""
