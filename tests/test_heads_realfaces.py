"""EXPR heads on OpenFace-style descriptors of real faces: smiles vs neutral, held-out people."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from affectpipe.config import DatasetPaths
from affectpipe.extract.backbones import openface
from affectpipe.features import write_feature_file
from affectpipe.heads import train
from affectpipe.manifest import empty_manifest, write_manifest


def test_expr_heads_separate_smiles_on_held_out_people(realfaces_dir: Path, tmp_path: Path):
    labels = pd.read_csv(realfaces_dir / "labels.csv")
    people = np.array(sorted(labels["person"].unique()))
    held_out = set(people[::4])  # every 4th person (sorted by name) is validation only
    split = np.where(labels["person"].isin(held_out), "val", "train")

    descriptor = openface.OpenFaceDescriptor()
    raw = np.zeros((len(labels), descriptor.raw_dim), dtype=np.float32)
    ok = np.zeros(len(labels), dtype=bool)
    for i, name in enumerate(labels["image"]):
        rgb = np.asarray(Image.open(realfaces_dir / "images" / name).convert("RGB"))
        raw[i], ok[i] = descriptor.describe(rgb)
    embedding, groups, attrs = descriptor.finalize(raw, ok, split == "train")

    paths = DatasetPaths(tmp_path / "realfaces")
    manifest = empty_manifest(len(labels))
    manifest["image"] = labels["image"].to_numpy()
    manifest["video"] = labels["person"].to_numpy()
    manifest["split"] = split
    manifest["has_image"] = True
    manifest["expression"] = labels["expression"].to_numpy(dtype=np.int8)
    write_manifest(manifest, paths.manifest, {"dataset": "realfaces"})
    images = labels["image"].to_numpy(dtype=str)
    write_feature_file(
        paths.features("openface"),
        images,
        embedding,
        ok,
        {**attrs, "backbone": "openface", "groups": groups},
    )

    result = train(
        paths,
        run="smiles",
        tasks=["expr"],
        candidates=["openface:embedding/linear", "openface:embedding/mlp"],
        progress=False,
    )
    val = (split == "val") & ok
    truth = labels["expression"].to_numpy()[val]
    assert set(truth) == {0, 4} and len(truth) >= 60
    for r in result.results:
        preds = pd.read_parquet(r.preds_path).set_index("row")
        p = preds.loc[np.flatnonzero(val)]
        smiling = (p["p_happiness"] > p["p_neutral"]).to_numpy()
        accuracy = float((smiling == (truth == 4)).mean())
        print(f"{r.candidate}: held-out smile accuracy {accuracy:.3f}, {r.scores}")
        assert accuracy > 0.75, (r.candidate, accuracy)
        # Two present classes: macro F1 over 8 codes is at most 2/8.
        assert r.scores["p_expr"] > 0.75 * 2 / 8, (r.candidate, r.scores)
