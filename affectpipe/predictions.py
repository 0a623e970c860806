"""The prediction-file contract and the heads run record, written and read in one place.

Prediction file ``runs/<run>/preds/<task>/<candidate>.parquet``: one row per predicted
manifest row (val and test rows; train rows too when cross-fitted)::

    row    int64    manifest row index (image keys may repeat, rows do not)
    image  string   the row's image key, to detect a manifest that changed underneath
    split  string   train / val / test
    <PRED_COLUMNS[task]>  float32: VA values or class / AU probabilities; NaN where the
                          row's features are not ok (no prediction)

Its Parquet key-value metadata holds, under the key ``affectpipe``, a JSON object with the
candidate's description (task, candidate, features, model, params, seed, ...) and:

    invocation        id of the `pipeline heads` invocation that wrote it
    inputs            {"manifest": manifest fingerprint,
                       "features": {backbone: `features.feature_fingerprint` of its file}}
    head_fingerprint  sha256 of the head's parameters (model, params, seeds, folds, scaling)

Run record ``runs/<run>/heads/run.json``: the run's ledger of committed candidates. A
`heads` invocation adds or replaces candidates; each one is committed on its own, right after
its head and prediction files are written: the ledger entry (``committed[task][name]``: the
invocation that wrote it, its feature set, model and head fingerprint) is added and the record
rewritten atomically. ``candidates`` lists the committed names per task (what `blend` uses by
default). A candidate whose files were being rewritten when an invocation was killed carries
another invocation id than its ledger entry and is refused until retrained; files that no
ledger entry lists are never used. `heads --fresh` starts the ledger (and the run's files)
over. `resolve_candidates` is the one place that decides which prediction files a later
stage may use: it refuses half-written files and files whose inputs changed since (exit 1,
naming each file and the command that fixes it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.features import feature_fingerprint
from affectpipe.fsutil import atomic_path, json_sha256, sha256_file, write_text_atomic
from affectpipe.manifest import read_manifest_metadata
from affectpipe.schema import PRED_COLUMNS, TASKS

METADATA_KEY = b"affectpipe"
BASE_COLUMNS = ("row", "image", "split")
RUN_RECORD = "run.json"


class StaleRunError(AffectpipeError):
    """Prediction files that must not be used as they are (exit 1): rerun `pipeline heads`."""


# --- fingerprints --------------------------------------------------------------------------


def manifest_fingerprint(path: str | Path) -> str:
    """The manifest's fingerprint: the one `pipeline index` records in its metadata (what went
    into it), else the sha256 of the file (manifests written by other tools and tests)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no manifest at {path}: run `pipeline index` first")
    recorded = read_manifest_metadata(path).get("fingerprint")
    return str(recorded) if recorded else sha256_file(path)


def input_fingerprints(paths: DatasetPaths, backbones: Sequence[str]) -> dict[str, Any]:
    """{"manifest": ..., "features": {backbone: ...}}: what a prediction was computed from."""
    return {
        "manifest": manifest_fingerprint(paths.manifest),
        "features": {b: feature_fingerprint(paths.features(b)) for b in sorted(set(backbones))},
    }


def head_fingerprint(description: dict[str, Any]) -> str:
    """sha256 of a head's parameters (any JSON-serialisable description)."""
    return json_sha256(description)


def new_invocation_id() -> str:
    return uuid.uuid4().hex


def retrain_command(paths: DatasetPaths, run: str, refs: Sequence[tuple[str, str]]) -> str:
    """The command(s) that retrain exactly these (task, candidate name) pairs of a run and
    commit them in place (`heads --candidate` takes the file-name form of a candidate)."""
    by_task: dict[str, list[str]] = {}
    for task, name in refs:
        by_task.setdefault(task, []).append(name)
    commands = []
    for task, names in by_task.items():
        chosen = " ".join(f"--candidate {name}" for name in dict.fromkeys(names))
        commands.append(
            f"`pipeline heads --dataset {paths.root.name} --run {run} --task {task} {chosen}`"
        )
    return "; ".join(commands)


