"""The Ray the trials run on: an embedded local Ray started on first use, or a cluster by address.

The embedded Ray is sized to the machine, quiet (no dashboard, worker output not copied to
the driver, warnings only), writes token-free (``RAY_AUTH_MODE=disabled``), listens on
127.0.0.1 only (``host=`` or ``METATUNE_RAY_HOST`` give another address, for a Ray that other
machines join) and keeps its session files under one folder (default
``~/.cache/metatune/ray``; ``METATUNE_RAY_DIR`` or ``root=`` change it), never /tmp/ray.

Its processes and its session folder (logs, sockets, Ray Tune's staging: megabytes a start)
end with the process that started it: :func:`shutdown` (also at exit) stops them and removes
the folder; a watchdog process does the same when that process is killed (Ray's gcs and
raylet die with it, but its dashboard and runtime-env agents outlive the raylet by a minute
and the folder would stay for good); and each start sweeps the sessions under its folder
whose owner has died (:func:`sweep`). Processes are found through ``/proc`` (Linux); elsewhere
only Ray's own shutdown applies.

``RAY_ADDRESS`` or ``address=`` attach to a running cluster instead (``ray start --head`` on
one machine, ``ray start --address=HEAD:6379`` on the others). :func:`shutdown` stops only a
Ray that :func:`ensure_ray` started.
"""

from __future__ import annotations

import atexit
import getpass
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

# Only the standard library at module level: the watchdog loads this file on its own.

SOCKET_ROOM = 44
"""Longest temp folder Ray accepts: its session folder and socket names add about 62
characters, and a Unix socket path holds at most 107."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WATCHDOG = """\
import importlib.util, pathlib, sys
sys.stdin.buffer.read()  # end of file: the process that starts the Ray has ended (or stopped it)
spec = importlib.util.spec_from_file_location("metatune_ray_watchdog", sys.argv[1])
cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cluster)
cluster.reap_owned(pathlib.Path(sys.argv[2]), int(sys.argv[3]))
"""
"""The watchdog's program: it waits on a pipe only its starter holds open, then reaps the
sessions its starter made (:func:`reap_owned`), in a bare Python with this file: no torch, no Ray."""


class _Started:
    """The session folder of the embedded Ray this process started, and its watchdog (started
    before Ray, so that a kill while Ray starts is covered too)."""

    session: Path | None = None
    watchdog: subprocess.Popen | None = None


_started = _Started()


def default_root() -> Path:
    """``METATUNE_RAY_DIR``, else ``~/.cache/metatune/ray``."""
    return Path(os.environ.get("METATUNE_RAY_DIR") or Path.home() / ".cache" / "metatune" / "ray")


def default_host() -> str:
    """``METATUNE_RAY_HOST``, else 127.0.0.1 (nothing outside this machine reaches the Ray)."""
    return os.environ.get("METATUNE_RAY_HOST") or "127.0.0.1"


def temp_dir(root: Path) -> str:
    """``root/tmp``, or, when that path leaves no room for Ray's sockets, a short folder of
    its own under the system's temp folder, the same for the same root and user (so that
    :func:`sweep` finds what an earlier start left there)."""
    path = (root / "tmp").absolute()
    if len(str(path)) > SOCKET_ROOM:
        key = hashlib.sha256(f"{getpass.getuser()}:{path}".encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"metatune-ray-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def ensure_ray(address: str | None = None, *, root: str | Path | None = None, num_cpus: int | None = None,
               num_gpus: int | None = None, host: str | None = None) -> bool:
    """Connect to Ray once per process: to ``address`` (or ``RAY_ADDRESS``) when given, else
    to an embedded local Ray. Returns True when this call started or attached to it.

    Args:
        address: "host:port" of a running cluster's head, or "auto".
        root: folder for the embedded Ray's session files (default :func:`default_root`).
        num_cpus, num_gpus: what the embedded Ray declares (default: what the machine has).
        host: the address the embedded Ray listens on (default :func:`default_host`).
    """
    import ray

    from metatune import checks
    from metatune.errors import invalid

    checks.instance("ray_address", address, str, "'host:port' of a running Ray cluster's head, or 'auto'",
                    optional=True)
    checks.instance("host", host, str, "an address of this machine, such as '127.0.0.1'", optional=True)
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        checks.integer(name, value, low=0, optional=True)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _node_address(address.rpartition(":")[0] or address)  # a loopback head is reached on loopback
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:
            raise invalid("ray_address", address, f"the address of a running Ray cluster ({error})") from None
        return True
    temp = temp_dir(Path(root) if root else default_root())
    sweep(Path(temp))
    _started.watchdog = _watch(Path(temp))
    atexit.register(shutdown)
    try:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _temp_dir=temp,
                 _node_ip_address=_node_address(host or default_host()), **quiet)
    except BaseException:
        shutdown()  # the watchdog removes what the failed start left
        raise
    _started.session = Path(ray._private.worker._global_node.get_session_dir_path())
    return True


def _node_address(host: str) -> str:
    """The node address for ``ray.init``. Ray's servers listen on 127.0.0.1 alone only when
    the node address is 127.0.0.1, and Ray swaps a loopback address for the machine's outward
    one unless its multi-machine mode is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when
    Ray is imported: set for the processes Ray starts, and on the module already imported)."""
    if host not in LOOPBACK:
        return host
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    return "127.0.0.1"


def _watch(temp: Path) -> subprocess.Popen:
    """Start the watchdog (:data:`WATCHDOG`) of the sessions this process makes under Ray's temp
    folder ``temp``, in a session of its own, so that a signal to this process's group leaves
    it to clean up after the group."""
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, __file__, str(temp), str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def shutdown() -> None:
    """Stop this process's standing Ray Tune experiments, then the embedded Ray it started (its
    processes, its session folder and its watchdog), or disconnect from a cluster (which goes
    on running)."""
    import ray

    if "metatune.distributed.standing" in sys.modules:
        sys.modules["metatune.distributed.standing"].stop_all()
    if ray.is_initialized():
        ray.shutdown()
    session, watchdog = _started.session, _started.watchdog
    _started.session = _started.watchdog = None
    if session is not None:
        reap(session)
    if watchdog is not None:
        watchdog.stdin.close()  # its end of file: it finds nothing left to do and exits
        try:
            watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watchdog.kill()


def session_owner(session: Path) -> tuple[int, float] | None:
    """The pid of the process that started a Ray session and when the session was made (seconds
    since the epoch), from its folder's name (``session_2026-12-06_12-03-45_270350_13403``)."""
    stamp, _, pid = session.name.removeprefix("session_").rpartition("_")
    try:
        return int(pid), datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S_%f").timestamp()
    except ValueError:
        return None


