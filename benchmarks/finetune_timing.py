"""A short, timed `pipeline finetune` run per recipe: training images/s and epoch time.

The data are the 400 real faces of realfaces-smile (EXPR labels as published); VA and AU
labels are drawn at random, seeded, so that the multi-task recipes run every loss: the
scores mean nothing, only the speed does. The base weights are the shared fixtures'
official-format checkpoints (random "calib" weights: speed does not depend on the values).
Each recipe runs `--steps` optimiser steps (its first bag only, early stopping off). The
rate is the trainer's own clock: decode + augmentation + forward + backward + optimiser
steps (the first step's CUDA start-up included); model building, validation passes and
checkpoints are not in it. Epoch time: median over the epochs of the 320 train faces.

Usage: python benchmarks/finetune_timing.py SHARED_DIR WORK_DIR [--device cuda] [--steps 30]
Prints a markdown table (and writes WORK_DIR/finetune_timing.json). Exit 0 when every
recipe ran, 1 when one failed, 2 without the shared data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.config import DatasetPaths
from affectpipe.finetune import RECIPES, finetune
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.schema import AU_COLUMNS

WEIGHTS = {  # base backbone: fixture checkpoint
    "ddamfn": "ddamfn/ddamfn_affectnet8_calib.pth",
    "dan": "dan/dan_affectnet8_calib.pth",
}
S_AFF_WILD2_TRAIN = 142_333  # s-Aff-Wild2 train frames: the epoch time a user will see


def timing_dataset(shared: Path, work: Path) -> DatasetPaths:
    real = shared / "data" / "realfaces-smile"
    labels = pd.read_csv(real / "labels.csv")
    people = np.array(sorted(labels["person"].unique()))
    val = set(people[::5])
    rng = np.random.default_rng(0)
    frame = empty_manifest(len(labels))
    frame["image"] = labels["image"].to_numpy()
    frame["video"] = labels["person"].to_numpy()
    frame["split"] = np.where(labels["person"].isin(val), "val", "train")
    frame["has_image"] = True
    frame["expression"] = labels["expression"].to_numpy(dtype=np.int8)
    frame["valence"] = rng.uniform(-1, 1, len(frame)).astype(np.float32)
    frame["arousal"] = rng.uniform(-1, 1, len(frame)).astype(np.float32)
    for column in AU_COLUMNS:
        frame[column] = (rng.random(len(frame)) < 0.3).astype(np.int8)
    paths = DatasetPaths.of(work, "timing")
    roots = {s: str(real / "images") for s in ("train", "val")}
    write_manifest(frame, paths.manifest, {"dataset": "timing", "image_roots": roots})
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    if not (args.shared / "data" / "realfaces-smile" / "labels.csv").exists():
        print(f"finetune_timing: no realfaces-smile under {args.shared}", file=sys.stderr)
        return 2
    os.environ.setdefault("AFFECTPIPE_HOME", str(args.work / "home"))
    paths = timing_dataset(args.shared, args.work)
    rows, status = [], 0
    for name in args.recipes.split(","):
        recipe = RECIPES[name].with_options(
            bags=1, batch_size=args.batch_size, epochs=1000, patience=10**6
        )
        weights = {recipe.backbone: args.shared / "fixtures" / WEIGHTS[recipe.backbone]}
        started = time.perf_counter()
        try:
            result = finetune(
                paths, recipe, name=f"timing-{name}", device=args.device, weights=weights,
                workers=args.workers, max_steps=args.steps, force=True, progress=False,
            )  # fmt: skip
        except Exception as exc:  # report every recipe, then fail
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        variant = result.variants[0]
        rate = variant.images_per_s or float("nan")
        rows.append({
            "recipe": name, "backbone": recipe.backbone, "tasks": ",".join(result.tasks),
            "device": args.device, "batch_size": args.batch_size, "amp": recipe.amp,
            "steps": variant.steps, "images_per_s": rate,
            "epoch_s_train_faces": variant.epoch_seconds,
            "epoch_s_s_aff_wild2_estimate": S_AFF_WILD2_TRAIN / rate if rate > 0 else None,
            "wall_s": time.perf_counter() - started,
        })  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "finetune_timing.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| recipe | backbone | tasks | device | batch | train img/s | epoch s (320 train "
        "faces) | est. epoch s, s-Aff-Wild2 train | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        epoch = r["epoch_s_train_faces"]
        print(
            f"| {r['recipe']} | {r['backbone']} | {r['tasks']} | {r['device']} | "
            f"{r['batch_size']} | {r['images_per_s']:.0f} | "
            f"{epoch:.2f} | {r['epoch_s_s_aff_wild2_estimate']:.0f} | {r['wall_s']:.0f} |"
            if epoch is not None
            else f"| {r['recipe']} | ... | no epoch completed |"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
