"""An exported run carries its fine-tuned variant (issue 24): `pipeline export-run` ships the
variant's weights and record, and `pipeline predict --from-run` on another machine (another
AFFECTPIPE_HOME, no cache) installs them after checking them, or refuses them.

A tiny fine-tune of fer's mini-Xception (random init, 2 steps) on real faces: the variant's
weights are what is tested, not its accuracy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from test_finetune import FER, write_faces

pytestmark = pytest.mark.slow

VARIANT = f"{FER}@tiny"


@pytest.fixture(scope="module")
def exported(realfaces_dir: Path, tmp_path_factory) -> dict:
    """A run on a fine-tuned variant, blended and exported as a folder; predictions of a few
    test photos where it was trained."""
    root = tmp_path_factory.mktemp("export-variant")
    data = write_faces(realfaces_dir, root / "cache", every=3)
    env = {"AFFECTPIPE_HOME": str(root / "home")}
    common = ("--cache-dir", root / "cache")
    run_cli(*common, "finetune", "-d", "faces", "--backbone", FER, "--recipe", "ddamfn-expr",
            "--name", "tiny", "--random-init", "--epochs", "1", "--batch-size", "16",
            "--max-steps", "2", "--no-progress", env=env, check=True)  # fmt: skip
    run_cli(*common, "extract", "-d", "faces", "--backbones", VARIANT, "--workers", "0",
            env=env, check=True)  # fmt: skip
    run_cli(*common, "heads", "-d", "faces", "--no-progress", "--candidate",
            f"{VARIANT}:embedding/linear", env=env, check=True)  # fmt: skip
    run_cli(*common, "blend", "-d", "faces", "--out", root / "sub", "--no-report", env=env,
            check=True)  # fmt: skip
    run_cli(*common, "export-run", "-d", "faces", "--out", root / "run", env=env, check=True)
    photos = root / "photos"
    photos.mkdir()
    test = data["labels"][data["split"] == "test"]["image"].iloc[:4]
    for name in test:
        shutil.copyfile(realfaces_dir / "images" / name, photos / name)
    run_cli(*common, "predict", "-d", "faces", "--out", root / "here.csv", photos, env=env,
            check=True)  # fmt: skip
    return {"root": root, "run": root / "run", "photos": photos,
            "here": pd.read_csv(root / "here.csv")}  # fmt: skip


def _predict_elsewhere(run: Path, photos: Path, home: Path, out: Path):
    return run_cli("--cache-dir", home / "cache", "predict", "--from-run", run, "--out", out,
                   photos, env={"AFFECTPIPE_HOME": str(home)})  # fmt: skip


def test_the_export_holds_the_variant_and_predicts_the_same_elsewhere(
    exported: dict, tmp_path: Path
):
    run = exported["run"]
    document = json.loads((run / "export.json").read_text())
    entry = document["backbones"][VARIANT]["variant"]
    assert entry == {"weights": f"variants/{VARIANT}.safetensors",
                     "record": f"variants/{VARIANT}.json"}  # fmt: skip
    assert set(entry.values()) <= set(document["files"])
    source = exported["root"] / "home" / "weights" / "variants"
    for name in entry.values():
        assert (run / name).read_bytes() == (source / Path(name).name).read_bytes()

    home = tmp_path / "home"
    result = _predict_elsewhere(run, exported["photos"], home, tmp_path / "there.csv")
    assert result.returncode == 0, result.stderr
    installed = home / "weights" / "variants"
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        Path(n).name for n in entry.values()
    )
    there, here = pd.read_csv(tmp_path / "there.csv"), exported["here"]
    assert there["face_ok"].all()
    np.testing.assert_allclose(there["p_happiness"], here["p_happiness"], atol=1e-6)
    # Predicting again finds the variant already installed.
    again = _predict_elsewhere(run, exported["photos"], home, tmp_path / "again.csv")
    assert again.returncode == 0, again.stderr


def _tampered_copy(run: Path, into: Path, member: str, change) -> Path:
    """A copy of the exported folder with `member` changed and its sha256 in export.json
    updated to match (so only the variant's own checks can catch it)."""
    copy = into / "run"
    shutil.copytree(run, copy)
    target = copy / member
    target.chmod(0o644)
    target.write_bytes(change(target.read_bytes()))
    document = json.loads((copy / "export.json").read_text())
    document["files"][member] = hashlib.sha256(target.read_bytes()).hexdigest()
    (copy / "export.json").write_text(json.dumps(document))
    return copy


def test_variant_weights_that_do_not_match_their_record_are_refused(exported: dict, tmp_path: Path):
    member = f"variants/{VARIANT}.safetensors"
    bad = _tampered_copy(exported["run"], tmp_path, member, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    home = tmp_path / "home"
    result = _predict_elsewhere(bad, exported["photos"], home, tmp_path / "x.csv")
    assert result.returncode == 2, result.stderr
    assert "do not match its record's sha256" in result.stderr
    assert not (home / "weights" / "variants").exists()  # nothing installed


def test_a_record_of_other_weights_than_the_runs_features_is_refused(
    exported: dict, tmp_path: Path
):
    def other_weights(data: bytes) -> bytes:
        record = json.loads(data)
        record["weights_sha256"] = "0" * 64
        return json.dumps(record).encode()

    bad = _tampered_copy(exported["run"], tmp_path, f"variants/{VARIANT}.json", other_weights)
    result = _predict_elsewhere(bad, exported["photos"], tmp_path / "home", tmp_path / "x.csv")
    assert result.returncode == 2, result.stderr
    assert "not those of the run's features" in result.stderr


def test_another_local_variant_of_the_same_name_is_never_replaced(exported: dict, tmp_path: Path):
    home = tmp_path / "home"
    local = home / "weights" / "variants"
    local.mkdir(parents=True)
    record = json.loads((exported["run"] / "variants" / f"{VARIANT}.json").read_text())
    record["weights_sha256"] = "1" * 64
    (local / f"{VARIANT}.json").write_text(json.dumps(record))
    result = _predict_elsewhere(exported["run"], exported["photos"], home, tmp_path / "x.csv")
    assert result.returncode == 2, result.stderr
    assert "another variant of the name" in result.stderr
    assert json.loads((local / f"{VARIANT}.json").read_text())["weights_sha256"] == "1" * 64
