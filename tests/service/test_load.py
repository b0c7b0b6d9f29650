"""The service under a short open-loop load while a worker runs jobs, on SQLite and PostgreSQL:
no request fails, no submitted job is lost or stored twice, every job's trials are numbered
0 … n−1 once each. (Latency and throughput targets are figures of ``metatune bench service``,
not asserted here.) Also the load generator's own parts: the schedule, the mix, the checks."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from metatune_service import bench

RATE, SECONDS = 100.0, 5.0


def test_a_short_open_loop_loses_and_duplicates_nothing(served, worker):
    async def load() -> tuple[list[str], bench.LoadResult]:
        client = bench.RawClient("127.0.0.1", served.port, "token-alice")
        try:
            known = await bench.seed_jobs(client, count=5)
            plan = bench.schedule(RATE, SECONDS, bench.parse_mix(bench.MIX), seed=1)
            return known, await bench.open_loop(client, plan, known, stream_seconds=5.0, stream_interval=0.5,
                                                seed=1)
        finally:
            client.close()

    known, result = asyncio.run(load())
    assert result.error_count == 0, dict(result.errors)
    assert sum(len(v) for v in result.latencies.values()) == result.offered == len(result.lags)
    assert min(result.lags) >= 0
    assert set(result.latencies) == set(bench.ENDPOINTS)  # every kind of request was sent and answered
    assert len(result.submitted) == len(result.latencies["submit"]) > 0
    deadline = time.monotonic() + 120  # until the worker has recorded trials, so that their check means something
    while bench.check_integrity(served.settings.database_url, owner="alice", submitted=result.submitted,
                                known=known).trials == 0:
        assert time.monotonic() < deadline, "the worker recorded no trial"
        time.sleep(0.5)
    integrity = bench.check_integrity(served.settings.database_url, owner="alice", submitted=result.submitted,
                                      known=known)
    assert integrity.ok, integrity


def test_the_server_s_cpu_counts_its_living_children():
    """``serve --processes N``'s CPU is in its children: :func:`bench.cpu_seconds` of a process
    adds theirs (here a child that spins 0.5 s of CPU, then waits)."""
    import subprocess
    import sys

    spin = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\nprint(flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # it has spun
        own = time.process_time()
        assert child.pid in bench.children(os.getpid())
        assert bench.cpu_seconds(os.getpid()) - own >= 0.45
    finally:
        child.communicate(b"")
    assert child.pid not in bench.children(os.getpid())


def test_the_integrity_check_finds_lost_unexpected_and_misnumbered_rows(migrated):
    from metatune.job import TuningJob
    from metatune.point import Point
    from metatune.tuners import Trial
    from metatune_service import crud

    jobs = crud.create_jobs(migrated, owner="alice", specs=[TuningJob("quadratic", "random", budget=12.0,
                                                                       steps=5)] * 2).jobs
    assert crud.claim_job(migrated, worker="w", lease_seconds=60, max_attempts=3).id == jobs[0].id
    trials = [Trial(n, Point.scalar(0.1, 0.9), 1.0, False, 6.0, 6.0 * (n + 1), 0.01, 0.5, True, {}) for n in (0, 2)]
    assert crud.write_trials(migrated, job_id=jobs[0].id, worker="w", trials=trials, lambda_max=None)
    url = migrated.url
    found = bench.check_integrity(url, owner="alice", submitted=[jobs[0].id, "0" * 32])
    assert found.lost == ["0" * 32]
    assert found.unexpected == [jobs[1].id]
    assert found.jobs_with_bad_trials == {jobs[0].id: (2, 2, 2)}  # numbers 0 and 2: one missing
    assert not found.ok
    assert bench.check_integrity(url, owner="alice", submitted=[jobs[1].id, jobs[1].id],
                                 known=[jobs[0].id]).unexpected == [jobs[1].id]  # answered twice


def test_the_schedule_offers_the_rate_and_the_mix():
    mix = bench.parse_mix("job=3,submit=1")
    plan = bench.schedule(200.0, 50.0, mix, seed=3)
    assert abs(len(plan) / 50.0 - 200.0) < 200.0 * 0.05  # Poisson: 10,000 ± 100 expected
    times = [t for t, _ in plan]
    assert times == sorted(times) and 0 < times[0] and times[-1] < 50.0
    share = sum(kind == "submit" for _, kind in plan) / len(plan)
    assert abs(share - 0.25) < 0.02
    uniform = bench.schedule(10.0, 1.0, mix, arrivals="uniform")
    assert [round(t, 9) for t, _ in uniform] == [round(0.1 * k, 9) for k in range(1, 10)]
    assert bench.schedule(200.0, 5.0, mix, seed=3) == bench.schedule(200.0, 5.0, mix, seed=3)


@pytest.mark.parametrize("text", ["", "job", "job=-1", "nothing=1", "job=0"])
def test_a_bad_mix_is_refused_with_what_to_give(text):
    with pytest.raises(ValueError, match="mix"):
        bench.parse_mix(text)


@pytest.mark.parametrize("given, named", [(["--processes", "0"], "--processes=0"), (["--rate", "-1"], "--rate=-1.0"),
                                          (["--duration", "nan"], "--duration=nan"), (["--clients", "0"], "--clients=0"),
                                          (["--stream-interval", "0.01"], "--stream-interval=0.01"),
                                          (["--worker-nice", "20"], "--worker-nice=20"), (["--mix", "job=-1"], "mix=")])
def test_bad_bench_arguments_are_one_line_and_exit_2_before_any_process_starts(capsys, monkeypatch, given, named):
    from metatune import cli

    monkeypatch.setattr(bench, "start_process", lambda *a, **k: pytest.fail("a process was started"))
    assert cli.main(["bench", "service", *given]) == 2
    error = capsys.readouterr().err
    assert error.startswith("metatune bench: error: ") and named in error and error.count("\n") == 1


@pytest.mark.parametrize("reads, shown", [(float("nan"), "saturation: not measured (--saturation-seconds 0)"),
                                          (1234.4, "saturation: 1234 GET /v1/jobs/{id} per second")])
def test_a_phase_without_a_saturation_figure_says_so(capsys, reads, shown):
    row = {"database": "SQLite", "offered": 10, "wall_s": 1.0, "rate": 10.0, "server_cpu": 0.5, "errors": 0,
           "error_samples": [], "submitted": 1, "lost": [], "unexpected": [], "trials": 0, "bad_trials": [],
           "latency": {"job": (9, 1.0, 2.0)}, "lag_ms": (0.1, 0.2), "reads_per_s": reads}
    bench.print_row(row)
    assert shown in capsys.readouterr().out
