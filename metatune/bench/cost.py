"""``metatune bench cost``: the measured cost multiple of each objective's meta-gradients.

For every registered objective: the matmul/conv FLOPs of a backward pass through the
gradient (reverse mode once a step, forward mode once a step per tangent, an HVP once) as a
multiple of one gradient (:func:`metatune.costs.measure`), and a forward-mode step carrying
k = 2 tangents (1 + 2 · backward step) and a reverse-mode step's arithmetic (1 + backward
step) in FLOPs, the first also in eager wall time against autograd's plain gradient.
"""

from __future__ import annotations

import argparse
import time

import torch

import metatune as mt
from metatune.bench.common import machine
from metatune.costs import measure
from metatune.hessian import gradient_and_hvps

NAME, HELP = "cost", "FLOP and wall-time multiples of a backward step through the gradient, per objective"


def _seconds(fn, repeat: int = 5) -> float:  # noqa: ANN001
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def row(name: str) -> dict:
    """FLOP multiples and wall-time multiples of one objective at θ₀ on its first batch."""
    objective = mt.objectives.get(name)
    params, batches = objective.init_params(0), objective.batches(0, 1)
    batch = None if batches is None else batches[0]
    costs = measure(objective.train_loss, params, batch)
    leaves = [p.clone().requires_grad_() for p in params.values()]
    names = list(params)

    def plain_gradient() -> None:  # autograd's, the fastest eager gradient
        torch.autograd.grad(objective.train_loss(dict(zip(names, leaves)), batch), leaves)

    tangents = {n: torch.randn((2, *p.shape), dtype=p.dtype) for n, p in params.items()}
    gradient = _seconds(plain_gradient)
    forward = _seconds(lambda: gradient_and_hvps(objective.train_loss, params, tangents, batch))
    return {"objective": name, "backward step (FLOPs)": costs.backward_step,
            "forward step, k = 2 (FLOPs)": 1.0 + 2 * costs.backward_step,
            "forward step, k = 2 (wall)": forward / gradient,
            "reverse step (FLOPs)": 1.0 + costs.backward_step, "gradient ms": 1e3 * gradient}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", default=None, help="comma-separated (default: all registered)")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    names = args.objectives.split(",") if args.objectives else mt.objectives.names()
    print(f"metatune bench cost: {args.threads} thread(s); {machine()}")
    print("| objective | backward step (FLOPs) | forward step, k = 2 (FLOPs) | forward step, k = 2 (wall, eager) "
          "| reverse step (FLOPs) | gradient ms |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = row(name)
        print(f"| {name} | {r['backward step (FLOPs)']:.2f} | {r['forward step, k = 2 (FLOPs)']:.2f} | "
              f"{r['forward step, k = 2 (wall)']:.2f} | {r['reverse step (FLOPs)']:.2f} | {r['gradient ms']:.3f} |")
    return 0
