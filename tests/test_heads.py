"""Heads: feature-set parser, label weights, masking, outputs, determinism, reload, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.features import read_feature_file, write_feature_file
from affectpipe.featuresets import (
    FeatureSet,
    available_backbones,
    load_feature_set,
    parse_feature_set,
)
from affectpipe.heads import fit_workers, losses, train
from affectpipe.heads.candidates import default_feature_sets, load_config, parse_candidate_ref
from affectpipe.heads.fitted import load_head
from affectpipe.heads.model_registry import make_model
from affectpipe.heads.models import LinearHead, MLPHead
from affectpipe.heads.synthetic import Scale, write_synthetic_cache
from affectpipe.manifest import read_manifest, write_manifest
from affectpipe.pipeline import cli
from affectpipe.schema import PRED_COLUMNS
from affectpipe.tasks import class_weights, pos_weights

SMALL = Scale(n_train=1600, n_val=600, n_test=300, rows_per_video=100)
LINEAR_EMB = "mt-emotieffnet:embedding+logits/linear"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    paths = DatasetPaths(tmp_path_factory.mktemp("cache") / "synth")
    write_synthetic_cache(paths, SMALL, seed=3)
    return paths


# --- feature-set parser -------------------------------------------------------------------


def test_parse_feature_set_single_and_joined() -> None:
    assert parse_feature_set("mt-emotieffnet:logits").parts == (("mt-emotieffnet", "logits"),)
    joined = parse_feature_set("mt-emotieffnet:embedding+logits+ddamfn:embedding")
    assert joined.parts == (
        ("mt-emotieffnet", "embedding"),
        ("mt-emotieffnet", "logits"),
        ("ddamfn", "embedding"),
    )
    assert joined.spec == "mt-emotieffnet:embedding+logits+ddamfn:embedding"
    assert joined.slug == "mt-emotieffnet.embedding+logits+ddamfn.embedding"
    assert parse_feature_set(joined.slug) == joined
    assert joined.backbones == ("mt-emotieffnet", "ddamfn")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("logits", "no backbone"),
        ("a:b:c", "two colons"),
        ("ddamfn:embedding+embedding", "twice"),
        ("ddamfn:", "empty part"),
        (":logits", "bad backbone"),
        ("ddamfn:emb edding", "bad or empty part"),
    ],
)
def test_parse_feature_set_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_feature_set(spec)


def test_candidate_refs_both_forms() -> None:
    spec_form = parse_candidate_ref("mt-emotieffnet:embedding+logits/mlp")
    file_form = parse_candidate_ref("mt-emotieffnet.embedding+logits__mlp")
    assert spec_form == file_form
    with pytest.raises(InputError, match="unknown model"):
        parse_candidate_ref("ddamfn:embedding/xgboost")


def test_default_feature_sets_follow_the_papers_and_cover_every_task() -> None:
    sets = default_feature_sets(
        {
            "mt-emotieffnet": ["embedding", "logits"],
            "openface": ["embedding", "au"],
            "x": ["embedding"],
        }
    )
    specs = {task: [s.spec for s in found] for task, found in sets.items()}
    # The papers' choices where their backbones are present; a backbone without logits
    # (the OpenFace-style descriptor included) serves every task with its embedding.
    assert specs["va"] == [
        "mt-emotieffnet:logits",
        "mt-emotieffnet:embedding+logits",
        "openface:embedding",
        "x:embedding",
    ]
    assert specs["expr"] == ["mt-emotieffnet:embedding+logits", "openface:embedding", "x:embedding"]
    assert specs["au"] == specs["expr"]
    assert default_feature_sets({"only-logits": ["logits"]})["va"][0].spec == "only-logits:logits"


def test_early_fusion_joins_the_backbones_default_sets_within_the_width_budget() -> None:
    from affectpipe.heads.candidates import FUSION_MAX_WIDTH

    present = {
        "fer-minixception": {"embedding": 128, "logits": 7},
        "openface": {"embedding": 700},
        "huge": {"embedding": FUSION_MAX_WIDTH},  # would take the fusion past the budget
    }
    sets = default_feature_sets(present, fusion=True)
    fused = "fer-minixception:embedding+logits+openface:embedding"
    assert [s.spec for s in sets["expr"]][-1] == fused
    assert [s.spec for s in sets["va"]][-1] == fused  # each backbone's widest VA set
    assert fused not in [s.spec for s in default_feature_sets(present)["expr"]]  # off
    alone = default_feature_sets({"openface": {"embedding": 700}}, fusion=True)
    assert [s.spec for s in alone["expr"]] == ["openface:embedding"]  # one backbone: none


# --- label weights and masking ------------------------------------------------------------


def test_shard_files_are_not_backbones(cache: DatasetPaths, tmp_path: Path) -> None:
    paths = DatasetPaths(tmp_path / "sharded")
    paths.features_dir.mkdir(parents=True)
    source = read_feature_file(cache.features("ddamfn"))
    write_feature_file(
        paths.features("ddamfn.shard-1-of-2"),
        source.images,
        source.load("embedding"),
        source.ok,
        {"backbone": "ddamfn", "shard": "1/2"},
    )
    assert available_backbones(paths) == {}
    write_feature_file(
        paths.features("ddamfn"), source.images, source.load("embedding"), source.ok, {}
    )
    assert list(available_backbones(paths)) == ["ddamfn"]


def test_class_weights_formula() -> None:
    y = np.array([0] * 10 + [1] * 5 + [2] * 2 + [-1] * 7)
    weights = class_weights(y, n_classes=4)
    np.testing.assert_allclose(weights, [1.0, 2.0, 5.0, 0.0])  # max N_c / N_y; absent -> 0


def test_pos_weights_formula() -> None:
    y = np.array([[1, 0, -1], [0, 0, -1], [0, 0, 1], [1, -1, 0]])
    # AU0: 4 labelled, 2 positive -> 1; AU1: 3 labelled, none positive -> 1; AU2: 2, 1 -> 1.
    np.testing.assert_allclose(pos_weights(y), [1.0, 1.0, 1.0])
    y = np.array([[1], [0], [0], [0], [0], [0], [0], [0]])
    np.testing.assert_allclose(pos_weights(y), [4.0])  # N / (2 * positives) = 8 / 2


def test_au_loss_ignores_missing_entries() -> None:
    logits = torch.randn(6, 3)
    target = torch.tensor([[1, 0, -1], [0, -1, 1], [1, 1, 0], [-1, 0, 0], [0, 1, -1], [1, 0, 0]])
    pos_weight = torch.tensor([2.0, 1.0, 3.0])
    poisoned = logits.clone()
    poisoned[target < 0] = 1e4  # a loss that read a missing entry would explode
    assert torch.allclose(
        losses.au_loss(logits, target, pos_weight), losses.au_loss(poisoned, target, pos_weight)
    )


def test_heads_never_see_missing_labels(cache: DatasetPaths, monkeypatch) -> None:
    seen: dict[str, np.ndarray] = {}
    original = LinearHead.fit

    def spying_fit(self, X, y, eval_set=None):
        assert eval_set is None  # a linear head does not early-stop: no held-out rows
        seen[self.task] = np.asarray(y)
        return original(self, X, y, eval_set=eval_set)

    monkeypatch.setattr(LinearHead, "fit", spying_fit)
    train(cache, run="spy", candidates=["mt-emotieffnet:logits/linear"], progress=False)
    assert np.isfinite(seen["va"]).all() and (seen["va"] > -5).all()
    assert (seen["expr"] >= 0).all()
    assert (seen["au"] >= 0).any(axis=1).all()
    manifest = read_manifest(cache.manifest)
    train_rows = manifest["split"] == "train"
    assert len(seen["expr"]) < (manifest.loc[train_rows, "expression"] >= -1).sum()


def test_other_missing_sentinels_change_nothing(cache: DatasetPaths, tmp_path: Path) -> None:
    """-5 VA and any negative code are as missing as NaN / -1: predictions stay identical."""
    manifest = read_manifest(cache.manifest)
    poisoned = manifest.copy()
    va_missing = poisoned["valence"].isna()
    poisoned.loc[va_missing, ["valence", "arousal"]] = -5.0
    poisoned.loc[poisoned["expression"] < 0, "expression"] = -7
    other = DatasetPaths(tmp_path / "poisoned")
    other.features_dir.mkdir(parents=True)
    for path in cache.features_dir.glob("*.h5"):
        (other.features_dir / path.name).symlink_to(path)
    write_manifest(poisoned, other.manifest, {"dataset": "poisoned"})
    for paths in (cache, other):
        train(paths, run="sentinel", candidates=["mt-emotieffnet:logits/mlp"], progress=False)
    for task in ("va", "expr"):
        name = "mt-emotieffnet.logits__mlp"
        a = pd.read_parquet(cache.preds("sentinel", task, name))
        b = pd.read_parquet(other.preds("sentinel", task, name))
        pd.testing.assert_frame_equal(a, b)


# --- outputs ------------------------------------------------------------------------------


def test_outputs_shapes_columns_and_nan_rows(cache: DatasetPaths) -> None:
    result = train(cache, run="shapes", candidates=[LINEAR_EMB], progress=False)
    manifest = read_manifest(cache.manifest)
    loaded = load_feature_set(cache, parse_feature_set("mt-emotieffnet:embedding+logits"), manifest)
    expected_rows = np.flatnonzero(manifest["split"].isin(["val", "test"]).to_numpy())
    assert len(result.results) == 3
    for task in ("va", "expr", "au"):
        path = cache.preds("shapes", task, "mt-emotieffnet.embedding+logits__linear")
        frame = pd.read_parquet(path)
        assert list(frame.columns) == ["row", "image", "split", *PRED_COLUMNS[task]]
        assert frame["row"].dtype == np.int64
        np.testing.assert_array_equal(frame["row"], expected_rows)
        np.testing.assert_array_equal(frame["image"], manifest["image"].to_numpy()[expected_rows])
        values = frame[list(PRED_COLUMNS[task])].to_numpy()
        not_ok = ~loaded.ok[expected_rows]
        assert not_ok.any(), "the synthetic cache should hold some not-ok images"
        assert np.isnan(values[not_ok]).all() and np.isfinite(values[~not_ok]).all()
        if task == "expr":
            np.testing.assert_allclose(values[~not_ok].sum(axis=1), 1.0, rtol=1e-5)
        meta = json.loads(pq.read_schema(path).metadata[b"affectpipe"])
        assert meta["candidate"] == "mt-emotieffnet.embedding+logits__linear"
        assert cache.head("shapes", task, meta["candidate"]).exists()
    metrics = json.loads(result.metrics_path.read_text())
    assert {(e["task"], e["candidate"]) for e in metrics["candidates"]} == {
        (t, "mt-emotieffnet.embedding+logits__linear") for t in ("va", "expr", "au")
    }
    assert not list(cache.run("shapes").rglob(".*.tmp-*"))


def test_heads_learn_planted_signal(cache: DatasetPaths) -> None:
    result = train(
        cache,
        run="signal",
        candidates=[LINEAR_EMB, "mt-emotieffnet:embedding+logits/mlp"],
        progress=False,
    )
    for r in result.results:
        if r.task == "va":
            assert r.scores["p_va"] > 0.5, r
        elif r.task == "expr":
            assert r.scores["p_expr"] > 0.25, r  # chance macro F1 is about 0.1
        else:
            assert r.scores["p_au"] > 0.45, r  # all-positive guessing gives about 0.3


def test_same_seed_same_predictions(cache: DatasetPaths) -> None:
    name = "mt-emotieffnet.logits__mlp"
    frames = []
    for run in ("det-a", "det-b"):
        train(cache, run=run, tasks=["expr"], candidates=[name], progress=False)
        frames.append(pd.read_parquet(cache.preds(run, "expr", name)))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    config = cache.root / "seed.toml"
    config.write_text("[heads]\nseed = 5\n")
    train(cache, run="det-c", tasks=["expr"], candidates=[name], config_path=config, progress=False)
    other = pd.read_parquet(cache.preds("det-c", "expr", name))
    assert not np.allclose(other["p_neutral"], frames[0]["p_neutral"], equal_nan=True)


def test_worker_processes_give_the_same_predictions(cache: DatasetPaths, monkeypatch) -> None:
    refs = ["mt-emotieffnet:logits/mlp", "mt-emotieffnet:logits/linear"]
    config = cache.root / "workers.toml"
    config.write_text("[heads]\nworkers = 2\n")
    train(cache, run="inline", tasks=["au"], candidates=refs, progress=False)
    monkeypatch.setattr(fit_workers, "PARALLEL_MIN_VALUES", 0)
    train(cache, run="procs", tasks=["au"], candidates=refs, config_path=config, progress=False)
    for name in ("mt-emotieffnet.logits__mlp", "mt-emotieffnet.logits__linear"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(cache.preds("inline", "au", name)),
            pd.read_parquet(cache.preds("procs", "au", name)),
        )


def test_results_keep_candidate_order_though_fits_run_slowest_first(
    cache: DatasetPaths, monkeypatch
) -> None:
    monkeypatch.setattr(fit_workers, "PARALLEL_MIN_VALUES", 0)  # the worker pool path
    refs = ["mt-emotieffnet:logits/linear", "mt-emotieffnet:logits/mlp"]
    result = train(cache, run="order", tasks=["va", "au"], candidates=refs, progress=False)
    names = ["mt-emotieffnet.logits__linear", "mt-emotieffnet.logits__mlp"]
    assert [(r.task, r.candidate) for r in result.results] == [
        (task, name) for name in names for task in ("va", "au")
    ]
    assert set(result.stage_seconds) == {"load", "scale", "fit", "write"}


def test_reloaded_head_predicts_identically_in_a_fresh_process(cache: DatasetPaths) -> None:
    name = "mt-emotieffnet.embedding+logits__mlp"
    train(cache, run="reload", tasks=["au"], candidates=[name], progress=False)
    head_path = cache.head("reload", "au", name)
    script = (
        "import sys, numpy as np\n"
        "from affectpipe.config import DatasetPaths\n"
        "from affectpipe.heads.fitted import load_head\n"
        "from affectpipe.manifest import read_manifest\n"
        "paths = DatasetPaths(__import__('pathlib').Path(sys.argv[1]))\n"
        "out = load_head(sys.argv[2]).predict_manifest(paths, read_manifest(paths.manifest))\n"
        "np.save(sys.argv[3], out.to_numpy())\n"
    )
    out_path = cache.root / "reload.npy"
    subprocess.run(
        [sys.executable, "-c", script, str(cache.root), str(head_path), str(out_path)], check=True
    )
    fresh = np.load(out_path)
    preds = pd.read_parquet(cache.preds("reload", "au", name))
    # Up to float rounding: training predicts the val/test rows in one batch, the reloaded
    # head every ok row; torch's matmul may round a row differently by batch size (1 ulp).
    np.testing.assert_allclose(
        fresh[preds["row"].to_numpy()], preds[list(PRED_COLUMNS["au"])], rtol=1e-6, atol=0
    )
    head = load_head(head_path)
    assert head.feature_set == "mt-emotieffnet:embedding+logits"
    assert head.output_columns == PRED_COLUMNS["au"]


def test_folds_give_out_of_fold_train_rows(cache: DatasetPaths) -> None:
    name = "mt-emotieffnet.logits__linear"
    result = train(cache, run="folds", tasks=["expr"], candidates=[name], folds=3, progress=False)
    frame = pd.read_parquet(cache.preds("folds", "expr", name))
    manifest = read_manifest(cache.manifest)
    assert set(frame["split"]) == {"train", "val", "test"}
    assert len(frame) == len(manifest)
    assert result.results[0].oof_scores["p_expr"] > 0.2


def test_seed_bagging_averages_seeds(cache: DatasetPaths) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) * 4
    bag = make_model("mlp", "expr", {"max_epochs": 2, "hidden": 8}, seeds=3, seed=1).fit(X, y)
    singles = [
        MLPHead(task="expr", max_epochs=2, hidden=8, random_state=s).fit(X, y) for s in (1, 2, 3)
    ]
    expected = np.mean([m.predict_outputs(X) for m in singles], axis=0)
    np.testing.assert_allclose(bag.predict_outputs(X), expected, rtol=1e-6)
    assert isinstance(make_model("linear", "expr", seeds=3), LinearHead)  # deterministic: no bag


# --- configuration and CLI ----------------------------------------------------------------


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[1] / "docs/pipeline.example.toml"
    config = load_config(example)
    assert config.model_params("mlp", "expr")["focal_gamma"] == 0.0
    assert config.model_params("mlp", "va")["hidden"] == 128
    for model in ("mlp", "linear", "lightgbm"):  # every documented key is a real parameter
        make_model(model, "au", config.model_params(model, "au"))
    assert [c.task for c in config.candidates] == ["va", "expr", "au"]
    assert config.candidates[1].features == FeatureSet(
        (("mt-emotieffnet", "embedding"), ("mt-emotieffnet", "logits"), ("ddamfn", "embedding"))
    )
    from affectpipe.workflow import load_run_config  # the same file drives `pipeline run`

    assert load_run_config(example)["dataset"] == "abaw7"


def test_bad_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[heads]\nmodels = ['forest']\n")
    with pytest.raises(InputError, match="bad.toml.*forest"):
        load_config(path)


def test_cli_heads_one_task_one_candidate(cache: DatasetPaths) -> None:
    runner = CliRunner()
    args = ["--cache-dir", str(cache.root.parent), "heads", "--dataset", cache.root.name]
    ok = runner.invoke(
        cli,
        [
            *args,
            "--run",
            "cli",
            "--task",
            "va",
            "--candidate",
            "ddamfn:logits/linear",
            "--no-progress",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "ddamfn.logits__linear" in ok.output and "P_VA" in ok.output
    assert cache.preds("cli", "va", "ddamfn.logits__linear").exists()
    assert not cache.preds("cli", "expr", "ddamfn.logits__linear").exists()
    bad = runner.invoke(cli, [*args, "--candidate", "nobackbone:logits/linear"])
    assert isinstance(bad.exception, InputError) and "nobackbone" in str(bad.exception)


def test_lightgbm_candidate_runs(cache: DatasetPaths) -> None:
    name = "mt-emotieffnet.logits__lightgbm"
    config = cache.root / "lgb.toml"
    config.write_text("[heads.params.lightgbm]\nn_estimators = 30\n")
    result = train(
        cache, run="lgb", tasks=["expr"], candidates=[name], config_path=config, progress=False
    )
    assert result.results[0].scores["p_expr"] > 0.2  # chance macro F1 is about 0.1
    frame = pd.read_parquet(cache.preds("lgb", "expr", name))
    values = frame[list(PRED_COLUMNS["expr"])].to_numpy()
    np.testing.assert_allclose(np.nansum(values, axis=1)[~np.isnan(values[:, 0])], 1.0, rtol=1e-5)


def test_strict_labels_keep_only_fully_labelled_rows(cache: DatasetPaths) -> None:
    name = "mt-emotieffnet.logits__linear"
    loose = train(cache, run="loose", tasks=["expr"], candidates=[name], progress=False)
    strict = train(
        cache, run="strict", tasks=["expr"], candidates=[name], strict_labels=True, progress=False
    )
    manifest = read_manifest(cache.manifest)
    loaded = load_feature_set(cache, parse_feature_set("mt-emotieffnet:logits"), manifest)
    full = (
        (manifest["split"] == "train").to_numpy()
        & loaded.ok
        & manifest["valence"].notna().to_numpy()
        & (manifest["expression"] >= 0).to_numpy()
        & (manifest[["au1", "au26"]] >= 0).all(axis=1).to_numpy()
    )
    assert strict.results[0].n_train == full.sum() < loose.results[0].n_train


@pytest.mark.parametrize("n_rows", [3000, 40])  # covariance eigenpairs; SVD (fewer rows)
def test_principal_components_match_scikit_learn(n_rows: int) -> None:
    from sklearn.decomposition import PCA

    from affectpipe.heads.preprocess import _principal_components

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((n_rows, 60)) @ rng.standard_normal((60, 60))).astype(np.float32)
    mean, variance, components, total = _principal_components(X, 20)
    reference = PCA(n_components=20, svd_solver="full").fit(X.astype(np.float64))
    np.testing.assert_allclose(mean, reference.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, reference.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(
        variance / total, reference.explained_variance_ratio_, rtol=1e-4, atol=1e-7
    )
    # Same directions (signs are a convention): |cosine| of each pair ~1.
    cosines = np.abs((components * reference.components_).sum(axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-3)


def test_near_constant_train_columns_are_not_blown_up_on_new_rows() -> None:
    """A column whose train spread is rounding jitter (but which varies on validation) is
    only centred: standardising it turned 0.1 into ~10^5 and every probability into ~1."""
    from affectpipe.heads.preprocess import FeatureScaler

    rng = np.random.default_rng(0)
    train = rng.standard_normal((60, 5)).astype(np.float32)
    train[:, 4] = 0.5 + 1e-7 * rng.standard_normal(60)
    new = rng.standard_normal((20, 5)).astype(np.float32)
    new[:, 4] = 0.5 + 0.1 * rng.standard_normal(20)
    scaled = FeatureScaler(n_components=0).fit(train).transform(new)
    assert np.abs(scaled[:, 4]).max() < 1.0
    assert scaled[:, :4].std() == pytest.approx(1.0, abs=0.3)  # the rest standardised


def test_regularisation_is_chosen_on_held_out_train_videos() -> None:
    from affectpipe.heads.model_registry import make_model
    from affectpipe.heads.regularisation import choose_regularisation
    from affectpipe.tasks import get_task

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 40)).astype(np.float32)
    y = (X[:, 0] + 2.0 * rng.standard_normal(60) > 0).astype(np.int64) * 4  # weak signal
    rows, videos = np.arange(60), np.arange(60) // 2
    model = make_model("linear", "expr")
    chosen = choose_regularisation(model, get_task("expr"), X, y, rows, videos, {})
    losses = chosen["held_out_loss"]
    assert chosen["value"] == model.alpha == float(min(losses, key=losses.get))
    assert chosen["value"] > 1e-4  # 60 separable rows: more than the large-data default
    # a strength the candidate's params set is kept; so is a large set's
    assert choose_regularisation(model, get_task("expr"), X, y, rows, videos, {"alpha": 1}) is None
