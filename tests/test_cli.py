"""The command line: the demo (the README's main job) and the objective listing."""

from __future__ import annotations

import re

import numpy as np
import pytest

from metatune import objectives
from metatune.cli import main


def _transition_radius(lr: float, momentum: float, lam: float) -> float:
    """Largest |eigenvalue| of heavy ball's (θ, v) → (θ − η(βv + λθ), βv + λθ) for one eigenvalue λ."""
    return float(np.abs(np.linalg.eigvals(np.array([[1 - lr * lam, -lr * momentum], [lam, momentum]]))).max())


def test_demo_prints_agreeing_meta_gradients_a_stability_report_and_a_tuning(capsys):
    """Exit code 0 at T = 20, η = 0.1, β = 0.9. The printed report agrees with its own λ's:
    critical lr 2(1 + β)/λ_max, ρ the largest |eigenvalue| of the transition at λ_min and
    λ_max (numpy), stable iff η < critical lr, a saddle iff λ_min < 0. The meta-gradients
    are charged the default multiples: forward 20 × (1 + 2 × 2) + 1, reverse 20 + 20 × 2 + 1."""
    assert main(["demo", "--steps", "20", "--budget", "300"]) == 0
    out = capsys.readouterr().out
    grads = {mode: re.search(rf"{mode}\s+val loss (\S+)\s+dval/dlr (\S+)\s+dval/dmomentum (\S+)", out).groups()
             for mode in ("forward", "reverse")}
    forward, reverse = ([float(x) for x in grads[m]] for m in ("forward", "reverse"))
    assert all(abs(a - b) <= 1e-4 * max(abs(b), 1e-12) for a, b in zip(forward, reverse))
    assert re.findall(r"cost (\d+) grad evals", out) == ["101", "61"]
    keys = "lambda_max|lambda_min|spectral_radius|critical_lr|stable|saddle"
    report = dict(re.findall(rf"^  ({keys})\s+(\S+)$", out, re.MULTILINE))
    high, low = float(report["lambda_max"]), float(report["lambda_min"])
    assert float(report["critical_lr"]) == pytest.approx(2 * 1.9 / high, rel=1e-12)
    radius = max(_transition_radius(0.1, 0.9, lam) for lam in (low, high))
    assert float(report["spectral_radius"]) == pytest.approx(radius, rel=1e-9)
    assert report["stable"] == str(0.1 < 2 * 1.9 / high) and report["saddle"] == str(low < 0)
    spent, trials = re.search(r"metagrad, (\d+) gradient evaluations, (\d+) trials", out).groups()
    assert 0 < int(spent) <= 300 and int(trials) >= 1


def test_objectives_lists_every_registered_name(capsys):
    """Exit code 0; a line per objective starting with its name, then its parameters with the
    defaults of its factory (the quadratic's: dim 50, κ 1000, rotation seed 0, T = 300)."""
    assert main(["objectives"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[::2]] == sorted(objectives.names())
    assert all(line.split()[0] == "parameters:" for line in lines[1::2])
    quadratic = lines[2 * sorted(objectives.names()).index("quadratic") + 1]
    assert quadratic.split("parameters: ")[1] == "dim=50, kappa=1000.0, rotation_seed=0, steps=300, spectrum=log"


def test_a_user_error_is_one_line_on_stderr_and_exit_code_two(capsys):
    assert main(["compare", "--objective", "nope", "--methods", "tpe", "--budget", "100", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "objective='nope' is invalid" in err and "Traceback" not in err


def test_demo_with_a_budget_too_small_for_a_meta_gradient_says_so(capsys):
    assert main(["demo", "--steps", "20", "--budget", "30"]) == 0
    assert "bought no meta-gradient" in capsys.readouterr().out
