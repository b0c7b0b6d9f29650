"""``metatune bench cost``: the measured cost multiples of each objective's meta-gradients.

For every registered objective: matmul/conv FLOPs of the gradient as computed inside a jvp
(primal) and of one tangent carried through it (an HVP by forward-over-reverse: the
curvature estimates), and of a backward pass through the gradient (reverse mode, and forward
mode once per tangent), as multiples of one gradient (:func:`metatune.costs.measure`); and a
forward-mode step carrying k = 2 tangents (1 + 2 · backward step) in FLOPs and in wall time.
"""

from __future__ import annotations

import argparse
import time

import torch

import metatune as mt
from metatune.bench.common import machine
from metatune.costs import measure
from metatune.hypergrad.forward import gradient_and_hvps

NAME, HELP = "cost", "FLOP and wall-time multiples of a tangent and of a backward step, per objective"


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
    return {"objective": name, "primal (FLOPs)": costs.primal, "tangent (FLOPs)": costs.tangent,
            "backward step (FLOPs)": costs.backward_step,
            "step, k = 2 (FLOPs)": 1.0 + 2 * costs.backward_step,
            "step, k = 2 (wall)": forward / gradient, "gradient ms": 1e3 * gradient}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", default=None, help="comma-separated (default: all registered)")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    names = args.objectives.split(",") if args.objectives else mt.objectives.names()
    print(f"metatune bench cost: {args.threads} thread(s); {machine()}")
    print("| objective | primal (FLOPs) | tangent (FLOPs) | backward step (FLOPs) "
          "| forward step, k = 2 (FLOPs) | forward step, k = 2 (wall, eager) | gradient ms |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = row(name)
        print(f"| {name} | {r['primal (FLOPs)']:.2f} | {r['tangent (FLOPs)']:.2f} | "
              f"{r['backward step (FLOPs)']:.2f} | {r['step, k = 2 (FLOPs)']:.2f} | "
              f"{r['step, k = 2 (wall)']:.2f} | {r['gradient ms']:.3f} |")
    return 0
