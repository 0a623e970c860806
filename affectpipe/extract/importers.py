"""Importers: feature files made from another tool's outputs (e.g. OpenFace CSVs), not computed.

An importer backbone registers the function that reads the outputs (see
`affectpipe.extract.registry`); this module runs it for a planned target and reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from affectpipe.errors import InputError
from affectpipe.extract.assemble import target_report
from affectpipe.extract.results import BackboneReport

if TYPE_CHECKING:
    from affectpipe.extract.plan import ManifestView, Target


def import_outputs(target: Target, view: ManifestView, progress: bool = True) -> BackboneReport:
    from affectpipe.features import read_feature_file

    source = Path(target.identity["openface_dir"])
    if not source.is_dir():
        raise InputError(f"--openface-dir {source} is not a folder")
    summary = target.importer(
        list(view.images), view.paths, source, target.path, dict(target.identity), progress
    )
    written = read_feature_file(target.path)
    failed = int((~written.ok).sum())
    detail = ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, int | float | str))
    imported = target_report(target, "imported", {"failed_count": failed}, len(written.images))
    return BackboneReport(**{**imported.__dict__, "detail": f"({detail})" if detail else ""})
