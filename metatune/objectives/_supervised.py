"""Shared plumbing of the supervised objectives: an ``nn.Module`` made functional.

A supervised objective is a model template, a train/validation :class:`~metatune.datasets.Split`
and a per-example loss. The losses call ``torch.func.functional_call`` on the template with
the parameters they are given, so they are pure functions of ``(params, batch)`` and
compose with ``torch.func`` (grad, jvp, vmap); a batch is a tensor of training-row indices
from :func:`metatune.datasets.minibatch_indices`, on the objective's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metatune._types import Params
from metatune.datasets import Split, minibatch_indices
from metatune import checks

Criterion = Callable[[Tensor, Tensor], Tensor]
"""``criterion(model output, targets) -> scalar``, e.g. ``torch.nn.functional.cross_entropy``."""

Penalty = Callable[[Params], Tensor]
"""An extra term added to the training loss only, e.g. ½ wd ‖W‖²."""


def seeded_init(build: Callable[[], nn.Module], dtype: torch.dtype, device: str | torch.device) -> Callable[[int], Params]:
    """``init_params(seed)``: the parameters of ``build()`` made under ``torch.manual_seed(seed)``.

    The module is built on the CPU inside :func:`torch.random.fork_rng` (the global RNG is left
    as it was), so a seed gives the same θ₀ on every device.
    """

    def init_params(seed: int) -> Params:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
        return {n: p.detach().to(dtype=dtype, device=device) for n, p in model.named_parameters()}

    return init_params


class Supervised:
    """Training and validation losses of ``model`` on ``data``, plus its seeded minibatches.

    Attributes:
        train_loss: ``criterion(model(x_train[batch]), y_train[batch]) + penalty(params)``.
        val_loss: ``criterion(model(x_val), y_val)`` over the whole validation split.
        batches: ``batches(seed, steps)``: ``steps`` index tensors of ``batch_size`` rows.
    """

    def __init__(
        self, model: nn.Module, data: Split, criterion: Criterion, batch_size: int, penalty: Penalty | None = None
    ) -> None:
        self.model = model
        self.data = data
        self.criterion = criterion
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.penalty = penalty

    def _loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.criterion(torch.func.functional_call(self.model, params, (x,)), y)

    def train_loss(self, params: Params, batch: Tensor) -> Tensor:
        loss = self._loss(params, self.data.x_train[batch], self.data.y_train[batch])
        return loss if self.penalty is None else loss + self.penalty(params)

    def val_loss(self, params: Params) -> Tensor:
        return self._loss(params, self.data.x_val, self.data.y_val)

    def batches(self, seed: int, steps: int) -> list[Tensor]:
        device = self.data.x_train.device
        indices = minibatch_indices(len(self.data.x_train), self.batch_size, steps, seed=seed)
        return [b.to(device) for b in indices]
