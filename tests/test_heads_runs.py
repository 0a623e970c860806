"""Heads on real-shaped data: tasks follow the labels, every backbone serves every task, small
data stays on scale, MLPs train enough, and a run's predictions are complete, of one
invocation and current, or refused (`affectpipe.predictions`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from affectpipe import predictions
from affectpipe.blend.candidate_outputs import load_candidates
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.features import feature_fingerprint, write_feature_file
from affectpipe.featuresets import parse_feature_set
from affectpipe.heads import train, training
from affectpipe.heads.models import MLPHead
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.manifest import empty_manifest, read_manifest, write_manifest
from affectpipe.schema import AU_COLUMNS


def tiny_cache(
    root: Path,
    *,
    labels: str = "all",
    backbones: dict[str, bool] | None = None,
    n_train: int = 120,
    n_val: int = 60,
    n_test: int = 30,
    width: int = 24,
    seed: int = 0,
) -> DatasetPaths:
    """A manifest (videos of 10 frames) and feature files with planted signal.

    labels: "all" (VA, EXPR and AU) or "expr" (VA all NaN, AUs all -1: a photo FER dataset).
    backbones: name -> has logits. Default: one OpenFace-style backbone, no logits.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    paths = DatasetPaths(root)
    frame = empty_manifest(n)
    frame["image"] = [f"v{i // 10:03d}/{i % 10:03d}.jpg" for i in range(n)]
    frame["video"] = [f"v{i // 10:03d}" for i in range(n)]
    frame["frame"] = np.arange(n) % 10 + 1
    frame["split"] = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    frame["has_image"] = True
    latent = rng.standard_normal((n, 4)).astype(np.float32)
    labelled = frame["split"].to_numpy() != "test"
    frame["expression"] = np.where(labelled, np.where(latent[:, 0] > 0, 4, 0), -1)
    if labels == "all":
        frame["valence"] = np.where(labelled, np.tanh(latent[:, 1]), np.nan)
        frame["arousal"] = np.where(labelled, np.tanh(latent[:, 2]), np.nan)
        for j, column in enumerate(AU_COLUMNS):
            frame[column] = np.where(labelled, (latent[:, 3] + 0.1 * j > 0).astype(int), -1)
    write_manifest(frame, paths.manifest, {"dataset": root.name})
    for name, has_logits in ({"openface": False} if backbones is None else backbones).items():
        mix = rng.standard_normal((4, width)).astype(np.float32)
        embedding = latent @ mix + 0.3 * rng.standard_normal((n, width)).astype(np.float32)
        logits = latent[:, :3] + 0.1 * rng.standard_normal((n, 3)) if has_logits else None
        write_feature_file(
            paths.features(name),
            frame["image"].to_numpy(str),
            embedding,
            np.ones(n, dtype=bool),
            {"backbone": name, "weights_sha256": "a" * 64},
            logits=logits,
        )
    return paths


# --- tasks follow the labels --------------------------------------------------------------


