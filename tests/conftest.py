"""Shared test fixtures. Tests needing ../shared skip cleanly when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTPIPE_SHARED", REPO.parent / "shared"))


def photo_dataset(realfaces_dir: Path, root: Path, every: int):
    """Every `every`-th person of realfaces-smile as a csv dataset in `root` (labels.csv and a
    link to the images): people dealt train, val, train, test in turn; each image its own
    "video" (photos: nothing to smooth); test rows unlabelled. Returns the table."""
    import numpy as np
    import pandas as pd

    labels = pd.read_csv(realfaces_dir / "labels.csv")
    people = np.array(sorted(labels["person"].unique()))[::every]
    labels = labels[labels["person"].isin(people)]
    role = {
        p: ("val" if i % 4 == 1 else "test" if i % 4 == 3 else "train")
        for i, p in enumerate(people)
    }
    table = labels.assign(split=labels["person"].map(role), video=labels["image"])
    table.loc[table["split"] == "test", "expression"] = -1
    table[["image", "expression", "split", "video"]].to_csv(root / "labels.csv", index=False)
    os.symlink(realfaces_dir / "images", root / "images")
    return table


def require_shared() -> bool:
    """CI sets AFFECTPIPE_REQUIRE_SHARED=1: a missing ../shared is then a failure, not a skip."""
    return os.environ.get("AFFECTPIPE_REQUIRE_SHARED") == "1"


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `pipeline ARGS...` as a real subprocess (the user's way), capturing text output."""
    full_env = {**os.environ, **(env or {})}
    # The checkout under test comes first, whichever copy of the package the venv points at.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    result = subprocess.run(
        [sys.executable, "-m", "affectpipe.pipeline", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"pipeline {' '.join(map(str, args))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (fixtures, real face data); skips the test when absent."""
    if not (SHARED / "fixtures").is_dir():
        if require_shared():
            pytest.fail(f"AFFECTPIPE_REQUIRE_SHARED=1 but no shared fixtures at {SHARED}")
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"


@pytest.fixture(scope="session")
def realfaces_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "realfaces-smile"
    if not (path / "labels.csv").exists():
        if require_shared():
            pytest.fail(f"AFFECTPIPE_REQUIRE_SHARED=1 but no real face data at {path}")
        pytest.skip(f"real face data not found at {path}")
    return path


@pytest.fixture(scope="session")
def mtcnn_detector():
    """The registered MTCNN with its real weights (fetched once with pip into the user's
    weights cache, as `pipeline weights fetch mtcnn` does); skips when they cannot be had."""
    from affectpipe.errors import InputError
    from affectpipe.faces import registry

    try:
        return registry.get("mtcnn").build()
    except InputError as exc:
        pytest.skip(f"MTCNN weights unavailable: {exc}")
