"""``metatune bench ray``: what running jobs on Ray Tune costs over running them in-process,
and how throughput grows with concurrency.

Every job runs in-process and on Ray (embedded local Ray, or ``--ray-address``) with the same
method, seed and budget; Ray's jobs run after a warm-up job, so they share the standing
experiment's warm trial actors as a service worker's jobs do. Overhead = (Ray wall −
in-process wall) / Ray wall. Reported:

1. Ray's start-up (seconds, resident memory of its processes) and the first job's extra cost
   (its trial actor imports torch), apart.
2. Jobs on mlp-digits at ``--settings`` fixed-(η, β) runs of budget (random as vmapped
   populations, tpe, metagrad chains): wall times and overhead.
3. Per trial once actors are warm: tpe trials on a tiny quadratic (T = 1), whose own work is
   under a millisecond: (Ray − in-process) / trials.
4. Throughput at concurrency 1, 2 and the cluster's CPU count on a ``--throughput-settings``
   budget: trials per minute and gradient evaluations per second, the in-process figure
   beside each. Each concurrency starts a fresh standing experiment with a warm-up job, so
   that it has that many warm actors (a running experiment grows its actors only where a
   trial outlasts an actor's start: Tune hands a pending trial the first actor that frees).
5. The ``--compare-budget`` (20,000) comparison's jobs, seed 0, per method.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from metatune.bench.common import machine, write_json

NAME, HELP = "ray", "Ray Tune's overhead per job and per trial, and throughput by concurrency"
METHODS = (("random", {}), ("tpe", {}), ("metagrad", {"starts": 4, "screen": 8}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=int, default=64, help="fixed-(lr, momentum) runs the budget affords")
    parser.add_argument("--steps", type=int, default=200, help="inner steps T on mlp-digits")
    parser.add_argument("--trivial-trials", type=int, default=80, help="trials for the per-trial overhead")
    parser.add_argument("--concurrency", default=None,
                        help="comma-separated concurrencies for the throughput table (default 1,2,<cluster CPUs>)")
    parser.add_argument("--throughput-settings", type=int, default=256,
                        help="fixed-(lr, momentum) runs of budget in the throughput table (random: 64 a trial)")
    parser.add_argument("--compare-budget", type=int, default=20_000,
                        help="budget of the comparison-sized jobs (0: skip them)")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: an embedded local Ray)")


def ray_memory_bytes() -> int:
    """Resident memory of every Ray process on this machine (GCS, raylet, workers, …)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ray" in (proc.info["name"] or "") or "ray/" in cmdline or "ray::" in cmdline:
            total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
    return total


def timed_job(objective: Any, method: str, budget: float, backend: str, **options: Any) -> tuple[float, Any]:
    """(wall seconds, TuneResult) of one job."""
    from metatune import tune

    began = time.perf_counter()
    result = tune(objective, method, budget, seed=0, backend=backend, **options)
    return time.perf_counter() - began, result


def overhead(local: float, ray: float) -> float:
    """(Ray − in-process) / Ray."""
    return (ray - local) / ray


