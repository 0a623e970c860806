"""LightGBM next to the linear and MLP heads of the same feature set, for docs/benchmarks.md.

Loads and scales one feature set of the synthetic s-Aff-Wild2-scale cache once (as `pipeline
heads` does), then fits each candidate through `fitting.fit_candidate` (the code path of
`pipeline heads`, same early-stopping split) and prints fit wall, fit CPU (all threads) and
the validation score, with the load average. Run it with OMP_NUM_THREADS=1 to give LightGBM
one thread, as in `pipeline heads`' worker processes on 2 cores. Usage:

    OMP_NUM_THREADS=1 python benchmarks/lightgbm_heads.py WORKDIR \
        [--features mt-emotieffnet:embedding+logits] [--models linear,mlp,lightgbm] \
        [--tasks va,expr,au] [--params '{"learning_rate": 0.25}']
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from affectpipe.featuresets import load_feature_set, parse_feature_set
from affectpipe.heads.bench import prepare_cache
from affectpipe.heads.candidates import Candidate
from affectpipe.heads.fitting import Rows, fit_candidate
from affectpipe.heads.training import scale_features
from affectpipe.manifest import read_manifest
from affectpipe.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--features", default="mt-emotieffnet:embedding+logits")
    parser.add_argument("--models", default="linear,mlp,lightgbm")
    parser.add_argument("--tasks", default="va,expr,au")
    parser.add_argument("--params", default="{}", help="LightGBM parameters (JSON)")
    args = parser.parse_args()
    tasks, params = args.tasks.split(","), json.loads(args.params)

    paths = prepare_cache(args.workdir, "full")
    manifest = read_manifest(paths.manifest)
    rows = Rows.of(manifest, tasks, strict=False)
    features = parse_feature_set(args.features)
    start = time.perf_counter()
    loaded = load_feature_set(paths, features, manifest)
    fit_rows = np.flatnonzero(loaded.ok & (rows.split == "train"))
    Z, _ = scale_features(loaded, fit_rows, 128)
    print(f"load + scale {args.features}: {time.perf_counter() - start:.1f} s, Z {Z.shape}")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, params {params}")
    print("| task | model | fit s (wall) | fit s (CPU) | val score | rounds | load avg |")
    print("|---|---|---:|---:|---:|---|---|")
    for task in tasks:
        for model in args.models.split(","):
            load = os.getloadavg()[0]
            candidate = Candidate(task, features, model, params if model == "lightgbm" else {})
            fitted, _, info = fit_candidate(candidate, Z, loaded.ok, rows, 0, 1, 0)
            score = info["scores"][get_task(task).main_metric]
            rounds = getattr(fitted, "n_rounds_", "")
            print(
                f"| {task} | {model} | {info['fit_seconds']:.1f} | {info['cpu_seconds']:.1f} "
                f"| {score:.4f} | {rounds} | {load:.1f}-{os.getloadavg()[0]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
