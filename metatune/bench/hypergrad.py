"""``metatune bench hypergrad``: meta-gradient cost against plain ``torch.optim.SGD`` training.

Each figure is measured in a fresh child process (so peak memory is its own), after a
warm-up call on 3 steps (which also compiles, with ``--compile``; its seconds are reported):

* × SGD loop: wall time over T steps of a warm ``torch.optim.SGD`` loop on the same model,
  data and batches, timed in the same process right before (the faster of ``foreach=True``
  and the for-loop implementation, so a slow baseline cannot flatter a ratio);
* × floor: wall time over T × the arithmetic floor of a step, in gradients (forward:
  1 + k · backward step, a backward pass through the gradient per tangent; reverse:
  1 + backward step; the FLOP multiple from :func:`metatune.costs.measure` on this model)
  times a warm plain gradient's wall time;
* peak memory above the resident size at the start of the run (CPU: RSS sampled every
  2 ms; CUDA: ``torch.cuda.max_memory_allocated``).

The peers torchopt and higher compute the same reverse-mode meta-gradient; the table after
the rows divides each peer's × SGD loop by ours.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from metatune import checks
from metatune.bench.common import PeakSampler, digits_mlp, resident_bytes, ints, machine, measure_in_child, write_json

NAME, HELP = "hypergrad", "meta-gradient time and memory against a plain torch.optim.SGD loop"

PEERS = ("torchopt", "higher")
HYPERPARAMETERS = 2
"""k: the bench differentiates one (η, β)."""


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


def _runner(task: Task) -> Callable[[], object]:
    """A function that performs the task once (after any one-time setup)."""
    model, params, train_loss, val_loss, batches = digits_mlp(task.hidden, task.batch_size, task.steps, task.device)
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


def _sgd_loop(model, params, train_loss, batches, task, foreach=True):  # noqa: ANN001, ANN202
    """The reference: plain training with ``torch.optim.SGD``, no meta-gradient."""
    model.load_state_dict(params, strict=False)
    named = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum, foreach=foreach)
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


BASELINE_STEPS = 1000
"""Steps of the SGD loop timed next to each task (scaled to the task's T)."""


def _timed_run(run: Callable[[], object], device: str) -> tuple[float, float]:
    """Seconds and peak bytes above the start of one call of ``run``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - start_bytes
    with PeakSampler() as sampler:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    return seconds, sampler.peak


def _sgd_seconds_per_step(task: Task) -> float:
    """A warm plain SGD loop's seconds per step on min(T, 1000) steps: the faster of
    ``foreach=True`` and ``foreach=False``."""
    baseline = replace(task, method="sgd", steps=min(task.steps, BASELINE_STEPS), truncate=None, compile=False)
    model, params, train_loss, _, batches = digits_mlp(baseline.hidden, baseline.batch_size, baseline.steps,
                                                      baseline.device)
    per_step = []
    for foreach in (True, False):
        _sgd_loop(model, params, train_loss, batches[:3], baseline, foreach)
        seconds, _ = _timed_run(lambda f=foreach: _sgd_loop(model, params, train_loss, batches, baseline, f),
                                baseline.device)
        per_step.append(seconds / baseline.steps)
    return min(per_step)


def _gradient_seconds(task: Task, repeat: int = 20) -> float:
    """A warm plain gradient's wall time (autograd, one batch), averaged over ``repeat``."""
    _, params, train_loss, _, batches = digits_mlp(task.hidden, task.batch_size, 1, task.device)
    leaves = [p.clone().requires_grad_() for p in params.values()]
    names = list(params)

    def gradient() -> None:
        torch.autograd.grad(train_loss(dict(zip(names, leaves)), batches[0]), leaves)

    for _ in range(3):
        gradient()
    seconds, _ = _timed_run(lambda: [gradient() for _ in range(repeat)], task.device)
    return seconds / repeat


def floor_gradients(task: Task) -> float | None:
    """The arithmetic floor of one step in gradients (module docstring); None for a peer or
    the SGD loop, and for truncated mode, whose steps are mostly plain."""
    from metatune.costs import measure as measure_costs

    if task.method not in ("forward", "reverse"):
        return None
    _, params, train_loss, _, batches = digits_mlp(task.hidden, task.batch_size, 1, task.device)
    costs = measure_costs(train_loss, params, batches[0])
    if task.method == "forward":
        return 1.0 + HYPERPARAMETERS * costs.backward_step
    return 1.0 + costs.backward_step


def measure(task: Task) -> dict:
    """Warm up (and compile) on 3 steps, time the plain SGD loop and a plain gradient, then
    time the task once: seconds, × SGD loop, × floor, peak MB above the start and the
    process's peak resident MB (CPU). Timing the baselines in the same process, right
    before the task, keeps the ratios honest when the machine's load drifts."""
    torch.set_num_threads(task.threads)
    start = time.perf_counter()
    _runner(replace(task, steps=min(task.steps, 3), truncate=min(task.truncate or 3, 3)))()
    first_call = time.perf_counter() - start
    sgd_per_step = _sgd_seconds_per_step(task)
    gradient = _gradient_seconds(task)
    floor = floor_gradients(task)
    run = _runner(task)
    start_resident = resident_bytes()
    seconds, peak = _timed_run(run, task.device)
    return {**asdict(task), "seconds": seconds, "first_call_seconds": first_call,
            "sgd_seconds_per_step": sgd_per_step, "ratio": seconds / (sgd_per_step * task.steps),
            "gradient_seconds": gradient, "floor_gradients": floor,
            "floor_ratio": None if floor is None else seconds / (task.steps * floor * gradient),
            "peak_mb": peak / 2**20, "peak_resident_mb": (start_resident + peak) / 2**20}


def median_row(runs: list[dict]) -> dict:
    """The run with the median × SGD loop (the lower middle one for an even count), with the
    smallest and largest × SGD loop of all runs beside it."""
    ordered = sorted(runs, key=lambda r: r["ratio"])
    return {**ordered[(len(ordered) - 1) // 2], "ratio_min": ordered[0]["ratio"], "ratio_max": ordered[-1]["ratio"],
            "runs": len(runs)}


def plan(steps_forward: list[int], steps_reverse: list[int], truncate: int, peers: list[int], *,
         compile: bool = False, **common: Any) -> list[Task]:  # noqa: A002
    """The tasks of ``metatune bench hypergrad``: our modes (and, with ``compile``, forward and
    reverse compiled) and the peers; each times its own baselines."""
    tasks = [Task("forward", t, **common) for t in steps_forward]
    tasks += [Task("forward", t, compile=True, **common) for t in steps_forward if compile]
    tasks += [Task("reverse", t, **common) for t in steps_reverse]
    tasks += [Task("reverse", t, compile=True, **common) for t in steps_reverse if compile]
    tasks += [Task("truncated", t, truncate=truncate, **common) for t in steps_forward if t >= truncate]
    tasks += [Task(peer, t, **common) for t in peers for peer in PEERS]
    return tasks


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    """Rows as a Markdown table (module docstring for each ratio; the range is over the runs)."""
    lines = ["| method | T | K | compile | seconds | first call s | SGD ms/step | × SGD loop | (min–max) "
             "| gradient ms | floor (gradients/step) | × floor | peak MB above start | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['steps']} | {row['truncate'] or ''} | {'yes' if row['compile'] else ''} "
            f"| {row['seconds']:.2f} | {row['first_call_seconds']:.1f} | {1e3 * row['sgd_seconds_per_step']:.2f} "
            f"| {row['ratio']:.2f} | {row.get('ratio_min', row['ratio']):.2f}–{row.get('ratio_max', row['ratio']):.2f} "
            f"| {1e3 * row['gradient_seconds']:.2f} | {_number(row['floor_gradients'], 2)} "
            f"| {_number(row['floor_ratio'], 2)} | {row['peak_mb']:.1f} | {row['peak_resident_mb']:.0f} |"
        )
    return "\n".join(lines)


def peer_table(rows: list[dict]) -> str:
    """For each T with peers: each peer's × SGD loop over our reverse mode's (eager, compiled),
    and its peak memory over ours; > 1 means we are faster (smaller)."""
    ours = {(r["steps"], r["compile"]): r for r in rows if r["method"] == "reverse"}
    lines = ["| T | ours | peer | peer time / ours | peer peak MB / ours |", "|---|---|---|---|---|"]
    for peer in (r for r in rows if r["method"] in PEERS):
        for compiled in (False, True):
            mine = ours.get((peer["steps"], compiled))
            if mine is not None:
                lines.append(f"| {peer['steps']} | reverse{', compiled' if compiled else ''} | {peer['method']} "
                             f"| {peer['ratio'] / mine['ratio']:.2f} | {peer['peak_mb'] / max(mine['peak_mb'], 0.1):.2f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--forward-steps", default="100,1000,10000", help="T for forward mode (comma-separated)")
    parser.add_argument("--reverse-steps", default="100,1000", help="T for reverse mode")
    parser.add_argument("--truncate", type=int, default=100, help="K for truncated mode")
    parser.add_argument("--peer-steps", default="100,1000", help="T for torchopt and higher ('' to skip)")
    parser.add_argument("--hidden", default="512,128", help="hidden widths of the digits MLP (64-…-10)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also forward and reverse mode through torch.compile")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh processes per task; the row with the median × SGD loop is shown")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    common = dict(hidden=tuple(ints(args.hidden)), batch_size=args.batch_size, device=args.device,
                  threads=args.threads)
    tasks = plan(ints(args.forward_steps), ints(args.reverse_steps), args.truncate, ints(args.peer_steps),
                 compile=args.compile, **common)
    n_params = sum(p.numel() for p in digits_mlp(common["hidden"], 1, 1)[1].values())
    print(f"metatune bench hypergrad: MLP 64-{'-'.join(map(str, common['hidden']))}-10 ({n_params} parameters), "
          f"digits, batch {args.batch_size}, float32, {args.device}, {args.threads} thread(s); {machine()}", flush=True)
    repeat = checks.positive_int("repeat", args.repeat)
    runs = [[measure_in_child(measure, task) for _ in range(repeat)]
            for task in tqdm(tasks, desc="bench", unit="task")]
    rows = [median_row(task_runs) for task_runs in runs]
    print(table(rows))
    if any(r["method"] in PEERS for r in rows):
        print()
        print(peer_table(rows))
    write_json(rows, args.json)
    return 0
