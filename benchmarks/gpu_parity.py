"""CUDA parity: `pipeline extract --device cuda --amp off` (both engines) reproduces the
official reference outputs of the shared fixtures within 1e-3.

Usage: python benchmarks/gpu_parity.py SHARED_DIR WORK_DIR [--engine local|ray]
Exit 0 when every backbone matches, 1 when one does not, 2 without CUDA or fixtures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from affectpipe import extract
from affectpipe.config import DatasetPaths
from affectpipe.features import read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest

TOLERANCE = 1e-3  # cuDNN kernels differ from the CPU's; AMP stays off
BACKBONES = {  # name: (fixture folder, weights file, reference embedding key)
    "mt-emotieffnet": ("emotieffnet", "enet_b0_8_va_mtl_calib.pt", "features"),
    "ddamfn": ("ddamfn", "ddamfn_affectnet8_calib.pth", "embedding"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_parity: no CUDA device visible to torch", file=sys.stderr)
        return 2
    fixtures = args.shared / "fixtures"
    reference_names = np.load(fixtures / "ddamfn" / "ref_calib_dev.npz")["names"]
    names = [str(n) for n in reference_names]
    frame = empty_manifest(len(names))
    frame["image"], frame["video"], frame["split"], frame["has_image"] = names, "dev", "val", True
    paths = DatasetPaths.of(args.work / args.engine, "dev")
    roots = {"val": str(fixtures / "images" / "dev")}
    write_manifest(frame, paths.manifest, {"dataset": "dev", "image_roots": roots})
    weights = {name: fixtures / folder / file for name, (folder, file, _) in BACKBONES.items()}
    engine = None
    if args.engine == "ray":
        from affectpipe.extract.ray_engine import RayEngine

        engine = RayEngine(actors=1)
    extract.run(
        paths,
        list(BACKBONES),
        device="cuda",
        weights=weights,
        batch_size=5,
        workers=2,
        force=True,
        amp="off",
        progress=False,
        engine=engine,
    )
    failed = False
    for name, (folder, _, embedding_key) in BACKBONES.items():
        reference = np.load(fixtures / folder / "ref_calib_dev.npz")
        features = read_feature_file(paths.features(name))
        logits = np.abs(features.load("logits") - reference["logits"]).max()
        embedding = np.abs(features.load("embedding") - reference[embedding_key]).max()
        ok = bool(features.ok.all()) and max(logits, embedding) <= TOLERANCE
        failed |= not ok
        print(
            f"parity cuda {args.engine:5s} {name:15s} max|diff| logits {logits:.2e} "
            f"embedding {embedding:.2e} (tolerance {TOLERANCE:g}): {'ok' if ok else 'FAILED'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
