"""The Ray the trials run on: an embedded local Ray started on first use, or a cluster by address.

The embedded Ray is sized to the machine, quiet (no dashboard, worker output not copied to
the driver, warnings only), writes token-free (``RAY_AUTH_MODE=disabled``) and keeps its
session files under one folder (default ``~/.cache/metatune/ray``; ``METATUNE_RAY_DIR`` or
``root=`` change it), never /tmp/ray. ``RAY_ADDRESS`` or ``address=`` attach to a running
cluster instead (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on
the others). :func:`shutdown` stops only a Ray that :func:`ensure_ray` started.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from pathlib import Path

from metatune import checks
from metatune.errors import invalid

SOCKET_ROOM = 44
"""Longest temp folder Ray accepts: its session folder and socket names add about 62
characters, and a Unix socket path holds at most 107."""

def default_root() -> Path:
    """``METATUNE_RAY_DIR``, else ``~/.cache/metatune/ray``."""
    return Path(os.environ.get("METATUNE_RAY_DIR") or Path.home() / ".cache" / "metatune" / "ray")


def temp_dir(root: Path) -> str:
    """``root/tmp``, or a short folder of its own when that path leaves no room for Ray's sockets."""
    path = (root / "tmp").absolute()
    if len(str(path)) <= SOCKET_ROOM:
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return tempfile.mkdtemp(prefix="metatune-ray-")


def ensure_ray(address: str | None = None, *, root: str | Path | None = None, num_cpus: int | None = None,
               num_gpus: int | None = None) -> bool:
    """Connect to Ray once per process: to ``address`` (or ``RAY_ADDRESS``) when given, else
    to an embedded local Ray. Returns True when this call started or attached to it.

    Args:
        address: "host:port" of a running cluster's head, or "auto".
        root: folder for the embedded Ray's session files (default :func:`default_root`).
        num_cpus, num_gpus: what the embedded Ray declares (default: what the machine has).
    """
    import ray

    checks.instance("ray_address", address, str, "'host:port' of a running Ray cluster's head, or 'auto'",
                    optional=True)
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        checks.integer(name, value, low=0, optional=True)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as error:
            raise invalid("ray_address", address, f"the address of a running Ray cluster ({error})") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _temp_dir=temp_dir(Path(root) if root else default_root()), **quiet)
        atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Stop the embedded Ray this process started, or disconnect from a cluster (which goes on running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