# --- prediction files ----------------------------------------------------------------------


def prediction_base(frame: pd.DataFrame) -> pa.Table:
    """The ``row``, ``image`` and ``split`` columns of `frame` as the Arrow table
    `write_predictions` takes: built once and shared by every file of a run (converting the
    image strings per file cost as much as writing it)."""
    table = pa.Table.from_pandas(frame[list(BASE_COLUMNS)], preserve_index=False)
    return table.replace_schema_metadata()


def write_predictions(
    path: str | Path,
    base: pa.Table,
    outputs: np.ndarray,
    task: str,
    metadata: dict[str, Any],
) -> None:
    """Write one prediction file atomically.

    base: the ``row``, ``image`` and ``split`` columns of the rows to write
    (`prediction_base`); outputs: one row per manifest row (indexed by ``base["row"]``) or
    one per row of `base`. NaN outputs are stored as nulls.
    """
    columns = PRED_COLUMNS[task]
    rows = base["row"].to_numpy().astype(np.int64, copy=False)
    values = np.asarray(outputs, dtype=np.float32)
    if len(values) != len(base):
        values = values[rows]
    if values.shape[1:] != (len(columns),):
        raise ValueError(f"{task} predictions need {len(columns)} columns, got {values.shape}")
    table = base.select(list(BASE_COLUMNS))
    for j, column in enumerate(columns):
        table = table.append_column(column, pa.array(values[:, j], from_pandas=True))
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    with atomic_path(path) as tmp:
        # Dictionary-encoding the (distinct) image keys and the float columns costs more
        # than it saves: ~4x the write time, and larger files.
        pq.write_table(table, tmp, use_dictionary=["split"])


def read_prediction_metadata(path: str | Path) -> dict[str, Any]:
    """The file's ``affectpipe`` metadata ({} when it has none); InputError if unreadable."""
    path = Path(path)
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        return json.loads(raw) if raw else {}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read predictions ({exc})") from None


def read_prediction_table(path: str | Path, task: str) -> pa.Table:
    """The file's ``row``, ``image`` and prediction columns (Arrow, no per-row Python work);
    InputError naming a bad file."""
    path = Path(path)
    columns = ["row", "image", *PRED_COLUMNS[task]]
    try:
        present = pq.read_schema(path).names
        missing = [c for c in columns if c not in present]
        table = None if missing else pq.read_table(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read predictions ({exc})") from None
    if table is None:
        raise InputError(f"{path}: prediction file lacks columns {missing}")
    return table


def prediction_files(paths: DatasetPaths, run: str, task: str) -> list[Path]:
    folder = paths.run(run) / "preds" / task
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


# --- the run record ------------------------------------------------------------------------


def run_record_path(paths: DatasetPaths, run: str) -> Path:
    return paths.run(run) / "heads" / RUN_RECORD


def clear_run_record(paths: DatasetPaths, run: str) -> None:
    """Mark the run as being rewritten: until the new record exists, it is not usable."""
    run_record_path(paths, run).unlink(missing_ok=True)


def write_run_record(paths: DatasetPaths, run: str, record: dict[str, Any]) -> Path:
    path = run_record_path(paths, run)
    write_text_atomic(path, json.dumps(record, indent=2, allow_nan=True) + "\n")
    return path


def new_run_record(run: str) -> dict[str, Any]:
    """An empty ledger: no candidate committed yet."""
    return {"run": run, "invocation": None, "candidates": {}, "committed": {}}


def commit_candidate(
    paths: DatasetPaths,
    run: str,
    record: dict[str, Any],
    task: str,
    name: str,
    entry: dict[str, Any],
) -> None:
    """Add or replace one candidate in the ledger and write the record (atomically): from
    now on the candidate's files, written before, are part of the run. Names are kept in
    sorted order, so a run's candidates are listed the same whatever order they were
    trained or committed in."""
    record["committed"].setdefault(task, {})[name] = entry
    record["candidates"][task] = sorted({*record["candidates"].get(task, []), name})
    write_run_record(paths, run, record)


def read_run_record(paths: DatasetPaths, run: str) -> dict[str, Any] | None:
    """The run's ledger, None when there is none; InputError naming a damaged one. A record
    of the single-invocation layout (no ``committed``) reads as a ledger whose candidates
    were all committed by its invocation."""
    path = run_record_path(paths, run)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("candidates"), dict):
            raise ValueError("lacks its candidates")
        for task, names in record["candidates"].items():
            if task not in TASKS or not isinstance(names, list):
                raise ValueError(f"candidates of {task!r} are not a list of a known task")
            if not all(isinstance(name, str) for name in names):
                raise ValueError(f"candidates of {task!r} are not names")
        if "committed" not in record:
            if not isinstance(record.get("invocation"), str):
                raise ValueError("lacks its invocation")
            record["committed"] = {
                task: {name: {"invocation": record["invocation"]} for name in names}
                for task, names in record["candidates"].items()
            }
        committed = record["committed"]
        for task, names in record["candidates"].items():
            entries = committed.get(task) if isinstance(committed, dict) else None
            if not isinstance(entries, dict) or not all(
                isinstance(entries.get(name), dict)
                and isinstance(entries[name].get("invocation"), str)
                for name in names
            ):
                raise ValueError(f"candidates of {task!r} lack their ledger entries")
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a valid heads run record ({exc}); start the run over with "
            f"`pipeline heads --dataset {paths.root.name} --run {run} --fresh`"
        ) from None
    return record


