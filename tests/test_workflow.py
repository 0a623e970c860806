"""`pipeline run` / `pipeline demo` chaining, with stand-ins for the earlier stages."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from affectpipe.blend import synthetic
from affectpipe.blend.runner import run as blend_run
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.pipeline import cli
from affectpipe.workflow import (
    DEMO_BACKBONES,
    DEMO_CNN,
    DEMO_DATASET,
    DEMO_SIZE,
    RANDOM_INIT_BACKBONES,
    RANDOM_INIT_NOTE,
    Stages,
    run_demo,
    run_pipeline,
)


@dataclass
class Recorder:
    """Stand-in stages: index writes a synthetic manifest, heads (re)writes it with the
    run's predictions; blend is the real one."""

    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)
    weights_path: Path | None = None  # the demo CNN's weights file; None: cannot be had

    def index(self, root, fmt, name, cache_dir, **options):
        self.calls.append(("index", (root, fmt, name), options))
        synthetic.write_synthetic_run(DatasetPaths.of(cache_dir, name), n_rows=800)
        return type("Indexed", (), {"summary": "indexed 800 rows"})()

    def extract(self, paths, backbones, **options):
        self.calls.append(("extract", (tuple(backbones),), options))
        return type("Extracted", (), {"text": lambda self: "features ok"})()

    def heads(self, paths, **options):
        self.calls.append(("heads", (), options))
        synthetic.write_synthetic_run(paths, run=options["run"], n_rows=800)
        return type("Trained", (), {"table": lambda self: "heads ok"})()

    def blend(self, paths, **options):
        self.calls.append(("blend", (), options))
        return blend_run(paths, report=False, **options)

    def weights(self, backbone):
        self.calls.append(("weights", (backbone,), {}))
        if self.weights_path is None:
            raise InputError("weights are not cached and could not be downloaded: no index")
        return type("Resolved", (), {"path": self.weights_path})()

    def stages(self) -> Stages:
        return Stages(self.index, self.extract, self.heads, self.blend, self.weights)


def test_run_pipeline_chains_the_stages_in_order(tmp_path):
    recorder = Recorder()
    lines: list[str] = []
    result = run_pipeline(
        "toy",
        tmp_path / "cache",
        data_root=tmp_path,
        fmt="abaw-mtl",
        backbones=["mt-emotieffnet", "openface"],
        weights={"ddamfn": Path("d.pth")},
        random_init=True,
        run="r1",
        out_dir=tmp_path / "sub",
        progress=False,
        stages=recorder.stages(),
        echo=lines.append,
    )
    assert [c[0] for c in recorder.calls] == ["index", "extract", "heads", "blend"]
    assert recorder.calls[1][1] == (("mt-emotieffnet", "openface"),)
    assert recorder.calls[1][2]["random_init"] is True
    assert recorder.calls[1][2]["weights"] == {"ddamfn": Path("d.pth")}
    assert recorder.calls[2][2]["run"] == "r1" and recorder.calls[3][2]["run"] == "r1"
    assert recorder.calls[3][2]["notes"] == [RANDOM_INIT_NOTE]
    assert any("RANDOM-INIT" in line for line in lines)
    assert result.blend.submission_files == [tmp_path / "sub" / "MTL_predictions.txt"]
    assert result.blend.p_mtl["tuned"] > result.blend.p_mtl["best_single"]


def test_run_pipeline_without_data_needs_a_manifest(tmp_path):
    recorder = Recorder()
    with pytest.raises(InputError, match="--data ROOT --format FMT"):
        run_pipeline("toy", tmp_path, stages=recorder.stages(), echo=lambda _: None)
    with pytest.raises(InputError, match="--format"):
        run_pipeline("toy", tmp_path, data_root=tmp_path, stages=recorder.stages())
    assert recorder.calls == []
    # with a manifest in place, indexing is skipped
    synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "toy"), n_rows=800)
    run_pipeline("toy", tmp_path, progress=False, stages=recorder.stages(), echo=lambda _: None)
    assert [c[0] for c in recorder.calls] == ["extract", "heads", "blend"]
    assert recorder.calls[2][2]["notes"] == []


def test_run_command_reports_a_missing_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), "run", "--dataset", "none"])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "no manifest" in str(result.exception)


