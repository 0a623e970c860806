"""blend stage: validation-tuned blends, thresholds, smoothing, submission files, report.

`affectpipe.blend.run(paths, run=..., out_dir=..., tasks=...) -> BlendResult`. The names are
loaded on first use so that importing the CLI stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BlendOptions", "BlendResult", "run"]


def __getattr__(name: str) -> Any:
    if name in ("run", "BlendResult"):
        from affectpipe.blend import runner

        return getattr(runner, name)
    if name == "BlendOptions":
        from affectpipe.blend.options import BlendOptions

        return BlendOptions
    raise AttributeError(f"module 'affectpipe.blend' has no attribute {name!r}")