def _explicit(paths: DatasetPaths, run: str, task: str, names: Sequence[str]) -> list[Path]:
    """Files of the candidates named for `task` (``NAME`` or ``TASK/NAME``)."""
    chosen = []
    for ref in names:
        ref_task, _, name = ref.rpartition("/")
        if ref_task and ref_task != task:
            continue
        path = paths.preds(run, task, name)
        if path.exists():
            chosen.append(path)
        elif ref_task:
            raise InputError(f"candidate {ref}: no prediction file at {path}")
    return chosen


def resolve_candidates(
    paths: DatasetPaths, run: str, task: str, names: Sequence[str] | None = None
) -> list[Path]:
    """The prediction files of `task` that a later stage may use, checked.

    Without `names`: every candidate the run's ledger lists for `task`, each file written by
    the invocation that committed it. With `names` (``NAME`` or ``TASK/NAME``): those files,
    whichever invocation wrote them. Either way every file's recorded input fingerprints must
    match the current manifest and feature files. Raises StaleRunError (exit 1) naming every
    file that must not be used and the command that retrains them, InputError (exit 2) when
    there is nothing to load.
    """
    present = prediction_files(paths, run, task)
    if names:
        chosen = _explicit(paths, run, task, names)
        if not chosen:
            raise InputError(
                f"none of the candidates {', '.join(names)} has predictions for task {task} "
                f"in run {run!r} (available: {', '.join(p.stem for p in present) or 'none'})"
            )
        problems: list[tuple[Path, str]] = []
    else:
        record = read_run_record(paths, run)
        listed = [] if record is None else list(record["candidates"].get(task, []))
        if not listed:
            skipped = (record or {}).get("skipped", {}).get(task)
            if present:
                raise StaleRunError(
                    f"no {task} candidate of run {run!r} is committed in "
                    f"{run_record_path(paths, run)}, but {present[0].parent} holds "
                    f"{len(present)} prediction file(s) of an unfinished heads invocation"
                    + (f" ({skipped})" if skipped else "")
                    + f"; train the task: `pipeline heads --dataset {paths.root.name} "
                    f"--run {run} --task {task}`"
                )
            raise InputError(
                f"no predictions for task {task!r} in run {run!r}"
                + (f" ({skipped})" if skipped else "")
                + f": run `pipeline heads --dataset {paths.root.name} --run {run}` first"
            )
        chosen, problems = _committed(paths, run, task, record)
    current: dict[str, str] = {}
    for path in chosen:
        problem = stale_inputs(path, paths, current)
        if problem:
            problems.append((path, problem))
    if problems:
        refs = [(task, path.stem) for path, _ in problems]
        raise StaleRunError(
            "; ".join(problem for _, problem in problems)
            + f". Retrain: {retrain_command(paths, run, refs)} (or start the run over with "
            f"`pipeline heads --dataset {paths.root.name} --run {run} --fresh`, or name the "
            "candidates to use)"
        )
    return chosen


