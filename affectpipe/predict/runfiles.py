"""A trained run as `predict` needs it, read from a dataset's cache or from an exported run.

`RunBundle` holds, per task, the tuned blend as `blend.json` records it (the blend or the
best single candidate the submission used) with the heads it weights, and per backbone the
identity of the features those heads were trained on (weights sha256, preprocessing,
precision, column groups; the OpenFace-style descriptor's fitted HOG PCA).

`export` writes all of it to one folder (or `.tar.gz`): ``export.json`` (identities, task
list, every file's sha256), ``heads/<task>/<candidate>.json`` + ``.safetensors``,
``blend.json``, ``backbones/<name>.safetensors`` for fitted arrays and, for a fine-tuned
variant (``BASE@RUN``), its weights and record under ``variants/``, which loading the export
installs into the weights cache (`finetune.variants.install_variant`: record schema,
sha256 against the record and the run's features, size capped). Reading never executes
code: JSON and safetensors only, pickles anywhere refused, archive members checked (no
absolute paths, ``..``, links, special or sparse files; sizes and count capped: see
`affectpipe.untrusted`) before anything is extracted, and only members `export.json` lists.
Every run file is checked against its schema (`runschema`) before use; every name a run
file gives stays inside the run.

The fingerprint chain: `blend.json` records the sha256 of each head file it tuned
(``provenance.heads``); a run whose heads changed since (retrained without `pipeline blend`)
is refused by `predict` and `export-run` (exit 1, naming the command to rerun). Exports copy
the head files byte for byte, so the fingerprints hold in the exported run too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from affectpipe import __version__
from affectpipe.blend.task_rules import TaskRules, rules_for
from affectpipe.blend.tuning import TaskBlend
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract import descriptor_arrays
from affectpipe.featuresets import parse_feature_set
from affectpipe.finetune.variants import SEPARATOR
from affectpipe.fsutil import (
    file_kind,
    open_regular,
    sha256_file,
    sha256_regular,
    write_text_atomic,
)
from affectpipe.heads.fitted import FittedHead, arrays_path, load_head, refuse_pickles
from affectpipe.predict.runschema import (
    EXPORT_FORMAT,
    EXPORT_SCHEMA,
    blend_problems,
    blend_schema,
)
from affectpipe.untrusted import Limits, check_schema, limits, read_json

log = logging.getLogger(__name__)
IDENTITY_ATTRS = (
    "weights_sha256",
    "random_init",
    "precision",
    "preprocessing",
    "descriptor",
    "weights_name",
    "official_sha256",
    "logit_names",
    "abaw_expr_index",
    "spatial_grid",
)


@dataclass
class BackboneRecord:
    """What a run's features were computed with; `arrays`: fitted arrays (descriptor PCA)."""

    name: str
    identity: dict[str, Any]
    groups: dict[str, list[int]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "groups": self.groups}


@dataclass
class TaskPlan:
    rules: TaskRules
    blend: TaskBlend  # weights over `heads`, in their order
    heads: list[FittedHead]
    files: list[Path] = field(default_factory=list)  # each head's JSON file (export copies it)


@dataclass
class RunBundle:
    source: str  # where it was read from, for messages
    tasks: dict[str, TaskPlan]
    backbones: dict[str, BackboneRecord]
    blend_document: dict[str, Any]


def _bad_run(where: Path, why: str) -> InputError:
    return InputError(f"{where}: not a usable run ({why})")


def _read_blend(path: Path) -> dict[str, Any]:
    """blend.json, checked against its schema (`runschema.blend_schema`)."""
    document = read_json(path)
    check_schema(document, blend_schema(), path)
    problems = blend_problems(document)
    if problems:
        raise InputError(f"{path}: {problems[0]}")
    return document


def _task_plans(
    document: dict[str, Any],
    where: Path,
    head_path: Callable[[str, str], Path],
    fingerprint: Callable[[str, str, Path], str | None],
    stale: Callable[[str], AffectpipeError],
) -> dict[str, TaskPlan]:
    """The blend of each task with its heads, each head's file matching the fingerprint
    blend.json recorded for it (`stale(why)` otherwise)."""
    recorded = (document.get("provenance") or {}).get("heads")
    if recorded is None:
        raise stale("blend.json records no head fingerprints (written by an older version)")
    plans = {}
    for task, entry in document["tasks"].items():
        rules = rules_for(task)
        try:
            blend, names = TaskBlend.from_json(entry, rules)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: task {task!r}: {exc}") from exc
        files = [head_path(task, name) for name in names]
        for name, file in zip(names, files, strict=True):
            wanted = recorded.get(task, {}).get(name)
            if wanted is None or fingerprint(task, name, file) != wanted:
                raise stale(f"head {task}/{name} changed since its blend was tuned")
        heads = [load_head(file) for file in files]
        for name, head in zip(names, heads, strict=True):
            if head.task != task:
                raise InputError(f"{where}: head {task}/{name} is a {head.task} head")
        plans[task] = TaskPlan(rules, blend, heads, files)
    return plans