def main(args: argparse.Namespace) -> int:
    import ray

    from metatune import distributed, objectives
    from metatune.distributed import standing

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    distributed.ensure_ray(args.ray_address)
    startup = time.perf_counter() - began
    cpus = int(ray.cluster_resources().get("CPU", 1))
    print(f"{machine()}; Ray cluster: {len(ray.nodes())} node(s), {cpus} CPUs")
    print(f"Ray start-up: {startup:.2f} s, Ray processes' resident memory {ray_memory_bytes() / 2**30:.2f} GiB")
    rows.append({"what": "ray start-up", "seconds": startup, "ray_rss_bytes": ray_memory_bytes()})
    tiny = objectives.get("quadratic", dim=10, kappa=100.0, steps=1)
    first, _ = timed_job(tiny, "tpe", 2 * 2, "ray")
    second, _ = timed_job(tiny, "tpe", 2 * 2, "ray")
    print(f"first job on Ray (2 trivial trials): {first:.2f} s (its trial actor starts and imports torch); "
          f"the same job again: {second:.2f} s")
    rows.append({"what": "first job", "first_s": first, "second_s": second})

    digits = objectives.get("mlp-digits", steps=args.steps)
    budget = args.settings * (args.steps + 1)
    print(f"\njobs on mlp-digits, T = {args.steps}, budget {budget} gradient evaluations ({args.settings} settings), "
          "concurrency 1")
    print("| job | in-process s | Ray s | overhead (Ray − in-process)/Ray | trials in-process / Ray |")
    print("|---|---|---|---|---|")
    for method, options in METHODS:
        local, local_result = timed_job(digits, method, budget, "local", **options)
        wall, ray_result = timed_job(digits, method, budget, "ray", **options)
        print(f"| {method} {options or ''} | {local:.2f} | {wall:.2f} | {100 * overhead(local, wall):.1f} % | "
              f"{len(local_result.trials)} / {len(ray_result.trials)} |")
        rows.append({"what": f"job {method}", "local_s": local, "ray_s": wall, "overhead": overhead(local, wall)})

    n = args.trivial_trials
    local, _ = timed_job(tiny, "tpe", 2 * n, "local")
    wall, result = timed_job(tiny, "tpe", 2 * n, "ray")
    per_trial = (wall - local) / len(result.trials)
    print(f"\nper trial, actors warm: {len(result.trials)} tpe trials on a 10-dim quadratic, T = 1: "
          f"Ray {wall:.2f} s, in-process {local:.2f} s: {1000 * per_trial:.1f} ms a trial")
    rows.append({"what": "per trial", "ray_s": wall, "local_s": local, "per_trial_s": per_trial})

    levels = [int(c) for c in args.concurrency.split(",")] if args.concurrency else sorted({1, 2, cpus})
    budget = args.throughput_settings * (args.steps + 1)
    print(f"\nthroughput on mlp-digits (budget {budget}, {args.throughput_settings} settings): trials per minute / "
          "gradient evaluations per second")
    print("| method | in-process | " + " | ".join(f"Ray, concurrency {c}" for c in levels) + " |")
    print("|---|---|" + "---|" * len(levels))
    for method, options in METHODS:
        cells = []
        for backend, concurrency in (("local", 1), *(("ray", c) for c in levels)):
            extra = {"concurrency": concurrency} if backend == "ray" else {}
            if backend == "ray":  # a fresh experiment starts `concurrency` actors at once; parked between jobs
                standing.stop_all()
                timed_job(tiny, "tpe", 2 * 2 * concurrency, "ray", concurrency=concurrency)
            wall, result = timed_job(digits, method, budget, backend, **options, **extra)
            per_minute, per_second = 60 * len(result.trials) / wall, result.gradient_evals / wall
            cells.append(f"{per_minute:.0f} / {per_second:.0f}")
            rows.append({"what": f"throughput {method}", "backend": backend, "concurrency": concurrency,
                         "trials_per_minute": per_minute, "evals_per_second": per_second, "wall_s": wall})
        print(f"| {method} | " + " | ".join(cells) + " |")

    if args.compare_budget:
        print(f"\ncomparison-sized jobs on mlp-digits: budget {args.compare_budget}, seed 0, concurrency 1")
        print("| method | in-process s | Ray s | overhead | best value in-process / Ray |")
        print("|---|---|---|---|---|")
        for method, options in METHODS:
            local, local_result = timed_job(digits, method, args.compare_budget, "local", **options)
            wall, ray_result = timed_job(digits, method, args.compare_budget, "ray", **options)
            print(f"| {method} | {local:.2f} | {wall:.2f} | {100 * overhead(local, wall):.1f} % | "
                  f"{local_result.best_value:.5f} / {ray_result.best_value:.5f} |")
            rows.append({"what": f"compare {method}", "local_s": local, "ray_s": wall,
                         "overhead": overhead(local, wall)})
    write_json(rows, args.json)
    distributed.shutdown()
    return 0
