"""`Predictor` throughput (images/s) on a folder, model building excluded, for docs/benchmarks.md.

Loads a trained run, predicts 4 images to warm up (models built, first forward), then times
`predict` on every image of FOLDER (or on the video FOLDER names: warmed up on the video
itself) and prints images (frames)/s with the load average. Usage:

    python benchmarks/predict_throughput.py CACHE DATASET FOLDER [--workers 1] [--detect] \
        [--detector mtcnn] [--redetect 1] [--batch-size 64] [--weights NAME=PATH ...]
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
    args = parser.parse_args()
    predictor = Predictor.load(
        args.cache, args.dataset, weights=parse_weights_option(tuple(args.weights)),
        workers=args.workers, detect=args.detect, batch_size=args.batch_size,
        detector=args.detector, redetect=args.redetect,
    )
    if args.folder.is_dir():
        files = sorted(p for p in args.folder.iterdir() if p.is_file())
        predictor.predict(files[:4])
    else:
        files = [args.folder]
        predictor.predict(files)
    start = time.perf_counter()
    table = predictor.predict(files)
    seconds = time.perf_counter() - start
    print(
        f"workers={args.workers} detect={args.detect} detector={args.detector} "
        f"redetect={args.redetect} {len(table)} rows "
        f"({int(table['face_ok'].sum())} with a face): {seconds:.1f} s, "
        f"{len(table) / seconds:.1f} img/s, load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
