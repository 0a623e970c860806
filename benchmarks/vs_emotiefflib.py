"""MT-EmotiEffNet side by side with EmotiEffLib's own ONNX engine, on the same crops, in one run.

The official side runs in its own virtual environment (made here on first use: emotiefflib
1.1.1 without its torch extra, onnxruntime of this environment's version, opencv-python-headless,
from the package index), with its model file in a private HOME (`~/.emotiefflib`, the layout
its ONNX engine loads: `../shared/fixtures/emotieffnet/enet_b0_8_va_mtl_calib.onnx`). Each
round runs, one after the other and each in its own process:

- EmotiEffLib: `EmotiEffLibRecognizer(engine="onnx").extract_features` over lists of 32
  crops decoded beforehand (its loop only, as the fixtures README measured it), and the same
  with the cv2 decode included;
- affectpipe: `pipeline bench extract --runtime onnx` (whole path: decode, preprocessing,
  forward, in its DataLoader worker and ONNX Runtime), and its forward-only figure.

Prints a Markdown table with each round's figures and the load average after it. Usage:

    python benchmarks/vs_emotiefflib.py --shared ../shared [--rounds 3] [--venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

OFFICIAL_PACKAGE = "emotiefflib==1.1.1"
# The official engine's loop, as in its README: RGB arrays in, lists of 32, features out.
OFFICIAL_LOOP = """
import glob, json, sys, time
import cv2
from emotiefflib.facial_analysis import EmotiEffLibRecognizer
files = sorted(glob.glob(sys.argv[1] + "/*.jpg")) * int(sys.argv[2])
recognizer = EmotiEffLibRecognizer(engine="onnx", model_name="enet_b0_8_va_mtl")
start = time.perf_counter()
images = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
decoded = time.perf_counter()
for i in range(0, len(images), 32):
    recognizer.extract_features(images[i : i + 32])
done = time.perf_counter()
n = len(files)
print(json.dumps({"loop": n / (done - decoded), "with_decode": n / (done - start)}))
"""


def official_venv(folder: Path) -> Path:
    """The official side's python, its environment made on first use."""
    python = folder / "bin" / "python"
    if python.exists():
        return python
    import onnxruntime

    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    packages = [f"onnxruntime=={onnxruntime.__version__}", "onnx", "opencv-python-headless"]
    subprocess.run([*pip, *packages, "numpy", "pillow"], check=True)
    subprocess.run([*pip, "--no-deps", OFFICIAL_PACKAGE], check=True)
    return python


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, required=True, help="The ../shared folder.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="Passes over the 256 crops.")
    parser.add_argument(
        "--venv", type=Path, default=Path(tempfile.gettempdir()) / "emotiefflib-venv"
    )
    args = parser.parse_args()
    crops = args.shared / "fixtures" / "images" / "bench112"
    fixture = args.shared / "fixtures" / "emotieffnet"
    python = official_venv(args.venv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        (home / ".emotiefflib").mkdir(parents=True)
        (home / ".emotiefflib" / "enet_b0_8_va_mtl.onnx").write_bytes(
            (fixture / "enet_b0_8_va_mtl_calib.onnx").read_bytes()
        )
        script = Path(scratch) / "official.py"
        script.write_text(OFFICIAL_LOOP)
        ours_json = Path(scratch) / "ours.json"
        for _ in range(args.rounds):
            official = subprocess.run(
                [str(python), str(script), str(crops), str(args.repeat)],
                env={**os.environ, "HOME": str(home)},
                check=True,
                capture_output=True,
                text=True,
            )
            theirs = json.loads(official.stdout.strip().splitlines()[-1])
            after_theirs = load()
            subprocess.run(
                ["pipeline", "bench", "extract", "--images", str(crops), "--repeat",
                 str(args.repeat), "--batch-size", "32", "--backbones", "mt-emotieffnet",
                 "--runtime", "onnx", "--rounds", "1", "--weights",
                 f"mt-emotieffnet={fixture / 'enet_b0_8_va_mtl_calib.pt'}",
                 "--json", str(ours_json)],
                check=True,
                capture_output=True,
            )  # fmt: skip
            ours = json.loads(ours_json.read_text())["rows"][0]
            rows.append((theirs, after_theirs, ours, load()))
    print(
        "| round | EmotiEffLib ONNX, loop (with cv2 decode) img/s | load | affectpipe onnx, "
        "whole path (forward only) img/s | load | whole path / loop |"
    )
    print("|---|---|---|---|---|---|")
    for k, (theirs, l1, ours, l2) in enumerate(rows, 1):
        whole = ours["whole_path_images_per_s"]
        print(
            f"| {k} | {theirs['loop']:.1f} ({theirs['with_decode']:.1f}) | {l1:.1f} | "
            f"{whole:.1f} ({ours['forward_images_per_s']:.1f}) | {l2:.1f} | "
            f"{whole / theirs['loop']:.2f}x |"
        )
    ratios = [o["whole_path_images_per_s"] / t["loop"] for t, _, o, _ in rows]
    print(f"\nmedian ratio, whole path / official loop: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
