"""``metatune bench population``: K (η, β) settings trained at once against K ordinary runs.

:func:`metatune.population.train_population` (eager and through ``torch.compile``) against
K ordinary ``torch.optim.SGD`` runs one after another, timed on an evenly spaced subset of
the K settings and scaled linearly to K; speedup = loop seconds / population seconds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from metatune.bench.common import digits_mlp, ints, machine, measure_in_child, write_json

NAME, HELP = "population", "vmapped population training against a loop of torch.optim.SGD runs"


@dataclass(frozen=True)
class PopulationTask:
    """One measurement of ``metatune bench population``: ``method`` "loop" or "population"."""

    method: str
    population: int
    steps: int = 200
    hidden: tuple[int, ...] = (64,)
    batch_size: int = 128
    compile: bool = False
    compile_mode: str = "default"
    chunk_size: int | None = None
    loop_runs: int = 8
    device: str = "cpu"
    threads: int = 1
    seed: int = 0


def population_settings(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K random-search settings: η log-uniform in [1e-3, 1], β uniform in [0, 0.99)."""
    generator = torch.Generator().manual_seed(seed)
    lrs = 10 ** (-3 + 3 * torch.rand(k, generator=generator, dtype=torch.float64))
    return lrs, 0.99 * torch.rand(k, generator=generator, dtype=torch.float64)


def _timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _plain_sgd_run(
    model: torch.nn.Module, params: dict, data: object, batches: list, lr: float, momentum: float
) -> None:
    """One ordinary training run: ``model(x)``, ``backward()``, ``torch.optim.SGD.step()``."""
    model.load_state_dict(params, strict=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for idx in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        optimizer.step()


def measure_population(task: PopulationTask) -> dict:
    """Warm up (and compile) on 3 steps, then time T steps; the loop's time is scaled to all K runs.

    "loop" trains ``loop_runs`` evenly spaced members one after another, each an ordinary
    ``torch.optim.SGD`` run of the ``nn.Module``; "population" trains all K at once with
    :func:`metatune.population.train_population` (which also evaluates the K validation losses).
    """
    from metatune import datasets

    torch.set_num_threads(task.threads)
    model, params, train_loss, val_loss, batches = digits_mlp(task.hidden, task.batch_size, task.steps, task.device)
    lrs, momenta = population_settings(task.population, task.seed)
    if task.method == "loop":
        data = datasets.digits(seed=0, device=task.device)  # the data ``train_loss`` closes over
        members = torch.linspace(0, task.population - 1, min(task.loop_runs, task.population)).round().long().tolist()

        def run(steps: list) -> None:
            for i in members:
                _plain_sgd_run(model, params, data, steps, float(lrs[i]), float(momenta[i]))
    else:
        from metatune.population import train_population

        members = list(range(task.population))
        compile_ = task.compile_mode if task.compile else False

        def run(steps: list) -> object:
            return train_population(train_loss, val_loss, params, lrs, momenta, len(steps), steps,
                                    chunk_size=task.chunk_size, compile=compile_)
    warmup, _ = _timed(lambda: run(batches[:3]), task.device)
    seconds, result = _timed(lambda: run(batches), task.device)
    diverged = int(result.diverged.sum()) if result is not None else None
    return {**asdict(task), "timed_runs": len(members), "measured_seconds": seconds,
            "seconds": seconds * task.population / len(members), "warmup_seconds": warmup, "diverged": diverged}


def population_table(rows: list[dict]) -> str:
    """Rows as a Markdown table; speedup = SGD-loop seconds / population seconds at the same K."""
    loop = {row["population"]: row["seconds"] for row in rows if row["method"] == "loop"}
    lines = ["| K | method | seconds | speedup | warm-up s | diverged members |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row["method"] == "loop":
            method = f"SGD loop ({row['timed_runs']} of {row['population']} runs timed, scaled ×" \
                     f"{row['population'] / row['timed_runs']:g})"
        else:
            method = f"population, compile={row['compile_mode']!r}" if row["compile"] else "population (eager)"
        speedup = loop.get(row["population"], float("nan")) / row["seconds"]
        diverged = "" if row["diverged"] is None else row["diverged"]
        lines.append(f"| {row['population']} | {method} | {row['seconds']:.2f} | {speedup:.2f} "
                     f"| {row['warmup_seconds']:.1f} | {diverged} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--population", default="16,64,256", help="sizes K (comma-separated)")
    parser.add_argument("--steps", type=int, default=200, help="inner steps T")
    parser.add_argument("--hidden", default="64", help="hidden widths of the digits MLP (64-…-10)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loop-runs", type=int, default=8,
                        help="SGD runs timed per K (evenly spaced members), scaled linearly to K")
    parser.add_argument("--chunk-size", type=int, default=None, help="vmap chunk_size")
    parser.add_argument("--eager-only", action="store_true", help="skip the compiled rows")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode of the compiled rows; default 'default' on CPU, "
                             "'reduce-overhead' (CUDA graphs) on CUDA")


def main(args: argparse.Namespace) -> int:
    """``metatune bench population``: K settings trained at once against K ``torch.optim.SGD`` runs."""
    cuda = args.device.startswith("cuda")
    template = PopulationTask(
        "loop", 0, steps=args.steps, hidden=tuple(ints(args.hidden)), batch_size=args.batch_size,
        compile_mode=args.compile_mode or ("reduce-overhead" if cuda else "default"), chunk_size=args.chunk_size,
        loop_runs=args.loop_runs, device=args.device, threads=args.threads,
    )
    tasks = []
    for k in ints(args.population):
        tasks += [replace(template, population=k), replace(template, method="population", population=k)]
        tasks += [] if args.eager_only else [replace(template, method="population", population=k, compile=True)]
    n_params = sum(p.numel() for p in digits_mlp(template.hidden, 1, 1)[1].values())
    print(f"metatune bench population: MLP 64-{'-'.join(map(str, template.hidden))}-10 ({n_params} parameters), "
          f"digits, batch {template.batch_size}, T={args.steps}, float32, {args.device}, {args.threads} thread(s); "
          f"η log-uniform [1e-3, 1], β uniform [0, 0.99); "
          f"{machine()}", flush=True)
    from tqdm import tqdm

    rows = [measure_in_child(measure_population, task) for task in tqdm(tasks, desc="bench", unit="run")]
    print(population_table(rows))
    print("Seconds exclude the warm-up (3 steps, which includes compilation). The population's time includes "
          "its K validation losses; the loop's does not.")
    write_json(rows, args.json)
    return 0
