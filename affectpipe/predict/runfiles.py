"""A trained run as `predict` needs it, read from a dataset's cache or from an exported run.

`RunBundle` holds, per task, the tuned blend as `blend.json` records it (the blend or the
best single candidate the submission used) with the heads it weights, and per backbone the
identity of the features those heads were trained on (weights sha256, preprocessing,
precision, column groups; the OpenFace-style descriptor's fitted HOG PCA).

`export` writes all of it to one folder (or `.tar.gz`): ``export.json`` (identities, task
list, every file's sha256), ``heads/<task>/<candidate>.json`` + ``.safetensors``,
``blend.json`` and ``backbones/<name>.safetensors`` for fitted arrays. Reading never executes
code: JSON and safetensors only, pickles anywhere refused, archive members checked (no
absolute paths, ``..``, links or special files) before anything is extracted.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from affectpipe import __version__
from affectpipe.blend.tasks import TaskRules, rules_for
from affectpipe.blend.tuning import TaskBlend
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import sha256_file, write_text_atomic
from affectpipe.heads.featuresets import parse_feature_set
from affectpipe.heads.fitted import FittedHead, arrays_path, load_head, refuse_pickles

EXPORT_FORMAT = "affectpipe-run/1"
DESCRIPTOR_ARRAYS = {"openface": ("hog_pca_mean", "hog_pca_components")}
IDENTITY_ATTRS = ("weights_sha256", "random_init", "precision", "preprocessing", "descriptor",
                  "weights_name", "official_sha256", "logit_names", "abaw_expr_index")


@dataclass
class BackboneRecord:
    """What a run's features were computed with; `arrays`: fitted arrays (descriptor PCA)."""

    name: str
    identity: dict[str, Any]
    groups: dict[str, list[int]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_descriptor(self) -> bool:
        return self.name in DESCRIPTOR_ARRAYS

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "groups": self.groups}


@dataclass
class TaskPlan:
    rules: TaskRules
    blend: TaskBlend  # weights over `heads`, in their order
    heads: list[FittedHead]


@dataclass
class RunBundle:
    source: str  # where it was read from, for messages
    tasks: dict[str, TaskPlan]
    backbones: dict[str, BackboneRecord]
    blend_document: dict[str, Any]


def _bad_run(where: Path, why: str) -> InputError:
    return InputError(f"{where}: not a usable run ({why})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: unreadable JSON ({exc})") from exc


def _task_plans(document: dict[str, Any], head_path, where: Path) -> dict[str, TaskPlan]:
    tasks = document.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise _bad_run(where, "its blend.json records no task")
    plans = {}
    for task, entry in tasks.items():
        try:
            rules = rules_for(task)
            blend, names = TaskBlend.from_json(entry, rules)
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_run(where, f"blend.json task {task!r}: {exc}") from exc
        plans[task] = TaskPlan(rules, blend, [load_head(head_path(task, n)) for n in names])
    return plans


def _backbones_of(plans: dict[str, TaskPlan]) -> list[str]:
    """Backbones the heads read, and those whose own predictions gate a blend."""
    names = [b for p in plans.values() for h in p.heads
             for b in parse_feature_set(h.feature_set).backbones]
    names += [p.blend.gate["source"] for p in plans.values() if p.blend.gate]
    return list(dict.fromkeys(names))


def load_from_cache(paths: DatasetPaths, run: str) -> RunBundle:
    """The run `run` of a dataset cache (after `pipeline blend`)."""
    from affectpipe.features import read_feature_file

    refuse_pickles(paths.run(run))
    blend_json = paths.blend_dir(run) / "blend.json"
    try:
        document = _read_json(blend_json)
    except FileNotFoundError:
        raise InputError(
            f"no tuned blend at {blend_json}: run `pipeline heads` and `pipeline blend "
            f"--dataset {paths.root.name} --run {run}` first"
        ) from None
    plans = _task_plans(document, lambda task, name: paths.head(run, task, name), blend_json)
    backbones = {}
    for name in _backbones_of(plans):
        handle = read_feature_file(paths.features(name))
        attrs = handle.attrs
        if attrs.get("openface_dir"):
            raise InputError(
                f"{name} features were imported from OpenFace CSVs ({attrs['openface_dir']}): "
                "predict cannot compute them for new images; train on a computed backbone"
            )
        identity = {k: attrs.get(k) for k in IDENTITY_ATTRS if attrs.get(k) is not None}
        arrays = {k: handle.extra(k) for k in DESCRIPTOR_ARRAYS.get(name, ())}
        backbones[name] = BackboneRecord(name, identity, dict(attrs.get("groups") or {}), arrays)
    return RunBundle(str(paths.run(run)), plans, backbones, document)


