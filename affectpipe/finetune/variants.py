"""Fine-tuned variants of registered backbones: ``BASE@RUN`` in the weights cache.

A variant is two files in ``<weights_dir>/variants/``: ``BASE@RUN.safetensors`` (the
`FinetuneNet` state_dict, plain tensors) and ``BASE@RUN.json``, its record (base backbone and
base weights sha256, the weights file's sha256, task outputs, pooling, and its provenance:
data fingerprint, recipe options, seed; plus validation scores and timings). The backbone
registry asks `variant_backbone` for any name with an ``@`` it does not know, so every
stage (extract, heads, blend, predict, export-run) finds a variant by name like any other
backbone: its spec is the base's spec with the variant's outputs, and its weights entry pins
the recorded sha256.

Importing this module needs no torch (the registry may consult it from the heads stage);
a variant's `BackboneSpec` is made on first use through this module's ``__getattr__``
(the registry's ``"module:attribute"`` convention, attribute = the variant's name).
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

from affectpipe.config import weights_dir
from affectpipe.errors import InputError
from affectpipe.extract import registry
from affectpipe.untrusted import SHA256, check_schema

SEPARATOR = "@"
RECORD_FORMAT = "affectpipe-variant/1"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MODULE = __name__

RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "name", "base", "base_weights_sha256", "weights_sha256", "tasks",
                 "pool", "channels", "provenance"],
    "properties": {
        "format": {"const": RECORD_FORMAT},
        "name": {"type": "string"},
        "base": {"type": "string"},
        "base_weights_sha256": {"anyOf": [SHA256, {"const": "random-init"}]},
        "weights_sha256": SHA256,
        "tasks": {"type": "array", "minItems": 1, "uniqueItems": True,
                  "items": {"enum": ["va", "expr", "au"]}},
        "pool": {"enum": ["embedding", "attention"]},
        "channels": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
        "provenance": {"type": "object", "required": ["data", "options", "seed"]},
    },
}  # fmt: skip


def variants_dir() -> Path:
    return weights_dir() / "variants"


def variant_name(base: str, run: str) -> str:
    """``BASE@RUN`` for a registered model backbone BASE (exit 2 for a bad name)."""
    if SEPARATOR in base:
        raise InputError(f"{base} is already a fine-tuned variant: fine-tune its base instead")
    registry.get(base, "model")
    if not _RUN_NAME.fullmatch(run):
        raise InputError(
            f"bad variant run name {run!r}: letters, digits, '_' and '-' only "
            "(no '.', which feature-set file names use)"
        )
    return f"{base}{SEPARATOR}{run}"


def weights_path(name: str) -> Path:
    return variants_dir() / f"{name}.safetensors"


def record_path(name: str) -> Path:
    return variants_dir() / f"{name}.json"


def read_record(name: str) -> dict[str, Any] | None:
    """The variant's record (None when there is none), checked against its schema."""
    path = record_path(name)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: unreadable variant record: {exc}") from None
    check_schema(record, RECORD_SCHEMA, path)
    if record["name"] != name or record["base"] + SEPARATOR not in name:
        raise InputError(f"{path}: the record is for {record['name']!r}, not {name!r}")
    return record


def install_variant(
    name: str, record_file: Path, weights_file: Path, where: str, expected: str | None = None
) -> None:
    """Put variant `name` of a shared run (its record and weights files, untrusted: `where`
    names them in errors) into the weights cache, where every stage finds it. The record
    must pass its schema, name `name` and record the weights sha256 `expected` (the run's
    features', when given); the weights must match it (size capped by the run limit). A
    variant already there with the same weights is kept; one with other weights is never
    replaced (InputError)."""
    import shutil

    from affectpipe.fsutil import atomic_path, sha256_regular
    from affectpipe.untrusted import limits, read_json

    base, _, run = name.partition(SEPARATOR)
    record = read_json(record_file)
    check_schema(record, RECORD_SCHEMA, where)
    if record["name"] != name or record["base"] != base or not _RUN_NAME.fullmatch(run):
        raise InputError(f"{where}: the record is for {record['name']!r}, not {name!r}")
    registry.get(base, "model")
    if expected is not None and record["weights_sha256"] != expected:
        raise InputError(f"{where}: {name}'s weights are not those of the run's features")
    if sha256_regular(weights_file, limits().run_bytes) != record["weights_sha256"]:
        raise InputError(f"{where}: the weights of {name} do not match its record's sha256")
    local = read_record(name)
    if local is not None and local["weights_sha256"] != record["weights_sha256"]:
        raise InputError(
            f"{record_path(name)} is another variant of the name {name} (other weights) than "
            f"{where}'s: remove it (or predict with another AFFECTPIPE_HOME)"
        )
    if local is not None and weights_path(name).is_file():
        return  # the same weights: resolving them checks the file's sha256
    variants_dir().mkdir(parents=True, exist_ok=True)
    for source, target in ((weights_file, weights_path(name)), (record_file, record_path(name))):
        with atomic_path(target) as tmp:  # the record last: it makes the variant known
            shutil.copyfile(source, tmp)


def variant_backbone(name: str) -> registry.Backbone | None:
    """The registry entry of variant `name`, made from its record (None: no such variant)."""
    base, sep, run = name.partition(SEPARATOR)
    if not sep or not _RUN_NAME.fullmatch(run):
        return None
    record = read_record(name)
    if record is None:
        return None
    entry = registry.WeightsEntry(
        name, f"variants/{name}.safetensors", sha256=record["weights_sha256"]
    )
    return registry.Backbone(name, "model", f"{_MODULE}:{name}", registry.CNN_HEADS, entry)


def known_variants() -> list[str]:
    """Names of the variants in the weights cache."""
    folder = variants_dir()
    return sorted(p.stem for p in folder.glob(f"*{SEPARATOR}*.json")) if folder.is_dir() else []


def variant_spec(name: str) -> Any:
    """The `BackboneSpec` of variant `name`: its base's, with the variant's outputs."""
    import dataclasses

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.finetune.network import OutputLayout

    record = read_record(name)
    if record is None:
        raise InputError(f"no fine-tuned variant {name!r} in {variants_dir()}")
    base = get_backbone(record["base"])
    layout = OutputLayout(tuple(record["tasks"]))
    shape = (record["base"], layout, record["pool"], int(record["channels"]))
    pooled = record["pool"] == "attention"
    return dataclasses.replace(
        base,
        name=name,
        embedding_dim=2 * int(record["channels"]) if pooled else base.embedding_dim,
        logit_names=layout.names,
        abaw_expr_index=layout.abaw_expr_index,
        builder=partial(build_variant, *shape),
        loader=partial(load_variant, *shape, name),
        description=f"{record['base']} fine-tuned on {', '.join(record['tasks'])} "
        f"(run {name.partition(SEPARATOR)[2]})",
    )


def build_variant(base: str, layout: Any, pool: str, channels: int) -> Any:
    """A variant's network with random weights (its base's module, its task layer)."""
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.finetune.network import build_network

    return build_network(get_backbone(base), layout, pool, channels)


def load_variant(base: str, layout: Any, pool: str, channels: int, name: str, path: Path) -> Any:
    """A variant's network with the weights of its safetensors file, every key matching."""
    from affectpipe.extract.weights import load_strict

    return load_strict(
        build_variant(base, layout, pool, channels), path, f"the weights of variant {name}"
    )


def __getattr__(attribute: str) -> Any:
    if SEPARATOR in attribute:
        return variant_spec(attribute)
    raise AttributeError(f"module {_MODULE!r} has no attribute {attribute!r}")
