"""What an extraction or a merge did, per backbone: the reports the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BackboneReport:
    """What happened to one backbone's feature file."""

    backbone: str
    path: Path
    action: str  # extracted | resumed | retried | skipped | merged | imported
    rows: int
    failed_count: int = 0
    failed_images: tuple[dict[str, str], ...] = ()
    images_per_s: float | None = None
    detail: str = ""
    runtime: str | None = None  # of a CNN's rows: torch or onnx (the file's attr)


@dataclass(frozen=True)
class ExtractSummary:
    reports: tuple[BackboneReport, ...]
    device: str
    random_init: bool = False

    def text(self) -> str:
        lines = []
        if self.random_init:
            lines.append(
                "WARNING: CNN backbones use RANDOM weights (--random-init): the features are "
                "meaningless for prediction (attrs random_init=True, weights_sha256=random-init)"
            )
        for r in self.reports:
            speed = f", {r.images_per_s:.1f} img/s" if r.images_per_s else ""
            runtime = f", runtime {r.runtime}" if r.runtime else ""
            line = f"{r.backbone}: {r.action} {r.path} ({r.rows} images{speed}{runtime}"
            line += f", {r.failed_count} failed)" if r.failed_count else ")"
            if r.detail:
                line += f" {r.detail}"
            lines.append(line)
            examples = [f"{f['image']} ({f['reason']})" for f in r.failed_images[:5]]
            if examples:
                more = r.failed_count - len(examples)
                lines.append(
                    "  failed: " + "; ".join(examples) + (f"; +{more} more" if more else "")
                )
        return "\n".join(lines)
