"""`pipeline bench blend`: the whole `pipeline blend` on a synthetic run, timed by stage.

The run (manifest, every task's prediction files and the run record, as `pipeline heads`
leaves them) is written first; then `pipeline blend` runs in a child process, so that its
wall time and peak RSS (`getrusage(RUSAGE_CHILDREN)`: the process and its workers) are its
own, not the data generator's.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from affectpipe.benchtools import SAMPLE_SECONDS, cpu_model, tree_rss
from affectpipe.blend.synthetic import write_scaled_run
from affectpipe.blend.tuning import blend_processes
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.machine import usable_cores


@dataclass(frozen=True)
class Scale:
    """Validation rows, test rows and how the test list is laid out."""

    n_val: int
    n_test: int
    layout: str  # "mtl": one MTL list (s-Aff-Wild2); "tasks": per-task lists (Aff-Wild2)


# s: s-Aff-Wild2 (26,876 val rows, the 51,159-row MTL list); larger sizes: the full
# Aff-Wild2's per-task tracks, ~0.4 validation rows per test row.
SCALES = {"s": Scale(26_876, 51_159, "mtl")}
VAL_PER_TEST = 0.4


def parse_rows(text: str) -> Scale:
    """'s', or test rows as a count with an optional k/m suffix ('1m', '250k', '80000')."""
    text = text.strip().lower()
    if text in SCALES:
        return SCALES[text]
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        n_test = int(float(text.rstrip("km")) * factor)
    except ValueError:
        raise InputError(f"--rows: expected 's' or a row count such as 1m, not {text!r}") from None
    if n_test < 1000:
        raise InputError("--rows: at least 1000 test rows")
    return Scale(int(n_test * VAL_PER_TEST), n_test, "tasks")


@dataclass(frozen=True)
class BenchResult:
    scale: Scale
    wall: float  # the `pipeline blend` child process, start to exit
    peak_rss: int  # bytes, the largest single process (getrusage)
    tree_peak_rss: int  # bytes, the process and its workers together (sampled; 0 without /proc)
    cpu: float  # user + system seconds of the child and its workers (less load-sensitive)
    stage_seconds: dict[str, float]
    scores: dict[str, dict[str, float]]
    choices: dict[str, str]
    test_lists: dict[str, int]  # submission file -> data lines
    load_before: float  # 1-minute load average just before the blend started


def prepare(workdir: Path, scale: Scale, n_candidates: int, seed: int) -> DatasetPaths:
    """The synthetic run for `scale` under `workdir`, written unless already there."""
    name = f"blend-{scale.layout}-{scale.n_val}-{scale.n_test}-{n_candidates}-{seed}"
    paths = DatasetPaths.of(workdir, name)
    done = paths.root / "bench-ready"
    if not done.exists():
        write_scaled_run(
            paths,
            n_val=scale.n_val,
            n_test=scale.n_test,
            layout=scale.layout,
            n_candidates=n_candidates,
            seed=seed,
        )
        done.write_text("ok\n")
    return paths


def bench_blend(
    workdir: Path, scale: Scale, *, n_candidates: int = 7, seed: int = 0, n_jobs: int = 0
) -> BenchResult:
    """Prepare the run, then time `pipeline blend` (defaults, report included) on it."""
    paths = prepare(workdir, scale, n_candidates, seed)
    out = paths.root / "submission"
    command = [
        sys.executable, "-m", "affectpipe.pipeline", "--cache-dir", str(workdir),
        "blend", "--dataset", paths.root.name, "--jobs", str(n_jobs), "--out", str(out),
    ]  # fmt: skip
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        tree_peak = 0
        while child.poll() is None:  # the workers' memory adds up: sample the whole tree
            tree_peak = max(tree_peak, tree_rss(child.pid))
            time.sleep(SAMPLE_SECONDS)
        wall = time.perf_counter() - start
        errors.seek(0)
        stderr = errors.read()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss = usage.ru_maxrss * 1024  # KiB on Linux
    if child.returncode != 0:
        raise AffectpipeError(f"pipeline blend failed ({child.returncode}):\n{stderr[-3000:]}")
    document = json.loads((paths.blend_dir("default") / "blend.json").read_text())
    lines = {}
    for entry in document["submission_files"]:
        with open(entry["path"], "rb") as handle:
            lines[Path(entry["path"]).name] = sum(1 for _ in handle) - 1  # less the header
    return BenchResult(
        scale,
        wall,
        peak_rss,
        tree_peak,
        usage.ru_utime + usage.ru_stime,
        document["stage_seconds"],
        document["scores"],
        {task: entry["choice"] for task, entry in document["tasks"].items()},
        lines,
        load_before,
    )


def markdown(result: BenchResult, command: str, n_candidates: int, n_jobs: int) -> str:
    scale = result.scale
    workers = blend_processes(n_jobs, scale.n_val)
    stages = dict(result.stage_seconds)
    within = {k: stages.pop(k) for k in list(stages) if k.split()[0] in ("tune", "crossfit")}
    # A task's fits run beside the next task's load and the previous one's apply: the main
    # thread's time is the other stages plus its waits for the fits.
    accounted = sum(spent for name, spent in stages.items() if name.split()[0] != "fit")
    layout = "one MTL test list" if scale.layout == "mtl" else "per-task test lists"
    written = ", ".join(f"{name} {n:,} lines" for name, n in result.test_lists.items())
    lines = [
        f"`{command}` on {cpu_model()}, {usable_cores()} CPUs "
        f"(load average {result.load_before:.2f} just before), Python "
        f"{platform.python_version()}, {workers} worker(s){'' if n_jobs else ' (auto)'}; "
        "synthetic run: "
        f"{scale.n_val:,} validation rows, {scale.n_test:,} test rows ({layout}), "
        f"{n_candidates} candidates per task",
        "",
        f"- `pipeline blend` end to end: **{result.wall:.1f} s wall**, {result.cpu:.1f} s CPU; "
        f"peak RSS **{result.tree_peak_rss / 2**30:.2f} GiB** for the process and its "
        f"workers together (sampled every {SAMPLE_SECONDS} s), "
        f"{result.peak_rss / 2**30:.2f} GiB for the largest one (getrusage)",
        "- stages (s; each task's fits run beside the next task's load and the previous "
        "task's apply): "
        + ", ".join(f"{name} {spent:.2f}" for name, spent in stages.items())
        + f"; start-up, imports and the rest {result.wall - accounted:.2f}",
        f"- within the fits ({'summed over the workers, ' if workers > 1 else ''}s): "
        + ", ".join(f"{name} {spent:.2f}" for name, spent in within.items()),
        f"- written: {written}",
        "",
        "| task | best single | tuned (val) | cross-fitted | single x-fit | uses |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {task} | {s['best_single']:.4f} | {s['tuned']:.4f} | {s['crossfit']:.4f} "
        f"| {s['single_crossfit']:.4f} | {result.choices[task]} |"
        for task, s in result.scores.items()
    ]
    return "\n".join(lines)
