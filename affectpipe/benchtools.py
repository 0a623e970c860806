"""Measuring helpers shared by the `pipeline bench` commands (extract, heads, blend): the CPU
model, and the memory and CPU time of a process together with its workers (Linux /proc;
zeros elsewhere)."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from pathlib import Path

SAMPLE_SECONDS = 0.2  # how often `TreePeak` samples


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the ")" that ends the command name (state first)."""
    return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (fit workers forked by a fork server included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    tree, frontier = [root], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - set(tree)
        tree += sorted(frontier)
    return tree


def tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants now."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((Path("/proc") / str(pid) / "statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root` and its live descendants, each with the children
    it has reaped (a pool's finished workers count with the process that waited for them)."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(pid)
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class TreePeak:
    """Context manager sampling the summed resident memory of process `root` (default: this
    one) and its descendants every SAMPLE_SECONDS in a thread; `.peak` is the largest sum
    seen (workers' peaks count only when they coincide, unlike summing each one's VmHWM)."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def sample(self) -> None:
        self.peak = max(self.peak, tree_rss(self.root))

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