def _backbones_of(plans: dict[str, TaskPlan]) -> list[str]:
    """Backbones the heads read, and those the blend stages in force read (e.g. gating)."""
    names = [
        b
        for p in plans.values()
        for h in p.heads
        for b in parse_feature_set(h.feature_set).backbones
    ]
    names += [name for p in plans.values() for name in p.blend.backbones()]
    return list(dict.fromkeys(names))


def load_from_cache(paths: DatasetPaths, run: str) -> RunBundle:
    """The run `run` of a dataset cache (after `pipeline blend`)."""
    from affectpipe.features import read_feature_file

    refuse_pickles(paths.run(run))
    blend_json = paths.blend_dir(run) / "blend.json"
    rerun = f"`pipeline blend --dataset {paths.root.name} --run {run}`"
    if not blend_json.exists():
        raise InputError(f"no tuned blend at {blend_json}: run `pipeline heads` and {rerun} first")
    document = _read_blend(blend_json)
    caps = limits()

    def stale(why: str) -> AffectpipeError:
        return AffectpipeError(f"{blend_json}: {why}: rerun {rerun}")

    plans = _task_plans(
        document,
        blend_json,
        lambda task, name: paths.head(run, task, name),
        lambda task, name, file: sha256_regular(file, caps.head_bytes) if file.exists() else None,
        stale,
    )
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
        arrays = {k: handle.extra(k) for k in descriptor_arrays(name)}
        backbones[name] = BackboneRecord(name, identity, dict(attrs.get("groups") or {}), arrays)
    return RunBundle(str(paths.run(run)), plans, backbones, document)


def export(bundle: RunBundle, out: Path) -> Path:
    """Write the bundle to folder `out` or, when it ends in .tar.gz, to that archive."""
    archive = out.name.endswith((".tar.gz", ".tgz"))
    if out.exists() and (archive or not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists: choose a new path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent if archive else None) as tmp:
            folder = Path(tmp) / "run" if archive else out
            _write_export(bundle, folder)
            if archive:
                partial = out.with_name(out.name + ".partial")
                with tarfile.open(partial, "w:gz") as tar:
                    for path in sorted(folder.rglob("*")):
                        tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
                partial.replace(out)
    except OSError as exc:
        raise InputError(f"cannot write the exported run to {out}: {exc.strerror or exc}") from None
    return out


def _write_export(bundle: RunBundle, folder: Path) -> None:
    from safetensors.numpy import save_file

    from affectpipe.extract import get_weights_entry

    (folder / "backbones").mkdir(parents=True, exist_ok=True)
    heads: dict[str, list[str]] = {}
    for task, plan in bundle.tasks.items():
        (folder / "heads" / task).mkdir(parents=True, exist_ok=True)
        heads[task] = []
        for head, file in zip(plan.heads, plan.files, strict=True):
            # Byte for byte: blend.json's fingerprint of the head must hold in the export.
            target = folder / "heads" / task / f"{head.candidate}.json"
            shutil.copyfile(file, target)
            shutil.copyfile(arrays_path(file), arrays_path(target))
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
        if SEPARATOR in name:
            entry["variant"] = _export_variant(record, folder)
        backbones[name] = entry
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            path.chmod(0o644)  # a shared run is meant to be read by others
            files[path.relative_to(folder).as_posix()] = sha256_file(path)
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
    (folder / "export.json").chmod(0o644)