@pytest.mark.slow  # two CLI subprocesses
def test_expression_only_labels_train_expr_and_name_the_skipped_tasks(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "fer", labels="expr")
    cache = ["--cache-dir", str(tmp_path)]
    done = run_cli(*cache, "heads", "--dataset", "fer", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "skipped task va: no labelled train rows" in done.stdout
    assert "skipped task au: no labelled train rows" in done.stdout
    assert sorted(p.parent.name for p in paths.run().glob("preds/*/*.parquet")) == ["expr"] * 2
    record = json.loads(predictions.run_record_path(paths, "default").read_text())
    assert list(record["candidates"]) == ["expr"]
    assert record["skipped"] == {"va": "no labelled train rows", "au": "no labelled train rows"}
    asked = run_cli(*cache, "heads", "--dataset", "fer", "--task", "va", "--no-progress")
    assert asked.returncode == 2
    assert "--task va: no labelled train rows" in asked.stderr


def test_per_task_rows_train_every_task_on_its_own_rows(tmp_path: Path) -> None:
    """Per-task Aff-Wild2 in one manifest: each train row labelled for one task only."""
    paths = tiny_cache(tmp_path / "tasks", n_train=120)
    manifest = read_manifest(paths.manifest)
    train_rows = np.flatnonzero(manifest["split"].to_numpy() == "train")
    va_rows, expr_rows, au_rows = np.array_split(train_rows, 3)
    manifest.loc[np.r_[expr_rows, au_rows], ["valence", "arousal"]] = np.nan
    manifest.loc[np.r_[va_rows, au_rows], "expression"] = -1
    manifest.loc[np.r_[va_rows, expr_rows], list(AU_COLUMNS)] = -1
    write_manifest(manifest, paths.manifest, {"dataset": "tasks"})
    result = train(paths, config_path=linear_config(tmp_path), progress=False)
    assert {r.task: r.n_train for r in result.results} == {"va": 40, "expr": 40, "au": 40}
    assert result.skipped == {}


def test_openface_only_cache_trains_va_candidates(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "of")
    result = train(paths, tasks=["va"], progress=False)
    assert [r.candidate for r in result.results] == [
        "openface.embedding__linear",
        "openface.embedding__mlp",
    ]
    assert result.results[0].scores["p_va"] > 0.3  # the planted signal is found


def test_missing_feature_files_say_what_is_wrong(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "none", backbones={})
    with pytest.raises(InputError, match=r"no complete feature file in .*features.*extract"):
        train(paths, progress=False)
    paths.features_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(paths.features("half"), "w") as handle:
        handle.create_dataset("image", data=np.array([b"a"]))
        handle.attrs["complete"] = False
        handle.attrs["committed_rows"] = 0
    with pytest.raises(InputError, match=r"half.h5 is incomplete.*rerun `pipeline extract`"):
        train(paths, progress=False)


# --- small data ---------------------------------------------------------------------------


def test_projection_of_few_rows_keeps_val_on_the_training_scale(tmp_path: Path) -> None:
    """50 train rows of 300 columns: at most 49 directions exist. Keeping 128 whitened
    components blew val rows up (|z| ~27x train here, ~10^6 on real features)."""
    rng = np.random.default_rng(0)
    n_train, n = 50, 150
    latent = rng.standard_normal((n, 5))
    X = latent @ rng.standard_normal((5, 300)) + 0.03 * rng.standard_normal((n, 300))
    X = X.astype(np.float32)
    scaler = FeatureScaler(n_components=128).fit(X[:n_train])
    Z = scaler.transform(X)
    assert scaler.n_features_out <= n_train - 1
    assert "train rows" in scaler.note_
    ratio = np.abs(Z[n_train:]).mean() / np.abs(Z[:n_train]).mean()
    assert 0.5 < ratio < 2.0, ratio

    paths = DatasetPaths(tmp_path / "pilot")
    frame = empty_manifest(n)
    frame["image"] = [f"{i}.jpg" for i in range(n)]
    frame["video"] = [f"p{i // 5}" for i in range(n)]
    frame["split"] = ["train"] * n_train + ["val"] * (n - n_train)
    frame["expression"] = np.where(latent[:, 0] + 0.8 * rng.standard_normal(n) > 0, 4, 0)
    write_manifest(frame, paths.manifest, {"dataset": "pilot"})
    write_feature_file(paths.features("x"), frame["image"].to_numpy(str), X, np.ones(n, bool), {})
    result = train(paths, tasks=["expr"], candidates=["x:embedding/linear"], progress=False)
    probs = pd.read_parquet(result.results[0].preds_path).filter(like="p_").to_numpy()
    assert (probs.max(axis=1) > 0.999).mean() < 0.05  # was 35 % with the old projection
    assert any("principal components" in note for note in result.notes)


def test_projection_whitens_only_with_many_rows_per_column() -> None:
    """Few rows per column: the trailing components are mostly noise, and whitening would
    blow it up to the size of the signal; they keep their relative size instead."""
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((4000, 8)) @ rng.standard_normal((8, 135))).astype(np.float32)
    X += 0.1 * rng.standard_normal(X.shape).astype(np.float32)
    few = FeatureScaler(n_components=128).fit(X[:300])
    variance = few.transform(X[:300]).var(axis=0)
    assert not few.whitened_ and variance[:8].min() > 10 * variance[8:].max()
    assert 0.5 < variance.mean() < 2.0
    many = FeatureScaler(n_components=128).fit(X)  # 4000 rows >= 10 x 135 columns
    assert many.whitened_
    np.testing.assert_allclose(many.transform(X).var(axis=0), 1.0, rtol=0.05)


# --- MLP training -------------------------------------------------------------------------


