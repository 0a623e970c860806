"""What `blend.json` records: the scores, each task's tuned blend and stage decisions, the
submission files with their sha256, and the provenance of every input (manifest, feature
files, head files, package versions); and the removal of the previous blend's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectpipe import __version__
from affectpipe.blend.options import BlendOptions
from affectpipe.blend.task_rules import rules_for
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import sha256_file
from affectpipe.metrics import mtl_score
from affectpipe.options import record
from affectpipe.schema import TASKS

if TYPE_CHECKING:  # the outcome records runner makes (runner imports this module)
    from affectpipe.blend.runner import TaskOutcome

log = logging.getLogger(__name__)


def summarise(outcomes: dict[str, TaskOutcome]) -> tuple[dict, dict | None]:
    scores = {
        task: {
            "best_single": max(o.candidate_scores.values()),
            "tuned": o.alternatives["blend"]["tuned"],
            "crossfit": o.alternatives["blend"]["crossfit"],
            "single_crossfit": o.alternatives["single"]["crossfit"],
            "submitted_crossfit": o.crossfit_score,
        }
        for task, o in outcomes.items()
    }
    p_mtl = None
    if all(t in scores for t in TASKS):
        p_mtl = {
            kind: mtl_score(scores["va"][kind], scores["expr"][kind], scores["au"][kind])
            for kind in scores["va"]
        }
    return scores, p_mtl


def feature_records(paths: DatasetPaths) -> dict[str, dict[str, Any]]:
    """Identity attrs of the cached feature files, by backbone (unreadable files skipped)."""
    from affectpipe.features import read_header

    records = {}
    for path in sorted(paths.features_dir.glob("*.h5")):
        try:
            attrs = read_header(path)
        except OSError:
            continue  # unreadable files are reported by the stages that read them
        backbone = str(attrs.get("backbone", path.stem))
        records[backbone] = {
            "path": str(path),
            "weights_sha256": attrs.get("weights_sha256"),
            "model_sha256": attrs.get("landmark_model_sha256"),
            "random_init": bool(attrs.get("random_init", False)),
            "package_version": attrs.get("package_version"),
            "complete": attrs.get("complete"),
        }
    return records


def random_init_note(records: dict[str, dict[str, Any]]) -> str | None:
    """A warning when some cached feature file was computed with random backbone weights."""
    names = [backbone for backbone, r in records.items() if r["random_init"]]
    if not names:
        return None
    return (
        f"RANDOM-INIT FEATURES ({', '.join(names)}): these backbones were built with random "
        "weights, not the pretrained models; their features are random projections and the "
        "scores say nothing about the real backbones."
    )


def _candidate_backbones(name: str) -> tuple[str, ...]:
    """Backbones a heads candidate (`<feature-set slug>__<model>`) reads; () if not one."""
    from affectpipe.featuresets import parse_feature_set, split_candidate_name

    parts = split_candidate_name(name)
    if parts is None:
        return ()
    try:
        return parse_feature_set(parts[0]).backbones
    except InputError:
        return ()


def _version(package: str) -> str | None:
    try:
        return package_metadata.version(package)
    except package_metadata.PackageNotFoundError:
        return None


def provenance(
    paths: DatasetPaths,
    run: str,
    metadata: dict[str, Any],
    outcomes: dict[str, TaskOutcome],
    features: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """When, how and from what this blend was made: command, versions, input fingerprints."""
    used = {b for o in outcomes.values() for n in o.candidates for b in _candidate_backbones(n)}
    used |= {name for o in outcomes.values() for name in o.blend.backbones()}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "versions": {
            "affectpipe": __version__,
            "python": platform.python_version(),
            **{p: _version(p) for p in ("torch", "numpy", "scikit-learn")},
        },
        "manifest": {"path": str(paths.manifest), "fingerprint": metadata.get("fingerprint")},
        "features": {b: {**r, "used": b in used} for b, r in features.items()},
        "predictions": {
            task: {name: sha256_file(paths.preds(run, task, name)) for name in outcome.candidates}
            for task, outcome in outcomes.items()
        },
        # The head files themselves: `predict` and `export-run` refuse heads changed since.
        "heads": {
            task: {
                name: _head_fingerprint(paths.head(run, task, name)) for name in outcome.candidates
            }
            for task, outcome in outcomes.items()
        },
    }


def _head_fingerprint(path: Path) -> str | None:
    return sha256_file(path) if path.exists() else None


def blend_json(
    outcomes: dict[str, TaskOutcome],
    scores: dict,
    p_mtl: dict | None,
    options: BlendOptions,
    run: str,
    warnings: list[str],
) -> dict[str, Any]:
    """The blend's record, without the submission part (added when files are written)."""
    tasks = {}
    for task, o in outcomes.items():
        rules = rules_for(task)
        limit = options.search_rows
        sampled = (
            f"; the searches scored every k-th labelled row in video order (at most {limit:,})"
            if limit and o.n_val_labelled > limit
            else ""
        )
        tasks[task] = {
            "candidates": o.candidates,
            "candidate_scores": o.candidate_scores,
            "choice": o.choice,
            "choice_note": o.choice_note,
            "alternatives": o.alternatives,
            **o.blend.to_json(o.candidates, rules),
            "stage_scores": o.blend.stage_scores,
            "crossfit_stage_scores": o.blend.crossfit_stage_scores,
            "crossfit_score": o.crossfit_score,
            "crossfit_folds": o.crossfit_folds,
            "validation": o.val_details,
            "validation_crossfit": o.crossfit_details,
            "support": o.support,
            "data": {
                "tuned": (
                    f"validation: {o.n_val} rows ({o.n_val_labelled} labelled) in "
                    f"{o.n_val_videos} videos; tuned and scored on the same rows (optimistic)"
                    + sampled
                ),
                "crossfit": (
                    f"validation, {o.crossfit_folds} folds of whole videos: every fold scored "
                    "by a blend tuned on the other folds, scores pooled over all rows"
                ),
            },
            "filled_rows": o.filled,
            "test_fill": o.fill.to_json(),
            "test_rows": len(o.test_rows),
        }
    return {
        "run": run,
        "package_version": __version__,
        "options": record(options),
        "tasks": tasks,
        "scores": scores,
        "p_mtl": p_mtl,
        "warnings": warnings,
    }


def forget_previous(json_path: Path, report_path: Path, out_dir: Path) -> None:
    """Remove the previous blend's record and report, then the submission files it wrote
    into `out_dir` that are unchanged since (files elsewhere or edited are left alone)."""
    recorded: list = []
    # No previous blend, or an unreadable record: nothing of it to remove.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads(json_path.read_text(encoding="utf-8")).get("submission_files", [])
    json_path.unlink(missing_ok=True)
    report_path.unlink(missing_ok=True)
    out = out_dir.resolve()
    for entry in recorded:
        if not isinstance(entry, dict) or not {"path", "sha256"} <= entry.keys():
            continue
        path = Path(entry["path"])
        unchanged = path.is_file() and sha256_file(path) == entry["sha256"]
        if path.resolve().is_relative_to(out) and unchanged:
            path.unlink()
