"""`Predictor` throughput (images/s) on a folder, model building excluded, for docs/benchmarks.md.

Loads a trained run, predicts 4 images to warm up (models built, first forward), then times
`predict` on every image of FOLDER (or on the video FOLDER names: warmed up on the video
itself) and prints images (frames)/s with the load average. With several `--runtime`s, one
predictor per runtime is built and warmed up first, then the runtimes alternate in each of
`--rounds` rounds. Usage:

    python benchmarks/predict_throughput.py CACHE DATASET FOLDER [--workers 1] [--detect] \
        [--detector mtcnn] [--redetect 1] [--batch-size 64] [--weights NAME=PATH ...] \
        [--runtime torch --runtime onnx] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from affectpipe import Predictor
from affectpipe.cli_options import parse_weights_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("dataset")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--detect", action="store_true")
    parser.add_argument("--detector", default="mtcnn")
    parser.add_argument("--redetect", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--runtime", action="append", choices=["auto", "torch", "onnx"])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    predictors = {
        runtime: Predictor.load(
            args.cache,
            args.dataset,
            weights=parse_weights_option(tuple(args.weights)),
            workers=args.workers,
            detect=args.detect,
            batch_size=args.batch_size,
            detector=args.detector,
            redetect=args.redetect,
            runtime=runtime,
        )
        for runtime in args.runtime or ["auto"]
    }
    files = (
        sorted(p for p in args.folder.iterdir() if p.is_file())
        if args.folder.is_dir()
        else [args.folder]
    )
    for predictor in predictors.values():
        predictor.predict(files[:4] if args.folder.is_dir() else files)
    for _ in range(args.rounds):
        for runtime, predictor in predictors.items():
            start = time.perf_counter()
            table = predictor.predict(files)
            seconds = time.perf_counter() - start
            print(
                f"runtime={runtime} {predictor.runtimes} workers={args.workers} "
                f"detect={args.detect} detector={args.detector} redetect={args.redetect} "
                f"{len(table)} rows ({int(table['face_ok'].sum())} with a face): "
                f"{seconds:.1f} s, {len(table) / seconds:.1f} img/s, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
