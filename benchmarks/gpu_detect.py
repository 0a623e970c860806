"""MTCNN on the GPU, for benchmarks/gpu_check.sh: parity with the original implementation's
outputs on shared/fixtures/mtcnn (CUDA, fp32) and frames/s of batched detection at 640x480.

The weights come from the weights cache ($AFFECTPIPE_HOME/weights: `pipeline weights fetch
mtcnn` where pip reaches the index, then carry the folder). Exit 1 when parity fails.

    python benchmarks/gpu_detect.py SHARED_DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from affectpipe.faces import registry

TOLERANCE_PX = 0.05  # cuDNN's convolutions differ from the CPU's in the last bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    folder = args.shared / "fixtures" / "mtcnn"
    ref = np.load(folder / "ref_mtcnn.npz")
    frames = [np.asarray(Image.open(folder / "frames" / n).convert("RGB")) for n in ref["names"]]
    detector = registry.get("mtcnn").build(args.device)
    found = detector.detect(frames)
    worst, counts_ok = 0.0, True
    for i, faces in enumerate(found):
        mine = ref["image_index"] == i
        if len(faces) != ref["count"][i]:
            counts_ok = False
            continue
        for face, box, points in zip(faces, ref["boxes"][mine], ref["points"][mine], strict=True):
            worst = max(
                worst,
                float(np.abs(face.box - box).max()),
                float(np.abs(face.points - points).max()),
            )
    ok = counts_ok and worst <= TOLERANCE_PX
    print(
        f"mtcnn parity {args.device}: counts {'ok' if counts_ok else 'DIFFER'}, worst box/point "
        f"difference {worst:.2e} px -> {'ok' if ok else 'FAILED'}"
    )
    batch = (frames * 2)[:64]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None
    for size in (1, 16, 64):
        detector.detect(batch[:size])
        sync()
        start = time.perf_counter()
        for i in range(0, len(batch), size):
            detector.detect(batch[i : i + size])
        sync()
        print(
            f"mtcnn {args.device} batch {size}: "
            f"{len(batch) / (time.perf_counter() - start):.1f} frames/s (640x480, 0-3 faces)"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