def live(session: Path) -> bool:
    """Whether a Ray session is in use: the process that started it runs (not a process that
    reuses its pid, started after the session was made), or its raylet does (a Ray started
    by ``ray start``, whose starter has ended)."""
    owner = session_owner(session)
    if owner is not None and _running_since(owner[0], owner[1]):
        return True
    return any(_name(pid) == "raylet" for pid in session_processes(session))


def _running_since(pid: int, made: float) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    started = _start_time(pid)
    return started is None or started <= made + 1.0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc; None elsewhere."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def session_processes(session: Path) -> list[int]:
    """The processes (other than this one) whose command line or open files name ``session``:
    Ray's processes rename themselves (``ray::DashboardAgent``) but keep their logs open there."""
    proc, marker, me = Path("/proc"), str(session), os.getpid()
    found = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            named = marker.encode() in (entry / "cmdline").read_bytes() or any(
                os.readlink(fd).startswith(marker + os.sep) for fd in (entry / "fd").iterdir())
        except OSError:  # ended meanwhile, or another user's
            continue
        if named:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap(session: Path, grace: float = 5.0) -> None:
    """Kill what is left of a Ray session whose owner has ended, wait up to ``grace`` seconds
    for it to go, and remove the session's folder."""
    pids = session_processes(session)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(session, ignore_errors=True)
    latest = session.parent / "session_latest"
    if latest.is_symlink() and not latest.exists():
        latest.unlink(missing_ok=True)


def reap_owned(temp: Path, owner: int) -> None:
    """:func:`reap` the sessions under Ray's temp folder ``temp`` that process ``owner`` made."""
    for session in temp.glob("session_*"):
        made = session_owner(session)
        if made is not None and made[0] == owner and not session.is_symlink():
            reap(session)


def sweep(temp: Path) -> list[Path]:
    """:func:`reap` the sessions under Ray's temp folder ``temp`` that are no longer
    :func:`live`; returns them."""
    stale = [session for session in sorted(temp.glob("session_*"))
             if not session.is_symlink() and session.is_dir() and not live(session)]
    for session in stale:
        reap(session)
    return stale
