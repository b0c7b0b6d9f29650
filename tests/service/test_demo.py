"""The README's main job (``make demo`` runs examples/service_demo.py): run as CI and scripts run
it (no terminal), it runs its comparison, prints the dashboard's address and the
optuna-dashboard command, stops the service, and leaves every job as an Optuna study."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_prints_the_dashboard_and_leaves_its_jobs_as_optuna_studies(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "service_demo.py"), "--objective", "quadratic",
                           "--methods", "random,metagrad", "--budget", "1500", "--seeds", "1", "--out", str(tmp_path)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ui", done.stdout)
    storage = f"sqlite:///{tmp_path / 'demo-optuna.db'}"
    assert f"optuna-dashboard sqlite:///{tmp_path / 'demo-optuna.db'}" in done.stdout
    assert "serving the dashboard until Ctrl-C" not in done.stdout  # no terminal: the service stopped
    studies = optuna.get_all_study_summaries(storage)
    assert len(studies) == 2
    for summary in studies:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert finished and all(t.value is not None and t.value >= 0 for t in finished)
