"""``metatune bench hypergrad|population``: cost against plain ``torch.optim.SGD`` training.

Each figure is measured in a fresh child process (so peak memory is its own): wall time
divided by the wall time of a plain ``torch.optim.SGD`` loop of the same T on the same
model, data and batches, and the peak memory above the resident size at the start of the
run (CPU: RSS sampled every 2 ms; CUDA: ``torch.cuda.max_memory_allocated``).

``metatune bench population``: K (η, β) settings trained at once by
:func:`metatune.population.train_population` (eager and through ``torch.compile``) against
K ordinary ``torch.optim.SGD`` runs one after another, timed on an evenly spaced subset of
the K settings and scaled linearly to K; speedup = loop seconds / population seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch


@dataclass(frozen=True)
class Task:
    """One measurement: ``method`` ("sgd", "forward", "reverse", "truncated", "torchopt", "higher")."""

    method: str
    steps: int
    hidden: tuple[int, ...] = (512, 128)
    batch_size: int = 256
    truncate: int | None = None
    compile: bool = False
    device: str = "cpu"
    threads: int = 1
    lr: float = 0.05
    momentum: float = 0.9


def _problem(task: Task):  # noqa: ANN202 - returns the pieces of one benchmark problem
    from metatune import datasets

    data = datasets.digits(seed=0, device=task.device)
    torch.manual_seed(0)
    sizes = (64, *task.hidden)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 10)).to(task.device)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [b.to(task.device) for b in datasets.minibatch_indices(len(data.x_train), task.batch_size, task.steps)]

    def train_loss(p, idx):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (data.x_train[idx],)), data.y_train[idx])

    def val_loss(p):  # noqa: ANN001, ANN202
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (data.x_val,)), data.y_val)

    return model, params, train_loss, val_loss, batches


def _runner(task: Task) -> Callable[[], object]:
    """A function that performs the task once (after any one-time setup)."""
    model, params, train_loss, val_loss, batches = _problem(task)
    if task.method == "sgd":
        return lambda: _sgd_loop(model, params, train_loss, batches, task)
    if task.method in ("torchopt", "higher"):
        peer = _torchopt_hypergrad if task.method == "torchopt" else _higher_hypergrad
        return lambda: peer(model, params, train_loss, val_loss, batches, task)
    from metatune import hypergrad

    options = {"truncate": task.truncate} if task.method == "truncated" else {}
    return lambda: hypergrad(
        train_loss, val_loss, params, task.lr, task.momentum, task.steps, batches,
        mode=task.method, compile=task.compile, **options,
    )


def _sgd_loop(model, params, train_loss, batches, task):  # noqa: ANN001, ANN202
    """The reference: plain training with ``torch.optim.SGD``, no meta-gradient."""
    model.load_state_dict(params, strict=False)
    named = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    for batch in batches:
        optimizer.zero_grad()
        train_loss(named, batch).backward()
        optimizer.step()
    return float(train_loss(named, batches[-1]).detach())


def _torchopt_hypergrad(model, params, train_loss, val_loss, batches, task):  # noqa: ANN001, ANN202
    """∂ℓ_val/∂η through torchopt's functional SGD (its momentum is a float: no ∂/∂β)."""
    import torchopt

    lr = torch.tensor(task.lr, device=task.device, requires_grad=True)
    optimizer = torchopt.sgd(lr=lr, momentum=task.momentum)
    names, values = list(params), tuple(v.clone().requires_grad_() for v in params.values())
    state = optimizer.init(values)
    for batch in batches:
        grads = torch.autograd.grad(train_loss(dict(zip(names, values)), batch), values, create_graph=True)
        updates, state = optimizer.update(grads, state, inplace=False)
        values = torchopt.apply_updates(values, updates, inplace=False)
    return torch.autograd.grad(val_loss(dict(zip(names, values))), lr)


def _higher_hypergrad(model, params, train_loss, val_loss, batches, task):  # noqa: ANN001, ANN202
    """∂ℓ_val/∂(η, β) through higher's differentiable SGD with ``override=``."""
    import higher

    lr = torch.tensor(task.lr, device=task.device, requires_grad=True)
    momentum = torch.tensor(task.momentum, device=task.device, requires_grad=True)
    names, values = list(params), [v.clone().requires_grad_() for v in params.values()]
    optimizer = torch.optim.SGD(values, lr=task.lr, momentum=task.momentum)
    diff = higher.optim.get_diff_optim(optimizer, values, override={"lr": [lr], "momentum": [momentum]})
    for batch in batches:
        values = diff.step(train_loss(dict(zip(names, values)), batch), params=values)
    return torch.autograd.grad(val_loss(dict(zip(names, values))), (lr, momentum))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler:
    """Peak resident memory above the start, sampled by a thread (CPU runs)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.start, self.peak = interval, _resident_bytes(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _resident_bytes() - self.start)
            time.sleep(self.interval)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes() - self.start)


def measure(task: Task) -> dict:
    """Run ``task`` once to warm up (and compile), then once measured: seconds and peak MB."""
    torch.set_num_threads(task.threads)
    warm = _runner(replace(task, steps=min(task.steps, 3), truncate=min(task.truncate or 3, 3)))
    warm()
    run = _runner(task)
    if task.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - start_bytes
    else:
        with _PeakSampler() as sampler:
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        peak = sampler.peak
    return {**asdict(task), "seconds": seconds, "peak_mb": peak / 2**20}


def measure_in_child(task, fn: Callable[..., dict] = measure) -> dict:  # noqa: ANN001
    """``fn(task)`` (default :func:`measure`) in a fresh spawned process, so each peak is the run's own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (task,))


