"""Entry points of installed packages: what the ``metatune`` command finds beyond the library."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any


def load(group: str, who: str) -> list[Any]:
    """The objects of entry-point ``group`` that import; one that fails to import is named on
    stderr (as ``who``'s) and skipped, so that the library's own commands still work."""
    found = []
    for point in entry_points(group=group):
        try:
            found.append(point.load())
        except ImportError as error:
            print(f"{who}: {point.name} ({point.value}) skipped: {error}", file=sys.stderr)
    return found
