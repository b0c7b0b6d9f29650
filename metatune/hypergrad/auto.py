"""``mode="auto"``: reverse mode when its graph fits a memory budget, checkpointed when only
that fits, forward mode otherwise.

Reverse mode keeps, for each of the T differentiated steps, the tensors autograd saves
for the backward pass through a step built with ``create_graph`` (parameters, velocity,
activations of the forward and of the gradient computation). :func:`stored_bytes_per_step`
measures that footprint s once, with ``torch.autograd.graph.saved_tensors_hooks`` around
one step, so the choice needs no guess about the model. Then, for T steps:

    reverse:       T · s                  (one gradient + one backward per step)
    checkpointed:  (⌈T/K⌉ + K) · s,  K = ⌈√T⌉   (+ one recomputed forward per step)
    forward:       flat in T, but k tangents per step (k = 2 for (η, β))

and ``costs.hypergrad`` prices each in gradient evaluations: reverse is the cheapest,
checkpointed next (about T more), forward the most at k = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metatune import dynamics
from metatune._types import Batch, Params, TrainLoss
from metatune.unroll import autograd_gradient, make_step

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes the automatic choice lets reverse mode's stored graph take (2 GiB)."""


@dataclass(frozen=True)
class Plan:
    """How to take a meta-gradient: ``mode`` and, for reverse, ``checkpoint`` (None: store all)."""

    mode: str
    checkpoint: int | None = None


def stored_bytes_per_step(train_loss: TrainLoss, params: Params, batch: Batch = None) -> int:
    """Bytes autograd saves for the backward pass through one more differentiable inner step.

    Two steps run under ``saved_tensors_hooks``; the second step's new storages are the
    per-step footprint (what the first step also saves but the second reuses, such as data
    or constants captured by the loss, is stored once, not T times).

    Example:
        >>> loss = lambda p, b=None: ((p["w"] @ torch.ones(3)) ** 2).sum()
        >>> stored_bytes_per_step(loss, {"w": torch.zeros(2, 3)}) > 0
        True
    """
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    state = dynamics.init_state(leaves)
    lr, momentum = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (0.01, 0.5))
    hyper = dynamics.Hyperparameters({n: lr for n in leaves}, {n: momentum for n in leaves})
    step = make_step(autograd_gradient(train_loss, create_graph=True), dynamics.heavy_ball)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        after_one = step(leaves, state, hyper, batch)
        first = dict(saved)
        step(after_one[0], after_one[1], hyper, batch)
    return sum(size for pointer, size in saved.items() if pointer not in first)


def resolve(mode: str, train_loss: TrainLoss, params: Params, steps: int, batch: Batch = None,
            memory_budget: float = DEFAULT_MEMORY_BUDGET) -> Plan:
    """``mode`` as it will run: "auto" resolved by :func:`choose` on the graph of a step
    measured on ``batch``; any other mode as given (no checkpointing)."""
    if mode != "auto":
        return Plan(mode)
    return choose(steps, stored_bytes_per_step(train_loss, params, batch), memory_budget)


def choose(steps: int, bytes_per_step: int, memory_budget: float = DEFAULT_MEMORY_BUDGET) -> Plan:
    """The cheapest mode whose memory fits ``memory_budget`` (module docstring).

    Example:
        >>> choose(100, 1_000_000, memory_budget=1e9)
        Plan(mode='reverse', checkpoint=None)
        >>> choose(10_000, 1_000_000, memory_budget=1e9)
        Plan(mode='reverse', checkpoint=100)
        >>> choose(10_000, 100_000_000, memory_budget=1e9)
        Plan(mode='forward', checkpoint=None)
    """
    if steps * bytes_per_step <= memory_budget:
        return Plan("reverse")
    every = math.ceil(math.sqrt(steps))
    if (math.ceil(steps / every) + every) * bytes_per_step <= memory_budget:
        return Plan("reverse", every)
    return Plan("forward")
