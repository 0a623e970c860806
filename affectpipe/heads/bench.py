"""`pipeline bench heads`: time the default heads run on a synthetic cache, next to references.

The reference for each (task, feature set) is a plain scikit-learn fit on the standardised
raw features (no PCA): Ridge for VA, LogisticRegression for EXPR (multinomial, our class
weights) and one LogisticRegression per AU (our positive weights), on at most
`reference_rows` train rows for the classifiers and REFERENCE_VA_ROWS for the ridge (a seeded
subsample, named in the table: at 1M rows the raw train matrix alone would be ~3 GB). Heads
should score within 0.02 of it.

Peak memory is the largest summed resident set of this process, the fork server and the fit
workers, sampled during the run (`benchtools.TreePeak`); the main process's own peak
(VmHWM, reset after the synthetic cache is prepared) is shown beside it.
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from affectpipe import __version__
from affectpipe.benchtools import SAMPLE_SECONDS, TreePeak, cpu_model, tree_cpu_seconds
from affectpipe.config import DatasetPaths
from affectpipe.features import read_feature_file
from affectpipe.featuresets import (
    DEFAULT_CHUNK_ROWS,
    clear_cache,
    load_feature_set,
    parse_feature_set,
)
from affectpipe.heads.fitting import label_rows
from affectpipe.heads.synthetic import SCALES, STORAGE_DTYPE, write_synthetic_cache
from affectpipe.heads.training import HeadsResult, train
from affectpipe.machine import usable_cores
from affectpipe.manifest import read_manifest
from affectpipe.tasks import class_weights, get_task, pos_weights

BENCH_SEED = 0
GENERATOR_VERSION = 3  # bump when the synthetic generator changes, so old caches regenerate
REFERENCE_VA_ROWS = 200_000  # train rows of the ridge reference (all of them at full scale)


def prepare_cache(workdir: Path, scale: str) -> DatasetPaths:
    """The synthetic cache for `scale`, generated unless an identical one exists."""
    paths = DatasetPaths(workdir / f"heads-{scale}")
    stamp_path = paths.root / "bench-stamp.json"
    stamp = {"scale": scale, "seed": BENCH_SEED, "generator": GENERATOR_VERSION}
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return paths
    write_synthetic_cache(paths, SCALES[scale], seed=BENCH_SEED)
    stamp_path.write_text(json.dumps(stamp))
    return paths


def _machine() -> str:
    cores = usable_cores()
    load = os.getloadavg()[0]
    return f"{cpu_model()}, {cores} cores usable, load average {load:.1f} at start"


def _ridge_reference(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import Ridge

    return np.clip(Ridge(alpha=1.0).fit(X_train, y_train).predict(X_val), -1, 1)


def _logistic_reference(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    weights = dict(enumerate(class_weights(y_train)))
    model = LogisticRegression(max_iter=300, class_weight=weights).fit(X_train, y_train)
    pred = np.zeros((len(X_val), 8))
    pred[:, model.classes_] = model.predict_proba(X_val)
    return pred


def _per_au_logistic_reference(
    X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    pw = pos_weights(y_train)
    pred = np.zeros((len(X_val), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        rows = y_train[:, j] >= 0
        model = LogisticRegression(max_iter=300, class_weight={0: 1.0, 1: pw[j]})
        pred[:, j] = model.fit(X_train[rows], y_train[rows, j]).predict_proba(X_val)[:, 1]
    return pred


# The scikit-learn reference fit of each task, and a cap on its train rows where it has one.
REFERENCE_FITS = {
    "va": _ridge_reference,
    "expr": _logistic_reference,
    "au": _per_au_logistic_reference,
}
REFERENCE_ROWS = {"va": REFERENCE_VA_ROWS}


def _reference_score(
    paths: DatasetPaths, manifest, task_name: str, spec: str, max_rows: int
) -> tuple[float, float, str]:
    """(score, seconds, note) of the scikit-learn reference fit on the raw features."""
    from sklearn.preprocessing import StandardScaler

    task = get_task(task_name)
    loaded = load_feature_set(paths, parse_feature_set(spec), manifest)
    y, valid = label_rows(manifest, task_name, strict=False)
    split = manifest["split"].to_numpy(dtype=object)
    train_rows = np.flatnonzero(valid & loaded.ok & (split == "train"))
    val_rows = np.flatnonzero(valid & loaded.ok & (split == "val"))
    note = ""
    max_rows = REFERENCE_ROWS.get(task_name, max_rows)
    if max_rows and len(train_rows) > max_rows:
        rng = np.random.default_rng(BENCH_SEED)
        train_rows = np.sort(rng.choice(train_rows, max_rows, replace=False))
        note = f"subsample {max_rows}"
    start = time.perf_counter()
    X_train, X_val = loaded.take(train_rows), loaded.take(val_rows)
    scaler = StandardScaler().fit(X_train)
    X_train, X_val = scaler.transform(X_train), scaler.transform(X_val)
    pred = REFERENCE_FITS[task_name](X_train, y[train_rows], X_val)
    seconds = time.perf_counter() - start
    return task.score(y[val_rows], pred)[task.main_metric], seconds, note


def _io_floor(paths: DatasetPaths, result: HeadsResult) -> float:
    """Seconds to read every HDF5 part the run used, once, in chunks (OS page cache warm)."""
    clear_cache()
    parts = {part for r in result.results for part in parse_feature_set(r.features).parts}
    start = time.perf_counter()
    for backbone, part in sorted(parts):
        handle = read_feature_file(paths.features(backbone))
        with handle.reader(part) as read:
            for first in range(0, len(handle.images), DEFAULT_CHUNK_ROWS):
                read(slice(first, first + DEFAULT_CHUNK_ROWS))
    return time.perf_counter() - start


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux: clear_refs 5); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss(pid: int | str = "self") -> int:
    """Peak resident set (VmHWM) of a process in bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _memory_line(tree_peak: int, main: int, reset: bool) -> str:
    how = "" if reset else " (peak not reset: includes preparing the cache)"
    return (
        f"- peak RSS: **{tree_peak / 2**30:.2f} GiB** for the process, the fork server and the "
        f"fit workers together (sampled every {SAMPLE_SECONDS} s); main process alone "
        f"{main / 2**30:.2f} GiB (VmHWM{how})"
    )


