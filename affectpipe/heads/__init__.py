"""heads stage: shallow per-task models on cached features (`train` is the entry point).

`train` is imported on first use so that the CLI (which imports `affectpipe.heads.cli`)
does not pull in torch and scikit-learn at start-up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from affectpipe.heads.training import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
