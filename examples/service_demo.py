"""The README's main job: start the service (SQLite file, local Ray), run a comparison over
REST with a progress bar, print its table and where its plots are, then the dashboard's
address (and the optuna-dashboard command for the same jobs). In a terminal the service keeps
serving the dashboard until Ctrl-C; with --no-wait, or when not run in a terminal (CI,
scripts), it stops at once.

    python examples/service_demo.py [--budget 5000] [--seeds 2] [--no-wait]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="mlp-digits")
    parser.add_argument("--methods", default="metagrad,tpe,random")
    parser.add_argument("--budget", default="5000")
    parser.add_argument("--seeds", default="2")
    parser.add_argument("--out", default="metatune-out")
    parser.add_argument("--no-wait", action="store_true", help="stop the service once the comparison has ended")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "METATUNE_DATABASE_URL": f"sqlite:///{out / 'demo.db'}", "METATUNE_API_TOKENS": f"demo:{token}",
           "METATUNE_OUTPUT_DIR": str(out / "service"), "OMP_NUM_THREADS": "1"}
    metatune = [sys.executable, "-m", "metatune.cli"]
    server = subprocess.Popen([*metatune, "serve", "--port", str(port)], env=env)
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise SystemExit("the service did not start within 60 s")
        # --token=VALUE: a random token may start with "-", which argparse would take for an option
        code = subprocess.call([*metatune, "compare", "--server", url, f"--token={token}",
                                "--objective", args.objective, "--methods", args.methods, "--budget", args.budget,
                                "--seeds", args.seeds, "--out", str(out)], env=env)
        optuna_dashboard = Path(sys.executable).parent / "optuna-dashboard"
        print(f"\ndashboard: {url}/ui  (sign in with the token {token})\n"
              f"the same jobs in optuna-dashboard: {optuna_dashboard} sqlite:///{out / 'demo-optuna.db'}")
        if sys.stdin.isatty() and not args.no_wait:
            print("serving the dashboard until Ctrl-C …", flush=True)
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        return code
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # a graceful stop: the worker hands its job back, Ray shuts down
        server.wait(timeout=60)
        print(f"service stopped; its database: {out / 'demo.db'}")


if __name__ == "__main__":
    sys.exit(main())
