"""What this process may use of the machine, counted one way everywhere."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's limit,
    which `os.cpu_count` ignores)."""
    return len(os.sched_getaffinity(0))
