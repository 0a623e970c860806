"""Held-out real photos: the default pipeline vs a logistic regression and every candidate.

    python benchmarks/realfaces_heldout.py prep SHARED/data/realfaces-smile ROOT SEED
        ROOT/labels.csv: a fifth of the people to test (unlabelled), a fifth to val, the rest
        train; ROOT/test_truth.csv: the test labels the pipeline never sees.
    python benchmarks/realfaces_heldout.py score CACHE DATASET ROOT RUN SUBMISSION_DIR
        JSON: the submission's, every candidate's and a plain scikit-learn logistic
        regression's (standardised fer-minixception + openface embedding and logits) held-out
        ABAW 8-class macro F1, present-class macro F1 and accuracy.

`benchmarks/realfaces_heldout.sh` runs both around `index -> extract -> heads -> blend`
(docs/benchmarks.md, "The loop on real data").
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from affectpipe.features import read_feature_file
from affectpipe.manifest import read_manifest


def prep(source: Path, root: Path, seed: int) -> None:
    labels = pd.read_csv(source / "labels.csv")
    people = np.random.default_rng(seed).permutation(sorted(labels["person"].unique()))
    fifth = len(people) // 5
    split = pd.Series("train", index=people)
    split[people[:fifth]] = "test"
    split[people[fifth : 2 * fifth]] = "val"
    table = labels.assign(video=labels["person"], split=labels["person"].map(split))
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in table["image"]:
        shutil.copyfile(source / "images" / name, root / "images" / name)
    test = table["split"] == "test"
    table.loc[test, ["image", "expression"]].to_csv(root / "test_truth.csv", index=False)
    table.loc[test, "expression"] = -1
    table[["image", "expression", "video", "split"]].to_csv(root / "labels.csv", index=False)


def _scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    present = sorted(set(true))
    return {
        "abaw_f1": f1_score(true, pred, labels=list(range(8)), average="macro", zero_division=0),
        "present_f1": f1_score(true, pred, labels=present, average="macro", zero_division=0),
        "accuracy": float((pred == true).mean()),
    }


def score(cache: Path, dataset: str, root: Path, run: str, submission: Path) -> dict:
    truth = pd.read_csv(root / "test_truth.csv").set_index("image")["expression"]
    true = truth.to_numpy()
    lines = (submission / "EXPR_predictions.txt").read_text().splitlines()[1:]
    submitted = pd.Series({line.split(",")[0]: int(line.split(",")[1]) for line in lines})
    out = {"submission": _scores(submitted.loc[truth.index].to_numpy(), true)}
    for path in sorted((cache / dataset / "runs" / run / "preds" / "expr").glob("*.parquet")):
        table = pd.read_parquet(path)
        table = table[table["split"] == "test"].set_index("image")
        probs = table.loc[truth.index, [c for c in table.columns if c.startswith("p_")]]
        out[path.stem] = _scores(probs.to_numpy().argmax(axis=1), true)
    manifest = read_manifest(cache / dataset / "manifest.parquet")
    blocks = []
    for backbone in ("fer-minixception", "openface"):
        features = read_feature_file(cache / dataset / "features" / f"{backbone}.h5")
        rows = pd.Series(np.arange(len(features.images)), index=features.images)
        rows = rows.loc[manifest["image"]].to_numpy()
        blocks += [
            features.load(part)[rows]
            for part in features.parts()
            if part in ("embedding", "logits")
        ]
    X, y = np.concatenate(blocks, axis=1), manifest["expression"].to_numpy()
    train = manifest["split"].to_numpy() == "train"
    scaler = StandardScaler().fit(X[train])
    model = LogisticRegression(max_iter=5000).fit(scaler.transform(X[train]), y[train])
    at = pd.Series(np.arange(len(manifest)), index=manifest["image"]).loc[truth.index]
    out["logistic regression"] = _scores(model.predict(scaler.transform(X[at.to_numpy()])), true)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "prep":
        prep(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        result = score(
            Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5], Path(sys.argv[6])
        )
        print(json.dumps(result, indent=1))
