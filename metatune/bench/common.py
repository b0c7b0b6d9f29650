"""What the benchmarks share: the digits MLP problem, peak-memory sampling, child processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import threading
import time
from typing import Callable

import torch

from metatune._types import Params, TrainLoss, ValLoss


def digits_mlp(hidden: tuple[int, ...], batch_size: int, steps: int, device: str = "cpu",
               ) -> tuple[torch.nn.Module, Params, TrainLoss, ValLoss, list[torch.Tensor]]:
    """(model, θ₀, train_loss, val_loss, batches): a tanh MLP 64-hidden-10 on digits, seeded."""
    from metatune import datasets

    data = datasets.digits(seed=0, device=device)
    torch.manual_seed(0)
    sizes = (64, *hidden)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 10)).to(device)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [b.to(device) for b in datasets.minibatch_indices(len(data.x_train), batch_size, steps)]

    def train_loss(p, idx):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (data.x_train[idx],)), data.y_train[idx])

    def val_loss(p):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (data.x_val,)), data.y_val)

    return model, params, train_loss, val_loss, batches


def machine() -> str:
    """The processor and torch build, for the first line of a benchmark's output."""
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def write_json(rows: list[dict], path: str | None) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(rows, out, indent=2)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Peak resident memory above the start, sampled by a thread (CPU runs)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.start, self.peak = interval, resident_bytes(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes() - self.start)
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes() - self.start)


def measure_in_child(fn: Callable[..., dict], task: object) -> dict:
    """``fn(task)`` in a fresh spawned process, so each peak is the run's own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (task,))