def export(bundle: RunBundle, out: Path) -> Path:
    """Write the bundle to folder `out` or, when it ends in .tar.gz, to that archive."""
    from safetensors.numpy import save_file

    from affectpipe.extract.weights import get_weights_entry

    archive = out.name.endswith((".tar.gz", ".tgz"))
    if out.exists() and (archive or any(out.iterdir())):
        raise InputError(f"{out} already exists: choose a new path")
    with tempfile.TemporaryDirectory(dir=out.parent if archive else None) as tmp:
        folder = Path(tmp) / "run" if archive else out
        (folder / "backbones").mkdir(parents=True, exist_ok=True)
        heads: dict[str, list[str]] = {}
        for task, plan in bundle.tasks.items():
            (folder / "heads" / task).mkdir(parents=True, exist_ok=True)
            heads[task] = []
            for head in plan.heads:
                head.save(folder / "heads" / task / f"{head.candidate}.json")
                heads[task].append(head.candidate)
        write_text_atomic(folder / "blend.json", json.dumps(bundle.blend_document, indent=1))
        backbones = {}
        for name, record in bundle.backbones.items():
            entry = record.to_json()
            weights_name = record.identity.get("weights_name")
            if weights_name:
                source = get_weights_entry(str(weights_name))
                entry["weights_source"] = {"file": source.filename, "urls": list(source.urls)}
            if record.arrays:
                save_file(dict(record.arrays), str(folder / "backbones" / f"{name}.safetensors"))
                entry["arrays"] = f"backbones/{name}.safetensors"
            backbones[name] = entry
        files = {
            p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()
        }
        document = {
            "format": EXPORT_FORMAT,
            "package_version": __version__,
            "source": bundle.source,
            "tasks": list(bundle.tasks),
            "heads": heads,
            "backbones": backbones,
            "files": files,
        }
        write_text_atomic(folder / "export.json", json.dumps(document, indent=1) + "\n")
        if archive:
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                for path in sorted(folder.rglob("*")):
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
            partial.replace(out)
    return out


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "a path or kind"
        raise InputError(f"{archive}: member {member.name!r} is {kind} a run archive never holds")


def unpack(archive: Path, into: Path) -> Path:
    """Extract an exported run archive after checking every member; returns the folder."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{archive}: not a readable run archive ({exc})") from exc
    return into


def load_export(path: Path) -> RunBundle:
    """An exported run (folder or archive), its files checked against their recorded sha256."""
    from safetensors.numpy import load_file

    path = Path(path)
    if path.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="affectpipe-run-"))
        try:
            unpack(path, tmp)
            return _load_folder(tmp, path, load_file)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not path.is_dir():
        raise InputError(f"no exported run at {path}")
    return _load_folder(path, path, load_file)


def _load_folder(folder: Path, shown: Path, load_file) -> RunBundle:
    refuse_pickles(folder)
    try:
        document = _read_json(folder / "export.json")
    except FileNotFoundError:
        raise _bad_run(shown, "no export.json: make it with `pipeline export-run`") from None
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise _bad_run(shown, f"export.json is not {EXPORT_FORMAT}")
    for name, digest in dict(document.get("files") or {}).items():
        file = folder / name
        inside = file.resolve().is_relative_to(folder.resolve())
        if not inside or not file.is_file() or sha256_file(file) != digest:
            raise _bad_run(shown, f"{name} is missing or does not match its recorded sha256")
    listed = set(document.get("files") or {})
    for task, names in dict(document.get("heads") or {}).items():
        for name in names:
            relative = f"heads/{task}/{name}.json"
            if relative not in listed or arrays_path(Path(relative)).as_posix() not in listed:
                raise _bad_run(shown, f"head {relative} is not among its recorded files")
    blend_document = _read_json(folder / "blend.json")
    plans = _task_plans(
        blend_document, lambda task, name: folder / "heads" / task / f"{name}.json", shown
    )
    backbones = {}
    for name, entry in dict(document.get("backbones") or {}).items():
        arrays = {}
        if entry.get("arrays"):
            if entry["arrays"] not in listed:
                raise _bad_run(shown, f"{entry['arrays']} is not among its recorded files")
            arrays = load_file(str(folder / PurePosixPath(entry["arrays"])))
        backbones[name] = BackboneRecord(
            name, dict(entry.get("identity") or {}), dict(entry.get("groups") or {}), arrays
        )
    missing = set(_backbones_of(plans)) - set(backbones)
    if missing:
        raise _bad_run(shown, f"no identity for backbones {sorted(missing)}")
    return RunBundle(str(shown), plans, backbones, blend_document)
