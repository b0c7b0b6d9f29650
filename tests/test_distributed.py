"""Tuning jobs on a real local Ray: the same results as in-process, faults, cancel, resources."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")
from ray import tune as ray_tune  # noqa: E402

import metatune as mt  # noqa: E402
from metatune import distributed, objectives  # noqa: E402
from metatune.tuners import METHODS  # noqa: E402
from metatune.tuning import RAY_OPTIONS, job_of  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the objectives below travel to Ray workers

BUDGET = 1_500
RAY_METHODS = sorted(m for m, t in METHODS.items() if t.distributable)


def ray_run(objective, method, budget, seed=0, **options):  # noqa: ANN001, ANN003, ANN201
    """:func:`metatune.distributed.run` of the job ``mt.tune(objective, method, budget, seed,
    backend="ray", **options)`` describes."""
    run_options = {k: options.pop(k) for k in (*RAY_OPTIONS, "history", "callback") if k in options}
    job = job_of(objective, method, budget, seed, "ray", options)
    return distributed.run(job, objective=objective, **run_options)


@pytest.fixture(scope="module")
def quadratic():
    return objectives.get("quadratic", dim=10, kappa=100.0, steps=30)


@pytest.fixture(scope="module")
def ray_results(ray_cluster, quadratic):
    """Every distributable method once on Ray, with the trials its callback saw."""
    out = {}
    for method in RAY_METHODS:
        seen = []
        result = ray_run(quadratic, method, BUDGET, seed=0, callback=seen.append,
                                 storage=ray_cluster / "results")
        out[method] = (result, seen)
    return out


@pytest.mark.parametrize("method", RAY_METHODS)
def test_each_method_runs_on_ray_within_its_budget(ray_results, method, quadratic):
    result, seen = ray_results[method]
    assert seen == result.trials and [t.number for t in seen] == list(range(len(seen)))
    assert len({(t.lr, t.momentum, t.number) for t in seen}) == len(seen)
    assert 0 < result.gradient_evals <= BUDGET
    assert sum(t.gradient_evals for t in seen) <= result.gradient_evals + 1e-9
    trial = result.best  # the reported value is what a plain run at that (η, β) gives
    run = mt.unroll(quadratic.train_loss, quadratic.init_params(0), trial.lr, trial.momentum, quadratic.steps)
    assert trial.value == pytest.approx(float(quadratic.val_loss(run.params)), rel=1e-9)
    assert {t.status for t in seen} <= {"completed", "diverged"} and not any(t.error for t in seen)


@pytest.mark.parametrize("method", ["tpe", "metagrad", "random"])
def test_ray_at_concurrency_one_picks_the_same_points_as_in_process(ray_results, method, quadratic):
    on_ray, _ = ray_results[method]
    local = mt.tune(quadratic, method, BUDGET, seed=0)
    assert [(t.lr, t.momentum) for t in on_ray.trials] == [(t.lr, t.momentum) for t in local.trials]
    assert [t.value for t in on_ray.trials] == pytest.approx([t.value for t in local.trials], rel=1e-12)
    assert on_ray.gradient_evals == local.gradient_evals


@pytest.mark.parametrize("method", ["tpe", "metagrad", "random"])
def test_per_group_spaces_on_ray_pick_the_same_points_as_in_process(ray_cluster, method):
    """An η and a β per layer (6 hyperparameters): Ray trials carry dict points and per-group
    meta-gradients through Ray's flat results, and at concurrency 1 the search is the
    in-process one."""
    objective = objectives.get("mlp-regression", hidden=8, steps=20)
    on_ray = ray_run(objective, method, 600, seed=0, groups="layers", storage=ray_cluster / "groups")
    local = mt.tune(objective, method, 600, seed=0, groups="layers")
    assert len(on_ray.trials) == len(local.trials) > 5
    assert all(set(t.lr) == set(t.momentum) == {"0", "2", "4"} for t in on_ray.trials)
    assert [(t.lr, t.momentum) for t in on_ray.trials] == [(t.lr, t.momentum) for t in local.trials]
    assert [t.value for t in on_ray.trials] == pytest.approx([t.value for t in local.trials], rel=1e-6)
    assert [t.spectral_radius for t in on_ray.trials] == pytest.approx([t.spectral_radius for t in local.trials])


def test_tune_backend_ray_and_its_errors(ray_cluster, quadratic):
    result = mt.tune(quadratic, "random", budget=31 * 3, seed=1, backend="ray", storage=ray_cluster / "r")
    assert len(result.trials) == 3 and result.method == "random"
    with pytest.raises(ValueError, match="backend='spark'"):
        mt.tune(quadratic, "random", budget=100, backend="spark")
    with pytest.raises(ValueError, match="method='online' is invalid: .*runs in-process only"):
        ray_run(quadratic, "online", budget=100)
    with pytest.raises(ValueError, match="concurrency=0"):
        ray_run(quadratic, "tpe", budget=100, concurrency=0)
    with pytest.raises(ValueError, match=r"resources.gpu=-1"):
        ray_run(quadratic, "tpe", budget=100, resources={"gpu": -1})


def test_metagrad_chains_run_concurrently_and_metrics_reach_ray(ray_cluster, quadratic):
    """Two starts at concurrency 2 (after the screening population), with two warm actors (a
    first step in a cold one takes seconds, the other chain's steps 50 ms): both chains take steps;
    every step carries its meta-gradient, and Ray's own results hold the same metrics. The
    budget's tail, too small for a meta-gradient a later run could use, goes to value-only
    line-search runs, each its own Ray trial."""
    ray_run(quadratic, "tpe", 31 * 4, seed=0, concurrency=2, storage=ray_cluster / "m")  # two warm actors
    result = ray_run(quadratic, "metagrad", 1_500, seed=0, concurrency=2, starts=2,
                             storage=ray_cluster / "m")
    steps = [t for t in result.trials if "growth_rate" in t.metrics]
    tail = [t for t in result.trials[9:] if "growth_rate" not in t.metrics]  # may end while a step runs
    assert all("growth_rate" not in t.metrics for t in result.trials[:9])  # the theory point and 8 Sobol points
    assert len(result.trials) == 9 + len(steps) + len(tail) and tail
    assert all(t.gradient_evals == quadratic.steps + 1 for t in tail)
    assert all({"dvalue_dlr", "dvalue_dmomentum"} <= set(t.metrics) for t in steps)
    starts = [t.chain.start for t in steps]
    assert starts.count(0) >= 2 and starts.count(1) >= 2
    grid = _eventually(lambda: _last_results(ray_cluster / "m", "quadratic-metagrad-seed0-"),
                       lambda rows: len(rows) == len(steps) + len(tail) + 1)
    assert all({"value", "lr", "momentum", "spectral_radius", "stable", "gradient_evals", "wall_time", "node"}
               <= set(row) for row in grid)
    ray_steps = [row for row in grid if "growth_rate" in row]  # one Ray trial per step and line point, one population
    assert len(grid) == len(steps) + len(tail) + 1
    assert sorted(row["value"] for row in ray_steps) == pytest.approx(sorted(t.value for t in steps))
    assert {t.node for t in result.trials} == {ray.get_runtime_context().get_node_id()}


def _last_results(storage: Path, job: str) -> list[dict]:
    """The last result each Ray trial of the job named ``job…`` wrote in its folder of the
    standing experiment under ``storage`` (Ray Tune's JSON logger: one line per report)."""
    import json

    files = [f / "result.json" for f in storage.glob(f"*/{job}*") if (f / "result.json").is_file()]
    return [json.loads(lines[-1]) for lines in (f.read_text().splitlines() for f in files) if lines]


def _eventually(read, done, timeout: float = 60.0):  # noqa: ANN001, ANN202
    """``read()`` once ``done`` of it holds, polling for up to ``timeout`` seconds: Ray Tune copies
    its driver's result files to the storage folder on each save of the experiment's state
    (every 10 s or more) and when the experiment ends."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = read()
    return value


# -- a user's own model under MetagradSearch -----------------------------------------------------


def _user_trainable(config):
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 5, generator=generator, dtype=torch.float64), torch.randn(5, 1, generator=generator,
                                                                                      dtype=torch.float64)
    y = x @ w
    model = torch.nn.Linear(5, 1).double()
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(p, batch=None):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    hg = mt.hypergrad(loss, loss, params, config["lr"], config["momentum"], 20, mode="forward")
    ray_tune.report(distributed.hypergrad_report(hg))


def test_metagrad_search_inside_a_users_own_tuner(ray_cluster):
    search = distributed.MetagradSearch(starts=[(0.01, 0.5), (0.003, 0.2)], meta_lr=0.5)
    grid = ray_tune.Tuner(
        _user_trainable,
        tune_config=ray_tune.TuneConfig(search_alg=search, num_samples=12, max_concurrent_trials=2, reuse_actors=True),
        run_config=ray_tune.RunConfig(storage_path=str(ray_cluster / "user"), verbose=0),
    ).fit()
    frame = grid.get_dataframe()
    assert len(frame) == 12 and set(frame["config/start"]) == {0, 1}
    # How the 12 trials split between the chains is Ray's timing: a chain whose first trial
    # waits for an actor while the other chain's trials run back to back may get no second.
    lengths = []
    for start, first in ((0, 0.01), (1, 0.003)):
        chain = frame[frame["config/start"] == start].sort_values("config/attempt")
        assert chain["config/lr"].iloc[0] == pytest.approx(first)
        assert chain["dvalue_dlr"].iloc[0] < 0  # the start's lr is too small: the chain must raise it
        if len(chain) > 1:
            assert chain["config/lr"].iloc[-1] > first and chain["value"].min() < 0.8 * chain["value"].iloc[0]
        lengths.append(len(chain))
    assert max(lengths) >= 6
    assert grid.get_best_result(metric="value", mode="min").metrics["value"] == frame["value"].min()


# -- resources ---------------------------------------------------------------------------------------


def _timed_trial(config):
    """Marks its start, then holds until four trials have started (or 20 s pass), so that
    four trials overlap whenever the scheduler lets four run; a fifth never could."""
    began = time.time()
    device = distributed.trainable.assigned_device()
    folder = Path(config["folder"])
    (folder / f"start-{config['i']}").touch()
    while len(list(folder.glob("start-*"))) < 4 * (1 + config["i"] // 4) and time.time() - began < 20:
        time.sleep(0.05)
    time.sleep(0.2)
    ray_tune.report({"began": began, "ended": time.time(), "device": device, "gpus": len(ray.get_gpu_ids()),
                     "threads": torch.get_num_threads()})


def test_fractional_gpus_share_one_gpu_four_at_a_time_and_stay_on_cpu(ray_cluster, tmp_path):
    trainable = ray_tune.with_resources(_timed_trial, {"cpu": 0.25, "gpu": 0.25})
    grid = ray_tune.Tuner(trainable, param_space={"i": ray_tune.grid_search(list(range(8))), "folder": str(tmp_path)},
                          tune_config=ray_tune.TuneConfig(reuse_actors=True),
                          run_config=ray_tune.RunConfig(storage_path=str(ray_cluster / "gpu"), verbose=0)).fit()
    frame = grid.get_dataframe()
    events = sorted([(b, 1) for b in frame["began"]] + [(e, -1) for e in frame["ended"]])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most == 4  # the declared GPU fits four 0.25 trials and no more
    assert set(frame["gpus"]) == {1} and set(frame["device"]) == {"cpu"} and set(frame["threads"]) == {1}


def test_a_gpu_job_runs_its_trials_on_the_cpu_without_cuda(ray_cluster, quadratic):
    result = ray_run(quadratic, "tpe", 31 * 4, seed=0, resources={"cpu": 0.5, "gpu": 0.25}, concurrency=4,
                             storage=ray_cluster / "g")
    assert len(result.trials) == 4 and all(t.status == "completed" for t in result.trials)


# -- faults and cancel -------------------------------------------------------------------------------


def _sabotaged(base: objectives.Objective, log: Path, failures: int, how: str,
               delay: float = 0.0) -> objectives.Objective:
    """``base`` whose training, in Ray workers only (the driver builds the job with it),
    logs each call and, for the first ``failures`` attempts, raises or kills its process;
    ``delay`` seconds of sleep per training step make trials slow."""
    import dataclasses

    driver = os.getpid()

    def train_loss(params, batch=None):
        if os.getpid() != driver:
            time.sleep(delay)
            attempts = log.read_text().count("\n") if log.exists() else 0
            if attempts < failures:
                with open(log, "a") as out:
                    out.write(f"attempt {os.getpid()}\n")
                if how == "kill":
                    os._exit(1)
                raise RuntimeError(f"sabotaged attempt {attempts + 1}")
        return base.train_loss(params, batch)

    return dataclasses.replace(base, name=f"sabotaged-{how}", train_loss=train_loss, params={})


def test_a_crashing_trial_is_retried_then_recorded_failed_and_the_job_goes_on(ray_cluster, tmp_path, quadratic):
    log = tmp_path / "attempts.log"
    result = ray_run(_sabotaged(quadratic, log, failures=3, how="raise"), "tpe", 31 * 4, seed=0,
                             max_retries=2, storage=tmp_path / "res")
    assert log.read_text().count("attempt") == 3  # the first trial: one try and two retries
    assert [t.status for t in result.trials] == ["failed", "completed", "completed", "completed"]
    failed = result.trials[0]
    assert "sabotaged attempt 3" in failed.error and failed.value == math.inf
    assert result.gradient_evals == 31 * 4 and result.best is not None


def test_a_killed_worker_is_retried_and_its_trial_recorded_once(ray_cluster, tmp_path, quadratic):
    log = tmp_path / "attempts.log"
    result = ray_run(_sabotaged(quadratic, log, failures=1, how="kill"), "random", 31 * 3, seed=0,
                             max_retries=1, storage=tmp_path / "res")
    local = mt.tune(quadratic, "random", 31 * 3, seed=0)
    assert log.read_text().count("attempt") == 1
    assert [(t.lr, t.momentum, t.status) for t in result.trials] == [(t.lr, t.momentum, "completed") for t in local.trials]


def test_cancel_stops_a_running_job_within_five_seconds(ray_cluster, tmp_path, quadratic):
    slow = _sabotaged(quadratic, tmp_path / "never.log", failures=0, how="raise", delay=0.05)  # ≈1.5 s per trial
    cancel, began = threading.Event(), []

    def first_trial(trial):
        if not began:
            began.append(time.perf_counter())
            threading.Timer(0.5, cancel.set).start()

    result = ray_run(slow, "tpe", 31 * 100, seed=0, callback=first_trial, cancel=cancel, concurrency=2,
                             storage=tmp_path / "res")
    stopped = time.perf_counter() - began[0] - 0.5
    assert result.cancelled and 1 <= len(result.trials) < 100
    assert stopped < 5.0


def test_attach_to_a_separately_started_ray_by_address(tmp_path):
    """A second local Ray (``ray start --head``) takes a job from another process by address."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = Path(tempfile.mkdtemp(prefix="mt-head-"))
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        script = (
            "import metatune as mt, torch; torch.set_num_threads(1)\n"
            f"r = mt.tune('quadratic', 'random', budget=101 * 2, seed=0, steps=100, backend='ray', ray_address='127.0.0.1:{port}', "
            f"storage={str(tmp_path)!r})\n"
            "import ray; print('TRIALS', len(r.trials), 'NODES', len(ray.nodes()), ray.get_runtime_context().gcs_address)\n"
        )
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert out.stdout.startswith("TRIALS 2 NODES 1 ") and out.stdout.strip().endswith(f":{port}"), out.stderr[-2000:]
    finally:  # stop this head only: `ray stop` would stop every Ray on the machine, the tests' own too
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_compare_backend_ray_from_the_command_line(ray_cluster, tmp_path, capsys):
    import json

    from metatune.cli import main

    code = main(["compare", "--objective", "quadratic", "--param", "dim=10", "--param", "kappa=100", "--param",
                 "steps=30", "--methods", "tpe,random", "--budget", "186", "--seeds", "2", "--backend", "ray",
                 "--concurrency", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "| tpe |" in out and "| random |" in out
    saved = json.loads((tmp_path / "compare-quadratic.json").read_text())
    local = mt.tune(objectives.get("quadratic", dim=10, kappa=100.0, steps=30), "tpe", 186, seed=1)
    ray_tpe = saved["runs"]["tpe"][1]
    assert [(t["lr"], t["momentum"]) for t in ray_tpe["trials"]] == [(t.lr, t.momentum) for t in local.trials]
    assert ray_tpe["best_value"] == pytest.approx(local.best_value, rel=1e-12)


def test_metagrad_search_finishes_once_every_chain_is_done():
    from ray.tune.search import Searcher

    search = distributed.MetagradSearch(mt.objectives.SearchSpace(lr_low=1e-4, lr_high=0.02, momentum_low=0.0), starts=[(0.02, 0.0)])
    config = search.suggest("a")
    assert (config["lr"], config["momentum"]) == pytest.approx((0.02, 0.0), rel=1e-12)
    search.on_trial_complete("a", {"value": 1.0, "dvalue_dlr": -1.0, "dvalue_dmomentum": 1.0})
    assert search.suggest("b") == Searcher.FINISHED


def test_diverged_trials_reach_tensorboard_without_tensorboardx_warnings(ray_cluster, tmp_path, caplog):
    """Runs at η up to 10 on κ = 100 over 100 steps overflow: ℓ_val = inf. TensorBoard gets
    every trial's finite numbers and tensorboardX never warns of an inf it was handed
    (Ray's own logger passed each inf on: one "NaN or Inf found in input tensor." per number)."""
    steep = objectives.get("quadratic", dim=10, kappa=100.0, steps=100)
    space = objectives.SearchSpace(lr_low=1e-3, lr_high=10.0)
    with caplog.at_level("WARNING"):
        result = ray_run(steep, "tpe", 101 * 8, seed=0, space=space, storage=tmp_path / "res")
    overflowed = [t for t in result.trials if t.diverged]
    assert overflowed and all(t.value == math.inf for t in overflowed)
    assert not [r for r in caplog.records if "NaN or Inf" in r.getMessage()]
    logs = _eventually(lambda: list((tmp_path / "res").glob("*/quadratic-tpe-seed0-*/events.out.tfevents.*")),
                       lambda found: len(found) >= len(result.trials))
    assert len(logs) == len(result.trials)


# -- the standing experiment: jobs share one Ray Tune experiment and its warm actors -------------


def _pid_logging(base: objectives.Objective, log: Path) -> objectives.Objective:
    """``base`` whose training, in Ray workers only, appends the worker's pid to ``log`` once
    per run (its first step)."""
    import dataclasses

    driver = os.getpid()

    def train_loss(params, batch=None):
        if os.getpid() != driver:
            with open(log, "a") as out:
                out.write(f"{os.getpid()}\n")
        return base.train_loss(params, batch)

    return dataclasses.replace(base, name="pid-logging", train_loss=train_loss, params={})


def test_consecutive_jobs_run_in_the_same_warm_actor(ray_cluster, tmp_path, quadratic):
    """Three jobs one after the other (the process's standing experiment): every trial of all
    three runs in one actor process, and each job picks the points it picks in-process."""
    logs = [tmp_path / f"pids-{i}.log" for i in range(3)]
    results = [ray_run(_pid_logging(quadratic, log), "tpe", 31 * 3, seed=i, storage=tmp_path / "res")
               for i, log in enumerate(logs)]
    pids = [set(log.read_text().split()) for log in logs]
    assert len(pids[0]) == 1 and pids[0] == pids[1] == pids[2]
    for i, result in enumerate(results):
        local = mt.tune(quadratic, "tpe", 31 * 3, seed=i)
        assert [(t.lr, t.momentum) for t in result.trials] == [(t.lr, t.momentum) for t in local.trials]


def test_jobs_from_two_threads_share_the_experiment_and_keep_their_own_trials(ray_cluster, tmp_path, quadratic):
    """Two jobs submitted at once from two threads run side by side in one experiment; each
    gets exactly its own trials: the points it picks in-process, with their values."""
    from metatune.distributed import standing

    out: dict[int, object] = {}

    def submit(seed: int) -> None:
        out[seed] = ray_run(quadratic, "tpe", 31 * 4, seed=seed, storage=tmp_path / "res")

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len([e for e in standing._experiments if e.key[0] == str(tmp_path / "res")]) == 1
    for seed in (3, 4):
        local = mt.tune(quadratic, "tpe", 31 * 4, seed=seed)
        assert [(t.lr, t.momentum) for t in out[seed].trials] == [(t.lr, t.momentum) for t in local.trials]
        assert [t.value for t in out[seed].trials] == pytest.approx([t.value for t in local.trials], rel=1e-9)


def test_a_job_whose_callback_fails_ends_alone(ray_cluster, tmp_path, quadratic):
    """The error of one job's callback is raised by its own ``run``; the next job on the same
    experiment runs to its end."""

    def broken(trial):
        if trial.number == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ray_run(quadratic, "tpe", 31 * 4, seed=0, callback=broken, storage=tmp_path / "res")
    after = ray_run(quadratic, "tpe", 31 * 3, seed=0, storage=tmp_path / "res")
    assert [t.status for t in after.trials] == ["completed"] * 3


def test_an_idle_experiment_ends_and_the_next_job_starts_another(ray_cluster, tmp_path, quadratic, monkeypatch):
    from metatune.distributed import standing

    monkeypatch.setattr(standing, "IDLE_SECONDS", 1.0)
    ray_run(quadratic, "random", 31 * 2, seed=0, storage=tmp_path / "res")
    (first,) = [e for e in standing._experiments if e.key[0] == str(tmp_path / "res")]
    first.thread.join(timeout=30)
    assert not first.thread.is_alive() and first.search.closed
    result = ray_run(quadratic, "random", 31 * 2, seed=1, storage=tmp_path / "res")
    (second,) = [e for e in standing._experiments if e.key[0] == str(tmp_path / "res")]
    assert second is not first and len(result.trials) == 2
