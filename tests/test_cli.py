"""The command line: the demo (the README's main job) and the objective listing."""

from __future__ import annotations

import re

from metatune import objectives
from metatune.cli import main


def test_demo_prints_agreeing_meta_gradients_a_stability_report_and_a_tuning(capsys):
    assert main(["demo", "--steps", "20", "--budget", "300"]) == 0
    out = capsys.readouterr().out
    grads = {mode: re.search(rf"{mode}\s+val loss (\S+)\s+dval/dlr (\S+)\s+dval/dmomentum (\S+)", out).groups()
             for mode in ("forward", "reverse")}
    forward, reverse = ([float(x) for x in grads[m]] for m in ("forward", "reverse"))
    assert all(abs(a - b) <= 1e-4 * max(abs(b), 1e-12) for a, b in zip(forward, reverse))
    assert re.search(r"critical_lr\s+\d", out) and "largest spectral radius" in out
    assert re.search(r"metagrad, \d+ gradient evaluations", out)


def test_objectives_lists_every_registered_name(capsys):
    main(["objectives"])
    out = capsys.readouterr().out
    assert all(name in out for name in objectives.names())


def test_a_user_error_is_one_line_on_stderr_and_exit_code_two(capsys):
    assert main(["compare", "--objective", "nope", "--methods", "tpe", "--budget", "100", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "objective='nope' is invalid" in err and "Traceback" not in err


def test_demo_with_a_budget_too_small_for_a_meta_gradient_says_so(capsys):
    assert main(["demo", "--steps", "20", "--budget", "30"]) == 0
    assert "bought no meta-gradient" in capsys.readouterr().out
