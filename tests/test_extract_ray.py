"""`pipeline extract --engine ray` on a local Ray instance (CPU actors): the same files as the
single-process engine, a killed actor retried, a resumed run, and the message without Ray."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import run_cli

from affectpipe import extract
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract import registry
from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from affectpipe.features import decode_attrs
from affectpipe.pipeline import cli

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
CRASHY = "crashy-test"
CRASH_ENV = "AFFECTPIPE_TEST_CRASH"  # "<raise|exit>:<nth batch>:<marker>", read at model build


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPU actors x 2 CPUs + 1 decode task."""
    import ray  # in the dev extras: a missing Ray fails here rather than skipping

    with pytest.MonkeyPatch.context() as patch:  # Ray's workers import this checkout
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False)
    # The crashing test model below travels to the actors by value (they cannot import tests/).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


ROWS = 64  # enough for several batches per actor and chunks; the real models are the cost


@pytest.fixture(scope="module")
def bench(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ROWS bench crops indexed as a `csv` dataset; returns the cache dir."""
    images = fixtures_dir / "images" / "bench112"
    root = tmp_path_factory.mktemp("bench")
    names = sorted(p.name for p in images.glob("*.jpg"))[:ROWS]
    (root / "labels.csv").write_text("image\n" + "\n".join(names) + "\n")
    cache = root / "cache"
    args = ["--cache-dir", cache, "index", root, "--format", "csv", "--name", "b"]
    result = CliRunner().invoke(cli, [*map(str, args), "--image-root", str(images)])
    assert result.exit_code == 0, result.output
    return cache


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle[name][...] for name in handle}


@pytest.mark.slow
def test_ray_engine_writes_the_single_process_files(
    local_ray, bench: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    weights = [
        f"mt-emotieffnet={fixtures_dir / 'emotieffnet' / 'enet_b0_8_va_mtl_calib.pt'}",
        f"ddamfn={fixtures_dir / 'ddamfn' / 'ddamfn_affectnet8_calib.pth'}",
    ]
    args = ["--cache-dir", str(bench), "extract", "--dataset", "b", "--batch-size", "16"]
    args += ["--backbones", "mt-emotieffnet,ddamfn"]
    for item in weights:
        args += ["--weights", item]
    features = bench / "b" / "features"
    # The Ray engine runs torch: the local run too, so that the files are the same files.
    local = CliRunner().invoke(
        cli, [*args, "--workers", "1", "--runtime", "torch"], catch_exceptions=False
    )
    assert local.exit_code == 0, local.output
    for name in ("mt-emotieffnet", "ddamfn"):
        (features / f"{name}.h5").rename(tmp_path / f"{name}.h5")
    on_ray = CliRunner().invoke(cli, [*args, "--engine", "ray", "--actors", "2"])
    assert on_ray.exit_code == 0, on_ray.output
    assert "(ray: 2 CPU actor(s))" in on_ray.output  # the progress bar names the engine
    for name in ("mt-emotieffnet", "ddamfn"):
        expected, got = _arrays(tmp_path / f"{name}.h5"), _arrays(features / f"{name}.h5")
        assert len(got["image"]) == ROWS and got["ok"].all()
        np.testing.assert_array_equal(got["image"], expected["image"])
        for key in ("embedding", "logits"):
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=TOLERANCE)
        with h5py.File(features / f"{name}.h5") as a, h5py.File(tmp_path / f"{name}.h5") as b:
            assert decode_attrs(a.attrs) == decode_attrs(b.attrs)  # either file is reused


class CrashNet(torch.nn.Module):
    """A small conv net that, once per marker file, dies on its nth batch: `raise` (an
    interrupted local run) or `exit` (a Ray actor process killed mid-run)."""

    def __init__(self, crash: str = "") -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)
        self.mode, _, rest = crash.partition(":")
        nth, _, self.marker = rest.partition(":")
        self.nth = int(nth or 0)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.marker and len(x) > 2:  # not the 2-image probe of the BatchNorm folding
            self.calls += 1
            if self.calls == self.nth and _first_to_create(self.marker):
                if self.mode == "exit":
                    os._exit(1)
                raise RuntimeError("interrupted on purpose")
        embedding = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return embedding, self.fc(embedding)


def _first_to_create(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _build_crashy() -> CrashNet:
    return CrashNet(os.environ.get(CRASH_ENV, ""))


def _load_crashy(path: Path) -> CrashNet:
    model = _build_crashy()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


@pytest.fixture(scope="module")
def crashy() -> str:
    if CRASHY not in registry.names():
        spec = BackboneSpec(
            name=CRASHY,
            input_size=24,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding_dim=4,
            logit_names=("a", "b"),
            abaw_expr_index=None,
            builder=_build_crashy,
            loader=_load_crashy,
        )
        registry.register(registry.Backbone(CRASHY, "model", spec, registry.CNN_HEADS))
    return CRASHY


@pytest.mark.slow
def test_killed_actor_is_retried_and_a_local_run_resumes_on_ray(
    local_ray, bench: Path, crashy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DatasetPaths.of(bench, "b")
    run = partial(
        extract.run,
        paths,
        [crashy],
        random_init=True,
        batch_size=4,
        chunk_rows=16,
        workers=0,
        runtime="torch",  # the crash is Python code in the forward, which a graph would drop
    )
    run(progress=False)
    target = paths.features(crashy)
    reference = _arrays(target)
    target.unlink()
    # A local run dies in its 6th batch: chunk 0 (batches 1-4) is committed, chunk 1 is not.
    monkeypatch.setenv(CRASH_ENV, f"raise:6:{tmp_path / 'local-crash'}")
    with pytest.raises(RuntimeError, match="on purpose"):
        run(progress=False)
    # The Ray run resumes it; one actor process exits on its second batch and is replaced.
    marker = tmp_path / "actor-crash"
    monkeypatch.setenv(CRASH_ENV, f"exit:2:{marker}")
    from affectpipe.extract.ray_engine import RayEngine

    summary = run(progress=False, engine=RayEngine(actors=2))
    assert marker.exists()  # an actor did die mid-run
    (report,) = summary.reports
    assert report.action == "resumed" and report.rows == ROWS
    got = _arrays(target)
    for key in ("image", "ok", "embedding", "logits"):
        np.testing.assert_array_equal(got[key], reference[key])  # nothing lost or duplicated


def test_ray_engine_without_ray_says_how_to_install(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--cache-dir", bench, "extract", "--dataset", "b", "--random-init"]
    (tmp_path / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # this `ray` shadows an installed one
    result = run_cli(*base, "--engine", "ray")
    assert result.returncode == 2, result.stderr
    assert "pip install 'affectpipe[ray]'" in result.stderr
    misuse = CliRunner().invoke(cli, [*map(str, base), "--address", "auto"])
    assert isinstance(misuse.exception, InputError) and "--engine ray" in str(misuse.exception)