def _export_variant(record: BackboneRecord, folder: Path) -> dict[str, str]:
    """Copy a fine-tuned variant's weights and record from the weights cache into the
    export; returns their paths there. The weights must be those of the run's features."""
    from affectpipe.finetune.variants import record_path, weights_path

    source = weights_path(record.name)
    recorded = record.identity.get("weights_sha256")
    if not source.is_file() or (recorded and sha256_file(source) != recorded):
        raise InputError(
            f"{source}: not the weights of variant {record.name} that the run's features were "
            "computed with: restore them (or re-extract and retrain) before exporting"
        )
    (folder / "variants").mkdir(exist_ok=True)
    paths = {"weights": f"variants/{source.name}", "record": f"variants/{record.name}.json"}
    shutil.copyfile(source, folder / paths["weights"])
    shutil.copyfile(record_path(record.name), folder / paths["record"])
    return paths


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "a path or kind"
        raise InputError(f"{archive}: member {member.name!r} is {kind} a run archive never holds")
    if member.issparse():
        raise InputError(f"{archive}: member {member.name!r} is a sparse file")


def _members(archive: Path, tar: tarfile.TarFile, caps: Limits) -> dict[str, tarfile.TarInfo]:
    """The archive's members by normalised name, each checked, their count and sizes capped
    from the headers alone (nothing extracted yet)."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for member in tar:
        if len(members) >= caps.run_files:
            raise InputError(
                f"{archive}: more than {caps.run_files} members (AFFECTPIPE_MAX_RUN_FILES)"
            )
        _check_member(archive, member)
        name = PurePosixPath(member.name).as_posix()
        if name in members:
            raise InputError(f"{archive}: member {name!r} appears twice")
        total += member.size
        if total > caps.run_bytes:
            raise InputError(
                f"{archive}: members unpack to more than {caps.run_bytes >> 20} MiB "
                "(AFFECTPIPE_MAX_RUN_MB)"
            )
        members[name] = member
    return members


def unpack(archive: Path, into: Path, caps: Limits | None = None) -> Path:
    """Extract an exported run archive after checking every member; returns the folder.

    export.json is extracted first; then only the files it lists (every other file member
    is refused), so that an archive can never fill the disk with what the run does not use.
    """
    caps = caps or limits()
    try:
        with (
            open_regular(archive, caps.run_bytes) as handle,
            tarfile.open(fileobj=handle, mode="r:*") as tar,
        ):
            members = _members(archive, tar, caps)
            if "export.json" not in members or not members["export.json"].isfile():
                raise _bad_run(archive, "no export.json: make it with `pipeline export-run`")
            tar.extractall(into, members=[members["export.json"]], filter="data")
            listed = _export_document(into, archive)["files"]
            for name, member in members.items():
                if member.isfile() and name != "export.json" and name not in listed:
                    raise _bad_run(archive, f"member {name!r} is not listed in its export.json")
            rest = [m for n, m in members.items() if n != "export.json"]
            tar.extractall(into, members=rest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{archive}: not a readable run archive ({exc})") from exc
    return into


def load_export(path: Path) -> RunBundle:
    """An exported run (folder or archive), its files checked against their recorded sha256."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise InputError(f"no exported run at {path}") from None
    if stat.S_ISDIR(mode):
        return _load_folder(path, path)
    if file_kind(mode) is not None:
        raise InputError(f"{path} is {file_kind(mode)}: expected a run folder or archive")
    tmp = Path(tempfile.mkdtemp(prefix="affectpipe-run-"))
    try:
        unpack(path, tmp)
        with _named_as(tmp, path):
            return _load_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _named_as(folder: Path, shown: Path) -> Iterator[None]:
    """Errors name the archive (`shown`), not the temporary folder it was unpacked to."""
    try:
        yield
    except AffectpipeError as exc:
        exc.args = (str(exc).replace(str(folder), str(shown)),)
        raise


def _export_document(folder: Path, shown: Path) -> dict[str, Any]:
    if not (folder / "export.json").exists():
        raise _bad_run(shown, "no export.json: make it with `pipeline export-run`")
    with _named_as(folder, shown):
        document = read_json(folder / "export.json")
        check_schema(document, EXPORT_SCHEMA, folder / "export.json")
    caps = limits()
    if len(document["files"]) > caps.run_files:
        raise _bad_run(shown, f"export.json lists more than {caps.run_files} files")
    return document


