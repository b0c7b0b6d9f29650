"""schemathesis against the live service's own /openapi.json, with a token: every operation,
examples, coverage, fuzzing and the stateful links between operations, checking that nothing
is a server error and every status, content type and body conforms to the document.

``/events`` is left out: a stream of a queued job (no worker here) lasts until the job ends,
so a generated call to it would wait, not fail; tests/service/test_contract.py reads it.
The longer run (≥ 2,000 cases) is a command in RELIABILITY.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"


def schemathesis_command(url: str, token: str, examples: int, seed: int) -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (the test extra)")
    return [exe, "run", f"{url}/openapi.json", "--header", f"Authorization: Bearer {token}", "--checks", CHECKS,
            "--exclude-path-regex", "/events$", "--max-examples", str(examples), "--workers", "1",
            "--seed", str(seed), "--phases", "examples,coverage,fuzzing,stateful"]


@pytest.mark.slow
def test_schemathesis_finds_nothing(served, tmp_path):
    """30 examples per operation, as a new user would run it: 0 failures, every operation tested."""
    command = schemathesis_command(served.url, "token-alice", examples=30, seed=20261206)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    paths = served.client(owner=None).get("/openapi.json").json()["paths"]
    operations = sum(len(item) for path, item in paths.items() if not path.endswith("/events"))
    assert f"Tested: {operations}" in summary and "failure" not in summary.split("SUMMARY")[-1], summary