def _committed(
    paths: DatasetPaths, run: str, task: str, record: dict[str, Any]
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The ledger's files for `task`, and (file, problem) for each one that is missing or
    was rewritten by an invocation that did not commit it."""
    chosen, problems = [], []
    for name in record["candidates"][task]:
        path = paths.preds(run, task, name)
        committed_by = record["committed"][task][name]["invocation"]
        if not path.exists():
            problems.append(
                (path, f"{path} is committed in {run_record_path(paths, run)} but missing")
            )
            continue
        written_by = read_prediction_metadata(path).get("invocation")
        if written_by != committed_by:
            why = (
                f"{path} was rewritten by a heads invocation that did not commit it "
                f"({written_by or 'unrecorded'}; the ledger's is {committed_by}): half-written"
            )
            problems.append((path, why))
            continue
        chosen.append(path)
    return chosen, problems


def write_prediction_run(
    paths: DatasetPaths,
    run: str,
    base: pd.DataFrame,
    outputs: dict[str, dict[str, np.ndarray]],
    **record: Any,
) -> str:
    """A complete run written at once, without heads (synthetic runs, imported predictions):
    `outputs` is {task: {candidate: values for the rows of `base`}}; the inputs are the
    current manifest alone. Returns the invocation id."""
    invocation = new_invocation_id()
    inputs = input_fingerprints(paths, [])
    clear_run_record(paths, run)
    table = prediction_base(base)
    names: dict[str, list[str]] = {}
    for task, candidates in outputs.items():
        for name, values in candidates.items():
            meta = {"task": task, "candidate": name, "invocation": invocation, "inputs": inputs}
            write_predictions(paths.preds(run, task, name), table, values, task, meta)
            names.setdefault(task, []).append(name)
    record = {
        "run": run,
        "invocation": invocation,
        "inputs": inputs,
        "candidates": names,
        "committed": {
            task: {name: {"invocation": invocation} for name in task_names}
            for task, task_names in names.items()
        },
        "skipped": {},
        **record,
    }
    write_run_record(paths, run, record)
    return invocation


def stale_inputs(
    path: Path, paths: DatasetPaths, current: dict[str, str] | None = None
) -> str | None:
    """Why the file's recorded inputs are not the current manifest and feature files
    (a sentence naming the file), None when they are. `current` caches
    fingerprints across calls (keys: "manifest", file paths)."""
    current = {} if current is None else current
    inputs = read_prediction_metadata(path).get("inputs")
    if not isinstance(inputs, dict) or "manifest" not in inputs:
        return f"{path} records no input fingerprints (written by an older version)"
    if "manifest" not in current:
        current["manifest"] = manifest_fingerprint(paths.manifest)
    if inputs["manifest"] != current["manifest"]:
        return f"{path} was computed from another manifest than {paths.manifest} (re-indexed since)"
    features = inputs.get("features") or {}
    for backbone, recorded in sorted(features.items() if isinstance(features, dict) else ()):
        feature_path = paths.features(backbone)
        key = str(feature_path)
        if key not in current:
            current[key] = feature_fingerprint(feature_path) if feature_path.exists() else ""
        if not current[key]:
            return f"{path} was computed from {feature_path}, which is gone (re-extract {backbone})"
        if recorded != current[key]:
            return (
                f"{path} is stale: {feature_path} changed since it was computed (re-extracted, "
                "other weights or manifest)"
            )
    return None


def available_tasks(paths: DatasetPaths, run: str) -> list[str]:
    """Tasks with prediction files in the run, in the usual order."""
    return [task for task in TASKS if prediction_files(paths, run, task)]