def _check_files(folder: Path, shown: Path, document: dict[str, Any]) -> None:
    """Every listed file inside the run, a regular file, of the recorded sha256; the heads
    and arrays export.json names among them."""
    caps = limits()
    root = folder.resolve()
    total = 0
    for name, digest in document["files"].items():
        file = folder / name
        if not file.resolve().is_relative_to(root):
            raise _bad_run(shown, f"{name} leads outside the run")
        try:
            actual = sha256_regular(file, caps.run_bytes)
            total += file.stat().st_size
        except InputError as exc:
            raise _bad_run(shown, f"{name}: {exc}") from None
        if total > caps.run_bytes:
            raise _bad_run(shown, f"its files exceed {caps.run_bytes >> 20} MiB")
        if actual != digest:
            raise _bad_run(shown, f"{name} does not match its recorded sha256")
    listed = set(document["files"])
    needed = ["blend.json"]
    for task, names in document["heads"].items():
        for name in names:
            needed += [f"heads/{task}/{name}.json", f"heads/{task}/{name}.safetensors"]
    needed += [entry["arrays"] for entry in document["backbones"].values() if "arrays" in entry]
    for entry in document["backbones"].values():
        needed += entry.get("variant", {}).values()
    for name in needed:
        if name not in listed:
            raise _bad_run(shown, f"{name} is not among its recorded files")


def _load_folder(folder: Path, shown: Path) -> RunBundle:
    refuse_pickles(folder)
    document = _export_document(folder, shown)
    _check_files(folder, shown, document)
    blend_document = _read_blend(folder / "blend.json")
    exported = document["heads"]
    for task, entry in blend_document["tasks"].items():
        for group in entry["weights"].values():
            missing = sorted(set(group) - set(exported.get(task, [])))
            if missing:
                raise _bad_run(shown, f"blend.json weights head {task}/{missing[0]}, not exported")

    def stale(why: str) -> AffectpipeError:
        return AffectpipeError(
            f"{shown}: {why}: rerun `pipeline blend`, then `pipeline export-run`, where the run "
            "was trained"
        )

    plans = _task_plans(
        blend_document,
        folder / "blend.json",
        lambda task, name: folder / "heads" / task / f"{name}.json",
        lambda task, name, file: document["files"][f"heads/{task}/{name}.json"],
        stale,
    )
    backbones = {
        name: _backbone(folder, shown, name, entry) for name, entry in document["backbones"].items()
    }
    missing = set(_backbones_of(plans)) - set(backbones)
    if missing:
        raise _bad_run(shown, f"no identity for backbones {sorted(missing)}")
    return RunBundle(str(shown), plans, backbones, blend_document)


def _backbone(folder: Path, shown: Path, name: str, entry: dict[str, Any]) -> BackboneRecord:
    """A backbone's record from export.json, its identity consistent, its groups and fitted
    arrays usable."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    identity = entry["identity"]
    if identity.get("random_init") and identity.get("weights_sha256"):
        raise _bad_run(shown, f"backbone {name}: random_init with a weights sha256")
    if identity.get("random_init"):
        log.warning(
            "%s: backbone %s of this run has RANDOMLY INITIALISED weights (as its features "
            "were computed, e.g. by `pipeline demo` offline): predictions are not those of a "
            "trained face model",
            shown,
            name,
        )
    for group, (start, stop) in entry["groups"].items():
        if start >= stop:
            raise _bad_run(shown, f"backbone {name}: group {group!r} is empty ({start}..{stop})")
    if "variant" in entry:  # installed first: the registry finds the variant from then on
        _install_variant(folder, shown, name, identity, entry["variant"])
    arrays: dict[str, np.ndarray] = {}
    if "arrays" in entry:
        try:
            arrays = load_file(str(folder / PurePosixPath(entry["arrays"])))
        except (SafetensorError, OSError, ValueError) as exc:
            raise _bad_run(shown, f"{entry['arrays']}: not a safetensors file ({exc})") from None
    wanted = descriptor_arrays(name)
    if set(arrays) != set(wanted):
        raise _bad_run(shown, f"backbone {name}: fitted arrays {sorted(arrays)}, not {wanted}")
    for key, value in arrays.items():
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise _bad_run(shown, f"backbone {name}: {key} is not a finite float array")
    return BackboneRecord(name, identity, entry["groups"], arrays)


def _install_variant(
    folder: Path, shown: Path, name: str, identity: dict[str, Any], files: dict[str, str]
) -> None:
    """Install the export's fine-tuned variant `name` into the weights cache (so that every
    stage finds it by name), its record matching the run's features."""
    from affectpipe.finetune.variants import install_variant

    if SEPARATOR not in name:
        raise _bad_run(shown, f"backbone {name} is not a fine-tuned variant (BASE@RUN)")
    with _named_as(folder, shown):
        install_variant(
            name,
            folder / files["record"],
            folder / files["weights"],
            f"{shown}: {files['record']}",
            identity.get("weights_sha256"),
        )
