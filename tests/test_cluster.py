"""A multi-node Ray cluster on this machine: ``ray.cluster_utils.Cluster`` with a head that
declares no CPU (so no trial can run there) and two worker nodes of one logical CPU each,
every node its own raylet, all on 127.0.0.1. The cluster lives in a subprocess of its own
(the test session's embedded Ray stays apart), and so do the jobs' drivers, which attach by
address: a job's trials run on both workers, a worker removed mid-job costs no trial and
records none twice, and ``metatune serve`` attached by ``METATUNE_RAY_ADDRESS`` runs a REST
job on the workers. Nothing of the cluster outlives the module."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable

import pytest

pytest.importorskip("ray")

HOST = r'''
import json, sys, time
from ray.cluster_utils import Cluster

port, temp = int(sys.argv[1]), sys.argv[2]
node = {"node_ip_address": "127.0.0.1", "temp_dir": temp, "include_dashboard": False}


def say(**message):
    print(json.dumps(message), flush=True)


def state():
    return {"address": cluster.address, "head": cluster.head_node.node_id,
            "workers": sorted(n.node_id for n in cluster.worker_nodes)}


cluster = Cluster(initialize_head=True, head_node_args={**node, "gcs_server_port": port, "num_cpus": 0})
for _ in range(2):
    cluster.add_node(num_cpus=1, **node)
cluster.wait_for_nodes()
say(**state())
for line in sys.stdin:
    command, *args = line.split()
    if command == "remove":
        at = time.time()
        victim = next(n for n in cluster.worker_nodes if n.node_id == args[0])
        cluster.remove_node(victim, allow_graceful=False)
        say(removed=args[0], at=at, done=time.time(), **state())
    elif command == "add":
        cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        say(**state())
    else:
        break
cluster.shutdown()
say(shutdown=True)
'''
"""The cluster's process: it starts the head and two workers, prints their address and node
ids as one JSON line, then takes commands on stdin (``remove NODE``, ``add``; anything else
or end of file shuts the cluster down), answering each with a JSON line."""

JOB = r'''
import dataclasses, json, os, sys, time
import ray, torch
torch.set_num_threads(1)
import metatune as mt
from metatune import objectives

spec = json.loads(sys.argv[1])


def say(**message):
    print(json.dumps(message), flush=True)


base = objectives.get("quadratic", dim=10, kappa=100.0, steps=spec["steps"])
objective, driver = base, os.getpid()
if spec.get("delay"):
    def train_loss(params, batch=None):  # in Ray's workers only: log the node and time, then sleep
        if os.getpid() != driver:
            with open(spec["log"], "a") as out:
                out.write(f"{ray.get_runtime_context().get_node_id()} {time.time()}\n")
            time.sleep(spec["delay"])
        return base.train_loss(params, batch)

    objective = dataclasses.replace(base, name="slow-quadratic", train_loss=train_loss, params={})

result = mt.tune(objective, spec["method"], budget=spec["budget"], seed=0, backend="ray",
                 ray_address=spec["address"], concurrency=spec["concurrency"], storage=spec["storage"],
                 max_retries=spec["max_retries"],
                 callback=lambda t: say(trial=t.number, node=t.node, at=time.time()))
ended = time.time()
local = mt.tune(base, spec["method"], budget=spec["budget"], seed=0) if spec.get("local") else None
say(ended=ended, cancelled=result.cancelled, gradient_evals=result.gradient_evals,
    trials=[{"number": t.number, "lr": t.lr, "momentum": t.momentum, "value": t.value,
             "status": t.status.value, "node": t.node} for t in result.trials],
    local=local and [{"lr": t.lr, "momentum": t.momentum, "value": t.value} for t in local.trials],
    nodes=[{"id": n["NodeID"], "alive": n["Alive"], "cpu": n["Resources"].get("CPU", 0.0)}
           for n in ray.nodes()])
'''
"""A job's driver: ``metatune.tune(backend="ray", ray_address=…)`` of the quadratic as told by
the JSON spec in argv[1]; one JSON line per recorded trial, then one with the result (and,
when asked, the same job in-process). ``delay``: seconds of sleep per training step in Ray's
workers, each step logged with its node to ``log``."""


HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
"""The head's checks of its nodes: a node whose raylet has not answered for 3 s is dead (Ray's
default, 3 s × 5, leaves a removed node's trial waiting 15 s to be retried)."""


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of every process here: Ray without tokens, its addresses on loopback
    (otherwise Ray swaps 127.0.0.1 for the machine's outward address, where nothing listens)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "OMP_NUM_THREADS": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lines:
    """The JSON lines a process prints, read by a thread (other lines are skipped)."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                try:
                    self.queue.put(json.loads(line))
                except ValueError:
                    continue
        self.queue.put(None)

    def next(self, timeout: float, why: Callable[[], str]) -> dict[str, Any]:
        try:
            message = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout} s\n{why()}") from None
        assert message is not None, f"the process ended\n{why()}"
        return message


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the process's group, SIGKILL to the group if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def using(folder: Path) -> list[int]:
    """The live processes whose command line or open files lie under ``folder`` (Ray's
    processes rename themselves, ``ray::IDLE``, but keep their logs open there)."""
    marker, found = str(folder), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                continue
            if marker.encode() in (entry / "cmdline").read_bytes() or any(
                    os.readlink(fd).startswith(marker + os.sep) for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


class Cluster:
    """:data:`HOST` run in a session of its own, under a short temp folder of its own (Ray's
    sockets must fit 107 characters)."""

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="mt-cl-"))
        (self.temp / "ray").mkdir()  # RAY_TMPDIR/ray: where Ray writes the current cluster's address
        (self.temp / "host.py").write_text(HOST)
        self.log = self.temp / "host.err"
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(self.temp / "host.py"), str(free_port()), str(self.temp / "ray")],
                env=ray_env(RAY_TMPDIR=str(self.temp), **HEALTH_CHECKS), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        self.lines = Lines(self.process.stdout)
        try:
            self.state = self.lines.next(120, self.errors)
        except BaseException:
            self.shutdown()
            raise

    @property
    def address(self) -> str:
        return self.state["address"]

    @property
    def workers(self) -> list[str]:
        return self.state["workers"]

    def errors(self) -> str:
        return self.log.read_text()[-3000:]

    def command(self, line: str, timeout: float = 60) -> dict[str, Any]:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        self.state = self.lines.next(timeout, self.errors)
        return self.state

    def shutdown(self) -> list[int]:
        """Shut the cluster down (its own way, then its process group); returns the processes
        still using its folder after that (none, unless something escaped), killed since."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop(self.process, grace=10)
        deadline = time.monotonic() + 10
        while (left := using(self.temp)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
        return left


class Job:
    """:data:`JOB` run as a subprocess against the cluster."""

    def __init__(self, cluster: Cluster, folder: Path, **spec: Any) -> None:
        spec = {"address": cluster.address, "storage": str(folder / "results"), "concurrency": 1,
                "max_retries": 2, "steps": 30, **spec}
        self.log = folder / "job.err"
        with open(self.log, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-c", JOB, json.dumps(spec)], env=ray_env(),
                                            stdout=subprocess.PIPE, stderr=err, text=True,
                                            start_new_session=True)
        self.lines = Lines(self.process.stdout)

    def errors(self) -> str:
        return self.log.read_text()[-3000:]

    def next(self, timeout: float) -> dict[str, Any]:
        return self.lines.next(timeout, self.errors)

    def result(self, timeout: float) -> dict[str, Any]:
        """The result line (the trial lines before it skipped)."""
        deadline = time.monotonic() + timeout
        while "ended" not in (message := self.next(max(deadline - time.monotonic(), 0.1))):
            pass
        self.process.wait(timeout=30)
        return message


@pytest.fixture(scope="module")
def cluster():
    started = time.monotonic()
    host = Cluster()
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    yield host
    left = host.shutdown()
    assert not left, f"processes of the cluster outlived it: {left}"


@pytest.fixture
def job(cluster, tmp_path):
    jobs: list[Job] = []

    def start(**spec: Any) -> Job:
        jobs.append(Job(cluster, tmp_path, **spec))
        return jobs[-1]

    yield start
    for each in jobs:
        stop(each.process)


def test_a_jobs_trials_run_on_both_worker_nodes(cluster, job):
    """TPE at concurrency 2 on two one-CPU workers: trials run side by side, so on both
    nodes; each trial names the worker that evaluated it (never the head, where the driver
    is attached and no CPU is declared)."""
    result = job(method="tpe", budget=31 * 6, concurrency=2).result(timeout=120)
    with_cpu = {n["id"] for n in result["nodes"] if n["alive"] and n["cpu"] > 0}
    assert with_cpu == set(cluster.workers) and cluster.state["head"] not in with_cpu
    nodes = [t["node"] for t in result["trials"]]
    assert [t["number"] for t in result["trials"]] == list(range(6))
    assert set(nodes) <= set(cluster.workers) and len(set(nodes)) >= 2, nodes


def test_a_worker_node_removed_mid_trial_costs_no_trial(cluster, job, tmp_path):
    """TPE at concurrency 1, 0.05 s a training step (1.5 s a trial): once two trials are
    recorded and the third trains, its node is removed (its raylet and workers killed). The
    trial is retried on the other worker and recorded once, from there; the job spends its
    whole budget, and its points and values are those of the same job in-process."""
    calls = tmp_path / "calls.log"
    running = job(method="tpe", budget=31 * 5, delay=0.05, log=str(calls), local=True)
    seen = [running.next(timeout=120) for _ in range(2)]
    since = seen[-1]["at"]
    victim = wait_for(lambda: next((node for node, at in steps(calls) if at > since), None), 30,
                      "the third trial trains")
    removed = cluster.command(f"remove {victim}")
    survivor, = removed["workers"]
    result = running.result(timeout=120)
    trials = result["trials"]
    assert [t["number"] for t in trials] == list(range(5))
    assert [(t["lr"], t["momentum"]) for t in trials] == [(t["lr"], t["momentum"]) for t in result["local"]]
    assert [t["value"] for t in trials] == pytest.approx([t["value"] for t in result["local"]], rel=1e-9)
    assert result["gradient_evals"] == 31 * 5 and not result["cancelled"]
    assert {t["status"] for t in trials} <= {"completed", "diverged"}
    on_victim = [at for node, at in steps(calls) if node == victim and at > since]
    # It trained there when the node was removed, fewer steps than a run has, and was recorded from elsewhere:
    assert on_victim and min(on_victim) < removed["at"] < result["ended"] and len(on_victim) < 30
    assert all(t["node"] == survivor for t in trials[2:]), [t["node"] for t in trials]
    cluster.command("add")  # two workers again, for whatever runs next


def test_serve_attached_by_ray_address_runs_a_rest_job_on_the_workers(cluster, tmp_path):
    """`metatune serve` (API and embedded worker) with METATUNE_RAY_ADDRESS: a job posted to it
    succeeds, every trial once, each evaluated on a worker node of the cluster."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    port = free_port()
    env = ray_env(METATUNE_DATABASE_URL=f"sqlite:///{tmp_path / 'metatune.db'}",
                  METATUNE_API_TOKENS="alice:token-alice", METATUNE_RAY_ADDRESS=cluster.address,
                  METATUNE_OUTPUT_DIR=str(tmp_path / "out"), METATUNE_RAY_DIR=str(tmp_path / "ray"),
                  METATUNE_OPTUNA_STORAGE="off", METATUNE_POLL_SECONDS="0.2")
    log = tmp_path / "serve.err"
    with open(log, "w") as err:
        serve = subprocess.Popen([sys.executable, "-m", "metatune.cli", "serve", "--port", str(port)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={"Authorization": "Bearer token-alice"})
    try:
        def answers() -> bool:
            assert serve.poll() is None, log.read_text()[-3000:]
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 60, "`metatune serve` answers")
        created = client.post("/v1/jobs", json={"objective": "quadratic", "method": "tpe", "concurrency": 2,
                                                "objective_params": {"dim": 10, "kappa": 100.0},
                                                "budget": {"inner_steps": 30, "trials": 6}})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        done = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in
                        ("succeeded", "failed", "cancelled") and j, 120, "the job ends")
        assert done["status"] == "succeeded", (done, log.read_text()[-3000:])
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
        assert [t["number"] for t in trials] == list(range(6))
        nodes = {t["node"] for t in trials}
        assert nodes and nodes <= set(cluster.workers), (nodes, cluster.state)
    finally:
        client.close()
        stop(serve)


def steps(log: Path) -> list[tuple[str, float]]:
    """(node id, time) of each training step the slow objective logged."""
    if not log.exists():
        return []
    rows = (line.split() for line in log.read_text().split("\n")[:-1])  # whole lines only
    return [(row[0], float(row[1])) for row in rows if len(row) == 2]


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """``probe()``'s first true value, polled every 0.05 s for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return value