def _temporal_line(result: HeadsResult) -> str:
    """The temporal candidates' share of the run (each fit runs on one thread)."""
    temporal = [r for r in result.results if r.model == "temporal"]
    if not temporal:
        return "- temporal candidates: none in this run"
    wall = sum(r.fit_seconds for r in temporal)
    cpu = sum(r.cpu_seconds for r in temporal)
    return (
        f"- temporal candidates ({len(temporal)}, one per task): {wall:.2f} s fit wall "
        f"summed over the candidates, {cpu:.2f} s CPU"
    )


def run_bench(
    workdir: Path,
    *,
    scale: str,
    reference_rows: int,
    temporal: bool = False,
    progress: bool = True,
) -> Iterator[str]:
    """Run the benchmark; yields its report as markdown in two parts (the run, then the table
    with the references), so the first shows before the references are fitted. Without
    `temporal` the default temporal candidates are left out (minutes at full scale, see
    benchmarks.md)."""
    machine = _machine()
    paths = prepare_cache(Path(workdir), scale)
    cache_bytes = sum(f.stat().st_size for f in paths.features_dir.glob("*.h5"))
    config = Path(workdir) / f"bench-temporal-{str(temporal).lower()}.toml"
    config.write_text(f"[heads]\ntemporal = {str(temporal).lower()}\n")
    clear_cache()
    gc.collect()
    reset = _reset_peak_rss()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    all_cpu_start = tree_cpu_seconds(os.getpid())
    with TreePeak() as tree:
        result = train(paths, run="bench", config_path=config, progress=progress, fresh=True)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    all_cpu = tree_cpu_seconds(os.getpid()) - all_cpu_start
    memory = _memory_line(tree.peak, _peak_rss(), reset)
    load_after = os.getloadavg()[0]
    io_floor = _io_floor(paths, result)
    manifest = read_manifest(paths.manifest)

    command = "pipeline bench heads " + shlex.join(sys.argv[3:]) if len(sys.argv) > 3 else ""
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.stage_seconds.items())
    which = "default candidates" + ("" if temporal else " without the temporal ones")
    lines = [
        f"## heads benchmark ({scale} scale, affectpipe {__version__})",
        "",
        f"- command: `{command or 'pipeline bench heads --scale ' + scale}`",
        f"- machine: {machine}, {load_after:.1f} after the run",
        f"- rows: {len(manifest):,} manifest rows; {len(result.results)} {which}",
        f"- feature cache: {cache_bytes / 2**30:.2f} GiB on disk ({STORAGE_DTYPE} storage)",
        f"- default run end to end: **{wall:.2f} s wall**; CPU {all_cpu:.2f} s in all "
        f"processes, {cpu:.2f} s of it in the main one (the fits' own CPU time is in the "
        "per-candidate column)",
        f"- stages (main process; fits overlap loading and scaling): {stages}",
        memory,
        _temporal_line(result),
        f"- I/O floor (read every feature part once, page cache warm): {io_floor:.2f} s",
        "",
    ]
    yield "\n".join(lines)  # the run's numbers first: the references take minutes
    references: dict[tuple[str, str], tuple[float, float, str]] = {}
    for r in result.results:
        key = (r.task, r.features)
        if key not in references:
            references[key] = _reference_score(paths, manifest, r.task, r.features, reference_rows)
    clear_cache()
    lines = [
        "| task | candidate | fit s (wall) | fit s (CPU) | val score | reference | ref fit s "
        "| head - ref |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.results:
        task = get_task(r.task)
        score = r.scores.get(task.main_metric, float("nan"))
        ref, ref_seconds, note = references[(r.task, r.features)]
        ref_text = f"{ref:.4f}" + (f" ({note})" if note else "")
        lines.append(
            f"| {r.task} | {r.candidate} | {r.fit_seconds:.2f} | {r.cpu_seconds:.2f} "
            f"| {score:.4f} | {ref_text} "
            f"| {ref_seconds:.1f} | {score - ref:+.4f} |"
        )
    yield "\n".join(lines)
