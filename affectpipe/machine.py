"""What this process may use of the machine, counted one way everywhere."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's limit,
    which `os.cpu_count` ignores)."""
    return len(os.sched_getaffinity(0))


# Images per forward pass of `extract` and `predict` (CLI and API alike).
DEFAULT_BATCH_SIZE = 64


def default_workers(device: str) -> int:
    """Decode workers of `extract` and `predict` (CLI and API alike): on CPU one decoder
    overlapped with the model (more steal the model's cores); on a GPU all cores but one."""
    return 1 if device == "cpu" else max(2, usable_cores() - 1)
