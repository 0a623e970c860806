"""`pipeline bench blend`: time blend tuning on synthetic validation-scale predictions."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

from affectpipe.blend.synthetic import synthetic_task
from affectpipe.blend.tasks import rules_for
from affectpipe.blend.tuning import BlendOptions, tune_task


@dataclass(frozen=True)
class BenchRow:
    task: str
    candidates: int
    seconds: float  # wall time: tuning on all rows plus every cross-fit fold
    cpu_seconds: float  # this process's CPU time (workers not counted)
    best_single: float
    tuned_score: float
    crossfit_score: float


def bench_blend(
    *,
    n_rows: int = 26876,
    n_videos: int = 70,
    n_candidates: int = 7,
    seed: int = 0,
    n_jobs: int = 1,
) -> list[BenchRow]:
    """Tune weights, correction, thresholds and smoothing, and cross-fit, for each task.

    Wall time per task, including starting the worker processes on the first task.
    """
    options = BlendOptions(seed=seed, n_jobs=n_jobs)
    rows = []
    for task in ("va", "expr", "au"):
        data = synthetic_task(
            task, n_rows=n_rows, n_videos=n_videos, n_candidates=n_candidates, seed=seed
        )
        rules = rules_for(task)
        start, start_cpu = time.perf_counter(), time.process_time()
        fitted, (outputs, _) = tune_task(
            rules, data.candidates, data.labels, data.groups, data.frames, options
        )
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        labelled = rules.labelled(data.labels)
        identity = rules.identity_post()
        single = max(
            rules.score(data.labels[labelled], rules.decide(c[labelled], identity))
            for c in data.candidates
        )
        rows.append(
            BenchRow(
                task,
                n_candidates,
                seconds,
                cpu,
                single,
                fitted.final_score,
                rules.score(data.labels, outputs),
            )
        )
    return rows


def markdown(rows: list[BenchRow], command: str, n_rows: int, n_videos: int, n_jobs: int) -> str:
    total = sum(r.seconds for r in rows)
    total_cpu = sum(r.cpu_seconds for r in rows)
    lines = [
        f"`{command}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {n_jobs} worker(s); "
        f"synthetic predictions, {n_rows} validation rows in {n_videos} videos",
        "",
        "| task | candidates | tune + cross-fit, wall (s) | CPU (s) | best single | tuned (val) "
        "| cross-fitted |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.task} | {r.candidates} | {r.seconds:.2f} | {r.cpu_seconds:.2f} | "
        f"{r.best_single:.4f} | {r.tuned_score:.4f} | {r.crossfit_score:.4f} |"
        for r in rows
    ]
    lines.append(f"| **all** | | **{total:.2f}** | {total_cpu:.2f} | | | |")
    return "\n".join(lines)