@pytest.mark.parametrize("weights", [Path("fer.hdf5"), None], ids=["fer", "no-index"])
def test_demo_uses_fer_weights_or_says_it_falls_back_to_random_init(
    tmp_path, monkeypatch, capsys, weights
):
    written = []

    def write_demo_dataset(root: Path, *, seed: int = 0, **size: int) -> Path:  # no images
        written.append((root, seed, size))
        return root

    monkeypatch.setattr("affectpipe.data.synthetic.write_demo_dataset", write_demo_dataset)
    recorder = Recorder(weights_path=weights)
    result = run_demo(tmp_path, seed=1, progress=False, stages=recorder.stages(), echo=print)
    weights_call, index_call, extract_call = recorder.calls[:3]
    assert weights_call[1] == (DEMO_CNN,)
    assert written == [(tmp_path / "data", 1, DEMO_SIZE)]
    assert index_call[1] == (tmp_path / "data", "abaw-mtl", DEMO_DATASET)
    assert result.blend.submission_files == [tmp_path / "submission" / "MTL_predictions.txt"]
    out = capsys.readouterr().out
    if weights is not None:  # learned features: fer with its weights, no random-init banner
        assert extract_call[1] == (DEMO_BACKBONES,) and extract_call[2]["random_init"] is False
        assert DEMO_CNN in DEMO_BACKBONES and result.notes == []
        assert "pretrained FER2013 weights (fer.hdf5)" in out and "RANDOM" not in out
    else:
        assert extract_call[1] == (RANDOM_INIT_BACKBONES,)
        assert extract_call[2]["random_init"] is True and result.notes == [RANDOM_INIT_NOTE]
        assert "weights could not be had (weights are not cached" in out
        assert "RANDOM-INIT CNN backbones" in out


def test_run_command_exits_1_without_the_requested_submission_unless_partial(tmp_path, monkeypatch):
    class NoVaHeads(Recorder):  # an OpenFace-only cache: no VA candidate gets trained
        def heads(self, paths, **options):
            result = super().heads(paths, **options)
            shutil.rmtree(paths.run(options["run"]) / "preds" / "va")
            return result

    monkeypatch.setattr(Stages, "default", classmethod(lambda cls: NoVaHeads().stages()))
    args = ["--cache-dir", str(tmp_path / "cache"), "run", "--dataset", "toy"]
    args += ["--data", str(tmp_path), "--format", "abaw-mtl", "--out", str(tmp_path / "sub")]
    failed = CliRunner().invoke(cli, args)
    assert isinstance(failed.exception, AffectpipeError), failed.output
    assert failed.exception.exit_code == 1
    assert "MTL_predictions.txt: va: no predictions under" in str(failed.exception)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "AU_predictions.txt",
        "EXPR_predictions.txt",
    ]
    accepted = CliRunner().invoke(cli, [*args, "--partial"])
    assert accepted.exit_code == 0, accepted.output
    assert "not written (--partial): MTL_predictions.txt" in accepted.output


def test_demo_command_exits_0_with_the_mtl_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Stages, "default", classmethod(lambda cls: Recorder().stages()))
    monkeypatch.setattr("affectpipe.data.synthetic.write_demo_dataset", lambda root, **_: root)
    result = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"submission:  {tmp_path / 'submission' / 'MTL_predictions.txt'}" in result.output


def test_run_takes_stage_options_from_the_command_line_and_a_toml(tmp_path, monkeypatch):
    """`pipeline run` passes batch size, workers, tasks, candidates and the config on; a
    [run] table fills what the command line leaves at its default."""
    recorder = Recorder()
    monkeypatch.setattr(Stages, "default", classmethod(lambda cls: recorder.stages()))
    synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "toy"), n_rows=800)
    config = tmp_path / "pipeline.toml"
    config.write_text(
        '[run]\ndataset = "toy"\nbatch_size = 7\nworkers = 0\n'
        'tasks = ["va", "expr"]\ndevice = "cpu"\n[heads]\nseed = 3\n'
    )
    result = CliRunner().invoke(
        cli,
        [
            "--cache-dir",
            str(tmp_path),
            "run",
            "--config",
            str(config),
            "--batch-size",
            "9",
            "--candidate",
            "x:embedding/linear",
            "--partial",
        ],
    )
    assert result.exit_code == 0, result.output
    extract, heads, blend = (c[2] for c in recorder.calls)
    assert extract["batch_size"] == 9 and extract["workers"] == 0  # command line wins
    assert heads["tasks"] == ["va", "expr"] and heads["candidates"] == ["x:embedding/linear"]
    assert heads["config_path"] == config and blend["tasks"] == ["va", "expr"]

    config.write_text("[run]\nbatch_size = 'many'\n")
    bad = CliRunner().invoke(
        cli, ["--cache-dir", str(tmp_path), "run", "--config", str(config), "--dataset", "toy"]
    )
    assert isinstance(bad.exception, InputError) and "batch_size" in str(bad.exception)