def plan(steps_forward: list[int], steps_reverse: list[int], truncate: int, peers: list[int], *,
         compile: bool = False, **common) -> list[Task]:  # noqa: A002, ANN003
    """The tasks of ``metatune bench hypergrad``: SGD baselines, our modes, the peers."""
    every_t = sorted(set(steps_forward) | set(steps_reverse) | set(peers))
    tasks = [Task("sgd", t, **common) for t in every_t]
    tasks += [Task("forward", t, **common) for t in steps_forward]
    tasks += [Task("forward", t, compile=True, **common) for t in steps_forward if compile]
    tasks += [Task("reverse", t, **common) for t in steps_reverse]
    tasks += [Task("truncated", t, truncate=truncate, **common) for t in steps_forward if t >= truncate]
    tasks += [Task(peer, t, **common) for t in peers for peer in ("torchopt", "higher")]
    return tasks


def table(rows: list[dict]) -> str:
    """Rows as a Markdown table with time relative to the SGD loop of the same T."""
    sgd = {row["steps"]: row["seconds"] for row in rows if row["method"] == "sgd"}
    lines = ["| method | T | K | compile | seconds | × SGD loop | peak MB above start |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = row["seconds"] / sgd[row["steps"]] if row["steps"] in sgd else float("nan")
        lines.append(
            f"| {row['method']} | {row['steps']} | {row['truncate'] or ''} | {'yes' if row['compile'] else ''} "
            f"| {row['seconds']:.2f} | {ratio:.2f} | {row['peak_mb']:.1f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["hypergrad", "population"], help="which benchmark")
    parser.add_argument("--forward-steps", default="100,1000,10000", help="T for forward mode (comma-separated)")
    parser.add_argument("--reverse-steps", default="100,1000", help="T for reverse mode")
    parser.add_argument("--truncate", type=int, default=100, help="K for truncated mode")
    parser.add_argument("--peer-steps", default="100,1000", help="T for torchopt and higher ('' to skip)")
    parser.add_argument("--hidden", default=None,
                        help="hidden widths of the digits MLP (64-…-10); default 512,128 (hypergrad), 64 (population)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 (hypergrad), 128 (population)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="forward mode through torch.compile")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--population", default="16,64,256", help="population: sizes K (comma-separated)")
    parser.add_argument("--steps", type=int, default=200, help="population: inner steps T")
    parser.add_argument("--loop-runs", type=int, default=8,
                        help="population: SGD runs timed per K (evenly spaced members), scaled linearly to K")
    parser.add_argument("--chunk-size", type=int, default=None, help="population: vmap chunk_size")
    parser.add_argument("--eager-only", action="store_true", help="population: skip the compiled rows")
    parser.add_argument("--compile-mode", default=None,
                        help="population: torch.compile mode of the compiled rows; default 'default' on CPU, "
                             "'reduce-overhead' (CUDA graphs) on CUDA")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(args: argparse.Namespace) -> int:
    if args.what == "population":
        return population_main(args)
    common = dict(hidden=tuple(_ints(args.hidden or "512,128")), batch_size=args.batch_size or 256, device=args.device,
                  threads=args.threads, compile=args.compile)
    tasks = plan(_ints(args.forward_steps), _ints(args.reverse_steps), args.truncate, _ints(args.peer_steps), **common)
    n_params = sum(p.numel() for p in _problem(Task("sgd", 1, **common))[1].values())
    print(f"metatune bench hypergrad: MLP 64-{'-'.join(map(str, common['hidden']))}-10 ({n_params} parameters), "
          f"digits, batch {common['batch_size']}, float32, {args.device}, {args.threads} thread(s); "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}", flush=True)
    rows = []
    from tqdm import tqdm

    for task in tqdm(tasks, desc="bench", unit="run"):
        rows.append(measure_in_child(task))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


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
    model, params, train_loss, val_loss, batches = _problem(
        Task("sgd", task.steps, hidden=task.hidden, batch_size=task.batch_size, device=task.device))
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


def population_main(args: argparse.Namespace) -> int:
    """``metatune bench population``: K settings trained at once against K ``torch.optim.SGD`` runs."""
    cuda = args.device.startswith("cuda")
    template = PopulationTask(
        "loop", 0, steps=args.steps, hidden=tuple(_ints(args.hidden or "64")), batch_size=args.batch_size or 128,
        compile_mode=args.compile_mode or ("reduce-overhead" if cuda else "default"), chunk_size=args.chunk_size,
        loop_runs=args.loop_runs, device=args.device, threads=args.threads,
    )
    tasks = []
    for k in _ints(args.population):
        tasks += [replace(template, population=k), replace(template, method="population", population=k)]
        tasks += [] if args.eager_only else [replace(template, method="population", population=k, compile=True)]
    n_params = sum(p.numel() for p in _problem(Task("sgd", 1, hidden=template.hidden))[1].values())
    print(f"metatune bench population: MLP 64-{'-'.join(map(str, template.hidden))}-10 ({n_params} parameters), "
          f"digits, batch {template.batch_size}, T={args.steps}, float32, {args.device}, {args.threads} thread(s); "
          f"η log-uniform [1e-3, 1], β uniform [0, 0.99); "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}", flush=True)
    from tqdm import tqdm

    rows = [measure_in_child(task, measure_population) for task in tqdm(tasks, desc="bench", unit="run")]
    print(population_table(rows))
    print("Seconds exclude the warm-up (3 steps, which includes compilation). The population's time includes "
          "its K validation losses; the loop's does not.")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0