def test_mlp_takes_enough_steps_on_small_data() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) * 4
    head = MLPHead(task="expr").fit(X, y)
    assert head.n_steps_ >= head.min_steps >= 96  # 3 epochs of 64-row batches were 12 steps
    big = MLPHead(task="expr", batch_size=64, min_steps=0).fit(X, y)
    assert big.n_steps_ == 3 * (300 // 64)


def test_mlp_budget_is_three_epochs_from_2048_rows() -> None:
    """Sets of 2,048 rows or more are cut into >= 32 batches an epoch, so the step floor
    adds no epoch to them (it did at 100 steps: s-Aff-Wild2 fits ran 4 epochs)."""
    rng = np.random.default_rng(0)
    for n in (2048, 5000):
        X = rng.standard_normal((n, 8)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64) * 4
        head = MLPHead(task="expr").fit(X, y)
        assert head.n_steps_ == 3 * 32


def test_early_stopping_never_sees_validation_rows(tmp_path: Path, monkeypatch) -> None:
    paths = tiny_cache(tmp_path / "es", n_train=1000)  # fewer: no early stopping at all
    manifest = read_manifest(paths.manifest)
    seen = {}
    original = MLPHead.fit

    def spying_fit(self, X, y, eval_set=None):
        seen["fit"], seen["eval"] = len(X), None if eval_set is None else len(eval_set[0])
        assert (np.asarray(y) >= 0).all()  # labelled rows only, for fitting and for stopping
        assert eval_set is None or (np.asarray(eval_set[1]) >= 0).all()
        return original(self, X, y, eval_set=eval_set)

    monkeypatch.setattr(MLPHead, "fit", spying_fit)
    result = train(paths, tasks=["expr"], candidates=["openface:embedding/mlp"], progress=False)
    n_train = int((manifest["split"] == "train").sum())
    assert seen["eval"] and seen["fit"] + seen["eval"] == n_train  # held-out train videos
    assert result.results[0].n_val == int((manifest["split"] == "val").sum())
    small = tiny_cache(tmp_path / "small", n_train=300)
    train(small, tasks=["expr"], candidates=["openface:embedding/mlp"], progress=False)
    assert seen["eval"] is None and seen["fit"] == 300  # too few rows to hold any out


# --- the run record and prediction checks -------------------------------------------------


def test_run_record_and_prediction_metadata_agree(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "rec", backbones={"openface": False, "cnn": True})
    result = train(paths, tasks=["expr"], config_path=linear_config(tmp_path), progress=False)
    record = json.loads(result.record_path.read_text())
    assert record["invocation"] == result.invocation
    assert record["candidates"]["expr"] == sorted(r.candidate for r in result.results)
    assert record["inputs"]["features"] == {
        "cnn": feature_fingerprint(paths.features("cnn")),
        "openface": feature_fingerprint(paths.features("openface")),
    }
    for r in result.results:
        meta = predictions.read_prediction_metadata(r.preds_path)
        assert meta["invocation"] == result.invocation
        assert meta["inputs"]["manifest"] == predictions.manifest_fingerprint(paths.manifest)
        assert set(meta["inputs"]["features"]) == set(parse_feature_set(r.features).backbones)
        assert len(meta["head_fingerprint"]) == 64
    manifest = read_manifest(paths.manifest)
    assert load_candidates(paths, "default", "expr", manifest).names == record["candidates"]["expr"]


def test_interrupted_heads_run_keeps_what_it_committed(tmp_path: Path, monkeypatch) -> None:
    """A kill between two candidates: those committed before it stay in the run (replaced
    in place), the rest are the previous invocation's, and blend takes them all."""
    paths = tiny_cache(tmp_path / "cut", backbones={"openface": False, "cnn": True})
    manifest = read_manifest(paths.manifest)
    fast = {"tasks": ["expr", "au"], "config_path": linear_config(tmp_path), "progress": False}
    first = train(paths, **fast)
    saved = []
    original = training._save_candidate

    def killed_after_two(*args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt  # what a kill between two candidates leaves behind
        saved.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_save_candidate", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(paths, **fast)
    monkeypatch.undo()
    record = predictions.read_run_record(paths, "default")
    assert record["invocation"] == first.invocation  # the killed one never finished
    writers = {
        (task, name): entry["invocation"]
        for task, entries in record["committed"].items()
        for name, entry in entries.items()
    }
    assert sorted(writers.values()).count(first.invocation) == len(writers) - 2
    chosen = load_candidates(paths, "default", "expr", manifest)
    assert len(chosen.names) == 3  # each backbone's set and their early fusion


@pytest.mark.slow  # a CLI subprocess after three fits
def test_half_written_candidate_is_refused_with_a_command_that_fixes_it(
    tmp_path: Path, monkeypatch
) -> None:
    """Killed after a candidate's files were rewritten but before its commit: that file is
    not the ledger's, so it is refused, naming the command that retrains it."""
    paths = tiny_cache(tmp_path / "half", backbones={"openface": False, "cnn": True})
    manifest = read_manifest(paths.manifest)
    fast = {"tasks": ["expr"], "config_path": linear_config(tmp_path), "progress": False}
    train(paths, **fast)

    def killed_before_commit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predictions, "commit_candidate", killed_before_commit)
    with pytest.raises(KeyboardInterrupt):
        train(paths, **fast)
    monkeypatch.undo()
    with pytest.raises(AffectpipeError, match=r"half-written") as caught:
        load_candidates(paths, "default", "expr", manifest)
    assert caught.value.exit_code == 1
    message = str(caught.value)
    command = message[message.index("Retrain: `") + len("Retrain: `") :].split("`")[0]
    assert command.startswith("pipeline heads --dataset half --run default --task expr ")
    args = command.split()[1:]  # after `pipeline`
    done = run_cli("--cache-dir", tmp_path, *args, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert len(load_candidates(paths, "default", "expr", manifest).names) == 3


def linear_config(tmp_path: Path, seed: int = 0) -> Path:
    """Default candidates with the linear model only (fast, no temporal), base seed `seed`."""
    path = tmp_path / f"linear{seed}.toml"
    path.write_text(f'[heads]\nseed = {seed}\nmodels = ["linear"]\ntemporal = false\n')
    return path


def test_a_second_invocation_adds_candidates_to_the_run(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "mix", backbones={"openface": False, "cnn": True})
    manifest = read_manifest(paths.manifest)
    first = train(paths, config_path=linear_config(tmp_path), progress=False)
    before = load_candidates(paths, "default", "expr", manifest).names
    # a second invocation, other seed, another model on one feature set and only one task
    later = train(
        paths,
        tasks=["expr"],
        candidates=["cnn:embedding+logits/mlp", "cnn:embedding+logits/linear"],
        config_path=linear_config(tmp_path, seed=3),
        progress=False,
    )
    chosen = load_candidates(paths, "default", "expr", manifest).names
    assert chosen == sorted([*before, "cnn.embedding+logits__mlp"])  # one replaced, one added
    record = predictions.read_run_record(paths, "default")
    committed = record["committed"]["expr"]
    assert committed["cnn.embedding+logits__linear"]["invocation"] == later.invocation
    assert committed["openface.embedding__linear"]["invocation"] == first.invocation
    assert committed["cnn.embedding+logits__mlp"]["model"] == "mlp"
    # the other tasks keep the first invocation's candidates
    assert load_candidates(paths, "default", "va", manifest).names == sorted(
        r.candidate for r in first.results if r.task == "va"
    )
    # named candidates still work, and --fresh starts the run over
    named = ["expr/cnn.embedding+logits__mlp", "openface.embedding__linear"]
    assert load_candidates(paths, "default", "expr", manifest, named).names == [
        "cnn.embedding+logits__mlp",
        "openface.embedding__linear",
    ]
    train(paths, tasks=["expr"], config_path=linear_config(tmp_path), progress=False, fresh=True)
    assert not paths.preds("default", "va", before[0]).exists()
    assert load_candidates(paths, "default", "expr", manifest).names == before
    with pytest.raises(InputError, match="no predictions for task 'va'"):
        load_candidates(paths, "default", "va", manifest)


def reextract(paths: DatasetPaths, backbone: str, weights_sha256: str) -> None:
    """Rewrite a feature file as `pipeline extract` with other weights would."""
    source = h5py.File(paths.features(backbone), "r")
    with source:
        images = source["image"].asstr()[...]
        embedding = source["embedding"][...] * 1.5
        logits = source["logits"][...] if "logits" in source else None
    write_feature_file(
        paths.features(backbone),
        images,
        embedding,
        np.ones(len(images), bool),
        {"backbone": backbone, "weights_sha256": weights_sha256},
        logits=logits,
    )


@pytest.mark.slow  # three CLI subprocesses
def test_blend_refuses_predictions_of_re_extracted_features_through_the_cli(
    tmp_path: Path,
) -> None:
    paths = tiny_cache(tmp_path / "stale")
    cache = ["--cache-dir", str(tmp_path)]
    heads = ["heads", "--dataset", "stale", "--run", "r1", "--task", "expr", "--no-progress"]
    heads += ["--candidate", "openface:embedding/linear"]
    run_cli(*cache, *heads, check=True)
    before = feature_fingerprint(paths.features("openface"))
    reextract(paths, "openface", "b" * 64)
    assert feature_fingerprint(paths.features("openface")) != before
    blend = ["blend", "--dataset", "stale", "--run", "r1", "--task", "expr", "--no-report"]
    refused = run_cli(*cache, *blend)
    assert refused.returncode == 1, refused.stderr
    assert "openface.embedding__linear.parquet is stale" in refused.stderr
    assert "openface.h5 changed" in refused.stderr
    fix = (
        "pipeline heads --dataset stale --run r1 --task expr --candidate openface.embedding__linear"
    )
    assert f"`{fix}`" in refused.stderr
    assert not (paths.blend_dir("r1") / "blend.json").exists()
    manifest = read_manifest(paths.manifest)
    run_cli(*cache, *fix.split()[1:], check=True)  # the command the message names fixes it
    assert load_candidates(paths, "r1", "expr", manifest).names == ["openface.embedding__linear"]


def test_changed_manifest_makes_predictions_stale(tmp_path: Path) -> None:
    paths = tiny_cache(tmp_path / "reindexed")
    train(paths, tasks=["expr"], config_path=linear_config(tmp_path), progress=False)
    manifest = read_manifest(paths.manifest)
    changed = manifest.copy()
    changed.loc[0, "expression"] = 0 if manifest.loc[0, "expression"] == 4 else 4
    write_manifest(changed, paths.manifest, {"dataset": "reindexed"})
    with pytest.raises(AffectpipeError, match="another manifest"):
        load_candidates(paths, "default", "expr", changed)


@pytest.mark.slow  # 12 fits on demo-sized data
def test_mlps_no_longer_lose_every_pair_on_demo_sized_data(tmp_path: Path) -> None:
    """The demo's size (12 train videos of 40 frames): 3 epochs were ~20 optimiser steps and
    the MLPs lost every pair to the linear heads, with outputs that barely varied."""
    from affectpipe.heads.synthetic import Scale, write_synthetic_cache

    paths = DatasetPaths(tmp_path / "demo")
    write_synthetic_cache(paths, Scale(480, 320, 160, rows_per_video=40), seed=0)
    sets = ["mt-emotieffnet:logits", "mt-emotieffnet:embedding+logits"]
    refs = [f"{s}/{model}" for s in sets for model in ("linear", "mlp")]
    result = train(paths, candidates=refs, progress=False)
    by = {(r.task, r.candidate): r for r in result.results}
    wins, spreads = 0, []
    for (task, name), r in by.items():
        if name.endswith("__mlp"):
            linear = by[(task, name.replace("__mlp", "__linear"))]
            metric = {"va": "p_va", "expr": "p_expr", "au": "p_au"}[task]
            wins += r.scores[metric] > linear.scores[metric]
            outputs = [pd.read_parquet(x.preds_path).iloc[:, 3:].std().mean() for x in (r, linear)]
            spreads.append(outputs[0] / outputs[1])
    assert wins >= 2, wins
    assert min(spreads) > 0.5, spreads  # outputs as spread out as the linear heads', roughly


@pytest.mark.slow  # three CLI subprocesses
def test_heads_twice_with_other_candidates_then_blend_through_the_cli(tmp_path: Path) -> None:
    """The researcher's loop: the defaults, then another model on one feature set, then
    blend: every committed candidate is blended (exit 0), the second run's one included."""
    tiny_cache(tmp_path / "loop", backbones={"openface": False, "cnn": True})
    cache = ("--cache-dir", tmp_path)
    run_cli(
        *cache,
        "heads",
        "--dataset",
        "loop",
        "--config",
        linear_config(tmp_path),
        "--no-progress",
        check=True,
    )
    run_cli(
        *cache,
        "heads",
        "--dataset",
        "loop",
        "--candidate",
        "openface:embedding/lightgbm",
        "--no-progress",
        check=True,
    )
    blend = run_cli(*cache, "blend", "--dataset", "loop", "--no-report", "--out", tmp_path / "out")
    assert blend.returncode == 0, blend.stdout + blend.stderr
    record = json.loads((tmp_path / "loop/runs/default/blend/blend.json").read_text())
    for task in ("va", "expr", "au"):
        assert "openface.embedding__lightgbm" in record["tasks"][task]["candidates"]
