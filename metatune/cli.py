"""The ``metatune`` command line: ``demo``, ``compare``, ``objectives``, ``bench …``, and the
commands of installed plugins.

A plugin is an entry point of the ``metatune.commands`` group naming an object (a module, say)
with ``add_commands(subparsers)``, which adds its sub-commands, and optionally
``compare_on_server(args, params, methods)``, which runs ``metatune compare --server``. The
service (``metatune_service``) is one: the library never imports it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import torch

from metatune.errors import InvalidArgumentError, UserError
from metatune.plugins import load
from metatune.schedule import WARMUP_COSINE, Schedule

COMMANDS_GROUP = "metatune.commands"


def _demo(args: argparse.Namespace) -> int:
    """Meta-gradient, stability report and a short metagrad tuning on mlp-digits."""
    from metatune import hypergrad, objectives, stability, tune

    torch.set_num_threads(args.threads)
    objective = objectives.get("mlp-digits", steps=args.steps)
    params, batches = objective.init_params(0), objective.batches(0, args.steps)
    losses = (objective.train_loss, objective.val_loss, params)
    print(f"metatune demo: {objective.description}; T={args.steps}, lr={args.lr}, momentum={args.momentum}")
    for mode in ("forward", "reverse"):
        start = time.perf_counter()
        hg = hypergrad(*losses, args.lr, args.momentum, args.steps, batches, mode=mode)
        print(f"  {mode:8s} val loss {hg.value:.6f}  dval/dlr {hg.lr:+.6e}  dval/dmomentum {hg.momentum:+.6e}"
              f"  growth/step {hg.growth_rate:+.4f}  cost {hg.gradient_evals:.0f} grad evals"
              f"  ({time.perf_counter() - start:.2f} s)")
    report = stability.estimate(objective.train_loss, params, args.lr, args.momentum, batch=batches[0])
    print("stability at the start:")
    for key in ("lambda_max", "lambda_min", "spectral_radius", "critical_lr", "stable", "saddle"):
        print(f"  {key:16s} {getattr(report, key)}")
    run = stability.along_run(objective.train_loss, params, args.lr, args.momentum, args.steps, batches,
                              every=max(args.steps // 4, 1))
    print(f"along the run (steps {run.steps_checked}): largest spectral radius {run.max_spectral_radius:.4f}, "
          f"stable={run.stable} (curvature-driven), saddle seen={run.saddle_seen} (ρ > 1 from negative curvature "
          f"is saddle escape, not divergence)")
    result = tune(objective, "metagrad", budget=args.budget, seed=0, mode="reverse")
    if not result.trials:
        cost = objective.steps + 1
        print(f"metagrad: a budget of {args.budget:g} gradient evaluations bought no meta-gradient at T={args.steps} "
              f"(one costs several training runs of {cost} each): raise --budget or lower --steps")
        return 0
    print(f"metagrad, {result.gradient_evals:.0f} gradient evaluations, {len(result.trials)} trials: "
          f"best lr {result.best_lr:.4g}, momentum {result.best_momentum:.4g}, val loss {result.best_value:.4f} "
          f"(from {result.trials[0].value:.4f} at its first trial)")
    return 0


def _parse_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_groups(text: str | None) -> str | list[str] | None:
    """``--groups``: None, "layers", "tensors", or comma-separated prefixes (a list)."""
    return text if text in (None, "layers", "tensors") else [p.strip() for p in text.split(",") if p.strip()]


def parse_schedule(text: str) -> Schedule:
    """``--schedule``: K (η_t and β_t from K knots each; 1 is one constant (η, β)) or
    "warmup-cosine" (the warm-up + cosine family).

    Example:
        >>> parse_schedule("8"), parse_schedule("warmup-cosine").shape
        (Schedule(knots=8, shape='knots'), 'warmup-cosine')
    """
    if text == WARMUP_COSINE:
        return Schedule(shape=WARMUP_COSINE)
    try:
        knots = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of knots K >= 1 or {WARMUP_COSINE!r}") from None
    try:
        return Schedule(knots=knots)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _compare(args: argparse.Namespace) -> int:
    """Equal-budget comparison with a progress bar, a table, JSON and plots."""
    import os

    import optuna
    from tqdm import tqdm

    from metatune import objectives
    from metatune.compare import compare

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = {k: _parse_value(v) for k, v in (item.split("=", 1) for item in args.param)}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.server:
        return _server_compare()(args, params, methods)
    objective = objectives.get(args.objective, **params)
    seeds = list(range(args.seeds))
    options = {"metagrad": {"mode": args.metagrad_mode}} if args.metagrad_mode else {}
    backend_options = {}
    if args.backend == "ray":
        backend_options = {"concurrency": args.concurrency, "ray_address": args.ray_address,
                           "resources": {"cpu": args.cpu, "gpu": args.gpu}}
    with tqdm(total=args.budget * len(methods) * len(seeds), unit="grad", unit_scale=True, desc="compare") as bar:

        def on_trial(method: str, seed: int, trial) -> None:  # noqa: ANN001
            bar.set_postfix_str(f"{method} seed {seed} best {trial.value:.3g}")
            bar.update(trial.gradient_evals)

        cmp = compare(objective, methods, args.budget, seeds, target=args.target, on_trial=on_trial, options=options,
                      groups=args.groups, schedule=args.schedule, backend=args.backend,
                      backend_options=backend_options)
    print(cmp.table())
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"compare-{objective.name}")
    with open(f"{stem}.json", "w") as out:
        out.write(cmp.to_json())
    written = [f"{stem}.json", *cmp.plot(stem)]
    print("wrote " + ", ".join(written))
    return 0


def _objectives(args: argparse.Namespace) -> int:
    from metatune import objectives

    for row in objectives.describe():
        shown = ", ".join(f"{k}={v}" for k, v in row["parameters"].items())
        print(f"{row['name']:16s} {row['description']}\n{'':16s} parameters: {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from metatune import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metatune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="meta-gradient and stability report on digits")
    demo.add_argument("--steps", type=int, default=200)
    demo.add_argument("--lr", type=float, default=0.1)
    demo.add_argument("--momentum", type=float, default=0.9)
    demo.add_argument("--budget", type=float, default=5_000, help="gradient evaluations for the tuning")
    demo.add_argument("--threads", type=int, default=1)
    demo.set_defaults(handler=_demo)
    cmp = commands.add_parser("compare", help="equal-budget comparison of tuning methods")
    cmp.add_argument("--objective", default="quadratic", help="a registered objective (metatune objectives)")
    cmp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="objective parameter")
    cmp.add_argument("--methods", default="metagrad,tpe,cmaes,random")
    cmp.add_argument("--budget", type=float, default=20_000, help="gradient evaluations per method and seed")
    cmp.add_argument("--seeds", type=int, default=5)
    cmp.add_argument("--target", type=float, default=None, help="loss for 'evals to target'")
    cmp.add_argument("--metagrad-mode", default=None, choices=["auto", "forward", "reverse"])
    cmp.add_argument("--groups", default=None, type=parse_groups,
                     help="an η and a β per parameter group: 'layers', 'tensors' or comma-separated prefixes")
    cmp.add_argument("--schedule", default=Schedule(), type=parse_schedule, metavar="K|warmup-cosine",
                     help="every method searches η_t, β_t from K knots each, or the warm-up + cosine family "
                          "(default 1: one constant η and β); plots each method's best schedule")
    cmp.add_argument("--out", default="metatune-out", help="folder for the JSON and the plots")
    cmp.add_argument("--threads", type=int, default=1)
    cmp.add_argument("--backend", default="local", choices=["local", "ray"],
                     help="run trials in this process or on Ray Tune (a local Ray unless --ray-address)")
    cmp.add_argument("--ray-address", default=None, help="a running Ray cluster (default: RAY_ADDRESS, else local)")
    cmp.add_argument("--concurrency", type=int, default=2, help="Ray trials running at once per job")
    cmp.add_argument("--cpu", type=float, default=1.0, help="CPUs per Ray trial")
    cmp.add_argument("--gpu", type=float, default=0.0, help="GPUs per Ray trial (0.25: four trials share a GPU)")
    cmp.add_argument("--server", default=None, help="run the comparison on a metatune service at this URL")
    cmp.add_argument("--token", default=None, help="API token for --server (default METATUNE_TOKEN)")
    cmp.set_defaults(handler=_compare)
    objs = commands.add_parser("objectives", help="list the registered objectives")
    objs.set_defaults(handler=_objectives)
    bench_parser = commands.add_parser("bench", help="print benchmark figures")
    from metatune import bench

    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=_bench)
    for plugin in plugins():
        plugin.add_commands(commands)
    return parser


def plugins() -> list[Any]:
    """The objects of the ``metatune.commands`` entry points that load (one that fails to
    import is named on stderr and skipped: the library's own commands still work)."""
    return load(COMMANDS_GROUP, "metatune")


def _server_compare() -> Callable[[argparse.Namespace, dict, list[str]], int]:
    """The installed plugin's ``compare_on_server`` (the service's)."""
    for plugin in plugins():
        if hasattr(plugin, "compare_on_server"):
            return plugin.compare_on_server
    raise UserError("--server needs the service's commands: pip install 'metatune[service]'")


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (a bad argument, an unknown objective, a refusal from the
    service: :class:`~metatune.errors.UserError`) is one line on stderr, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (InvalidArgumentError, UserError) as error:
        print(f"metatune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
