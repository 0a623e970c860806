"""Schemas of the files a run is made of, as `predict` reads them (`affectpipe.untrusted`).

`export.json` (what `pipeline export-run` wrote: tasks, heads, backbone identities, every
file's sha256) and `blend.json` (the tuned blend of each task, and the fingerprint of each
head it tuned) are checked against these before any value is used: types, ranges,
finiteness, lengths, allowed keys, and names that are plain file names (no '/', no '..'),
so a name can never point outside the run. `blend_problems` adds what a schema cannot say.
"""

from __future__ import annotations

from typing import Any

from affectpipe.blend.options import KERNELS
from affectpipe.blend.stage_registry import blend_stages
from affectpipe.blend.task_rules import rules_for
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, TASKS
from affectpipe.untrusted import FINITE, NAME, RELATIVE_PATH, SHA256, finite_array

EXPORT_FORMAT = "affectpipe-run/1"
MAX_HALF_WIDTH = 10_000  # smoothing windows are tuned up to 100 frames
MAX_NAMES = 10_000  # candidates of a task
MAX_WIDTH = 1_000_000  # feature columns of a backbone
MAX_SPATIAL_GRID = 16  # features.MAX_SPATIAL_GRID (that module needs h5py, this one must not)
WEIGHT_SUM_TOLERANCE = 1e-4  # the weight search's weights sum to 1

_NULL = {"type": "null"}
_POSTS = {
    "va": {
        "required": ["scale", "shift"],
        "properties": {"scale": finite_array(2, -100, 100), "shift": finite_array(2, -100, 100)},
    },
    "expr": {
        "required": ["offsets"],
        "properties": {"offsets": finite_array(len(EXPR_NAMES), -100, 100)},
    },
    "au": {
        "required": ["thresholds"],
        "properties": {"thresholds": finite_array(len(AU_COLUMNS), 0, 1)},
    },
}


def _task_entry(task: str) -> dict[str, Any]:
    rules = rules_for(task)
    weights = {
        "type": "object",
        "propertyNames": NAME,
        "additionalProperties": {**FINITE, "minimum": 0, "maximum": 1},
        "minProperties": 1,
    }
    return {
        "type": "object",
        "required": ["candidates", "weights", "smoothing", rules.post_name],
        "properties": {
            "candidates": {
                "type": "array",
                "items": NAME,
                "uniqueItems": True,
                "minItems": 1,
                "maxItems": MAX_NAMES,
            },
            "weights": {
                "type": "object",
                "required": [g.name for g in rules.groups],
                "additionalProperties": False,
                "properties": {g.name: weights for g in rules.groups},
            },
            "smoothing": {
                "type": "object",
                "required": ["kernel", "half_width"],
                "properties": {
                    "kernel": {"enum": list(KERNELS)},
                    "half_width": {"type": "integer", "minimum": 0, "maximum": MAX_HALF_WIDTH},
                },
            },
            rules.post_name: {"type": "object", **_POSTS[task]},
            **{stage.name: stage.json_schema for stage in blend_stages(rules)},
            "kept": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }


def blend_schema() -> dict[str, Any]:
    """blend.json's schema, with the blend stages registered now (plugins' included)."""
    return {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {task: _task_entry(task) for task in TASKS},
            },
            "provenance": {
                "type": "object",
                "properties": {
                    "heads": {
                        "type": "object",
                        "propertyNames": {"enum": list(TASKS)},
                        "additionalProperties": {
                            "type": "object",
                            "propertyNames": NAME,
                            "additionalProperties": {"anyOf": [SHA256, _NULL]},
                        },
                    },
                },
            },
        },
    }


_IDENTITY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "weights_sha256": {"anyOf": [SHA256, _NULL]},
        "random_init": {"type": "boolean"},
        "precision": {"enum": ["fp32", "fp16", "bf16", "int8"]},
        "preprocessing": {"type": ["object", "string"]},
        "descriptor": {"type": "string", "maxLength": 10_000},
        "weights_name": {"type": "string", "maxLength": 200},
        "official_sha256": {"anyOf": [SHA256, _NULL]},
        "logit_names": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
        "spatial_grid": {"type": "integer", "minimum": 1, "maximum": MAX_SPATIAL_GRID},
        "abaw_expr_index": {
            "anyOf": [
                _NULL,
                {
                    "type": "array",
                    "items": {"anyOf": [_NULL, {"type": "integer", "minimum": -1, "maximum": 999}]},
                    "minItems": len(EXPR_NAMES),
                    "maxItems": len(EXPR_NAMES),
                },
            ]
        },
    },
}

EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "tasks", "heads", "backbones", "files"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": EXPORT_FORMAT},
        "package_version": {"type": "string", "maxLength": 100},
        "source": {"type": "string", "maxLength": 10_000},
        "tasks": {
            "type": "array",
            "items": {"enum": list(TASKS)},
            "uniqueItems": True,
            "minItems": 1,
        },
        "heads": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"enum": list(TASKS)},
            "additionalProperties": {
                "type": "array",
                "items": NAME,
                "uniqueItems": True,
                "minItems": 1,
                "maxItems": MAX_NAMES,
            },
        },
        "backbones": {
            "type": "object",
            "propertyNames": NAME,
            "additionalProperties": {
                "type": "object",
                "required": ["identity", "groups"],
                "additionalProperties": False,
                "properties": {
                    "identity": _IDENTITY,
                    "groups": {
                        "type": "object",
                        "propertyNames": NAME,
                        "additionalProperties": {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 0, "maximum": MAX_WIDTH},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "arrays": RELATIVE_PATH,
                    "weights_source": {"type": "object"},
                    "variant": {
                        "type": "object",
                        "required": ["weights", "record"],
                        "additionalProperties": False,
                        "properties": {"weights": RELATIVE_PATH, "record": RELATIVE_PATH},
                    },
                },
            },
        },
        "files": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": RELATIVE_PATH,
            "additionalProperties": SHA256,
        },
    },
}


def blend_problems(document: dict[str, Any]) -> list[str]:
    """What a schema-valid blend.json still gets wrong: weights of a group that do not sum
    to 1, or that name a candidate the task does not list."""
    problems = []
    for task, entry in document["tasks"].items():
        listed = set(entry["candidates"])
        for group, weights in entry["weights"].items():
            unknown = sorted(set(weights) - listed)
            if unknown:
                problems.append(f"tasks.{task}.weights.{group}: {unknown[0]!r} is not a candidate")
            total = sum(weights.values())
            if abs(total - 1) > WEIGHT_SUM_TOLERANCE:
                problems.append(f"tasks.{task}.weights.{group}: weights sum to {total}, not 1")
    return problems
