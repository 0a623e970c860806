"""Shared test fixtures. Tests needing ../shared skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTPIPE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (fixtures, real face data); skips the test when absent."""
    if not (SHARED / "fixtures").is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures"


@pytest.fixture(scope="session")
def realfaces_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "realfaces-smile"
    if not (path / "labels.csv").exists():
        pytest.skip(f"real face data not found at {path}")
    return path
