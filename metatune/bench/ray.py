"""``metatune bench ray``: what running a job on Ray Tune costs over running it in-process.

For each job (random search over a 64-setting budget on mlp-digits, trained as vmapped
populations; metagrad with 4 starts on the same budget) the same method, seed and budget
run in-process and on the embedded local Ray (twice: the first pays for starting the
trial actors). Overhead = (Ray wall − in-process wall) / Ray wall. Ray's own start-up
time and memory (resident memory of its processes) are reported apart. Per-trial
overhead: ``tpe`` trials on a tiny quadratic (T = 1) with and without actor reuse,
against the same trials in-process, and random search's 64-setting populations.
"""

from __future__ import annotations

import argparse
import time

import torch

from metatune.bench.common import machine, write_json

NAME, HELP = "ray", "Ray Tune's overhead on a job, its start-up cost and its per-trial overhead"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=int, default=64, help="fixed-(lr, momentum) runs the budget affords")
    parser.add_argument("--steps", type=int, default=200, help="inner steps T on mlp-digits")
    parser.add_argument("--trivial-trials", type=int, default=40, help="trials for the per-trial overhead")
    parser.add_argument("--concurrency", type=int, default=1)


def ray_memory_bytes() -> int:
    """Resident memory of every Ray process on this machine (GCS, raylet, workers, …)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ray" in (proc.info["name"] or "") or "ray/" in cmdline or "ray::" in cmdline:
            total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
    return total


def _timed_job(objective, method: str, budget: float, backend: str, **options) -> tuple[float, int, float]:  # noqa: ANN001, ANN003
    from metatune import tune

    began = time.perf_counter()
    result = tune(objective, method, budget, seed=0, backend=backend, **options)
    return time.perf_counter() - began, len(result.trials), result.best_value


def main(args: argparse.Namespace) -> int:
    from metatune import distributed, objectives

    torch.set_num_threads(args.threads)
    rows = []
    began = time.perf_counter()
    distributed.ensure_ray()
    startup = time.perf_counter() - began
    print(f"{machine()}\nRay start-up: {startup:.2f} s, Ray processes' resident memory {ray_memory_bytes() / 2**30:.2f} GiB")
    rows.append({"what": "ray start-up", "seconds": startup, "ray_rss_bytes": ray_memory_bytes()})
    digits = objectives.get("mlp-digits", steps=args.steps)
    budget = args.settings * (args.steps + 1)
    print(f"\njobs on mlp-digits, T = {args.steps}, budget {budget} gradient evaluations ({args.settings} settings)")
    print("| job | in-process s | Ray s (1st) | Ray s (2nd) | overhead 2nd = (Ray − local)/Ray | trials |")
    print("|---|---|---|---|---|---|")
    for method, options in (("random", {}), ("metagrad", {"starts": 4, "screen": 8})):
        local, trials, _ = _timed_job(digits, method, budget, "local", **options)
        ray_options = {**options, "concurrency": args.concurrency}
        first, _, _ = _timed_job(digits, method, budget, "ray", **ray_options)
        second, ray_trials, _ = _timed_job(digits, method, budget, "ray", **ray_options)
        overhead = (second - local) / second
        print(f"| {method} {options or ''} | {local:.2f} | {first:.2f} | {second:.2f} | {100 * overhead:.1f} % | "
              f"{trials} / {ray_trials} |")
        rows.append({"what": f"job {method}", "local_s": local, "ray_first_s": first, "ray_second_s": second,
                     "overhead": overhead, "trials": trials})
    tiny = objectives.get("quadratic", dim=10, kappa=100.0, steps=1)
    n = args.trivial_trials
    print(f"\nper-trial overhead: {n} tpe trials on a 10-dim quadratic, T = 1 (a trial's own work ≪ 1 ms)")
    print("| variant | wall s | ms per trial over in-process |")
    print("|---|---|---|")
    local, _, _ = _timed_job(tiny, "tpe", 2 * n, "local")
    for label, options in (("actor reuse", {"reuse_actors": True}), ("no actor reuse", {"reuse_actors": False})):
        _timed_job(tiny, "tpe", 2 * 2, "ray", **options)  # warm-up
        wall, trials, _ = _timed_job(tiny, "tpe", 2 * n, "ray", **options)
        per_trial = (wall - local) / trials
        print(f"| {label} | {wall:.2f} | {1000 * per_trial:.0f} |")
        rows.append({"what": f"per trial, {label}", "wall_s": wall, "per_trial_s": per_trial})
    wall, trials, _ = _timed_job(tiny, "random", 2 * n, "ray")
    local_random, _, _ = _timed_job(tiny, "random", 2 * n, "local")
    per_setting = (wall - local_random) / trials
    print(f"| random, {n} settings as one population trial | {wall:.2f} | {1000 * per_setting:.1f} per setting |")
    rows.append({"what": "per setting, population", "wall_s": wall, "per_setting_s": per_setting})
    print(f"(in-process: tpe {local:.2f} s, random {local_random:.2f} s)")
    write_json(rows, args.json)
    distributed.shutdown()
    return 0
