"""Reading files someone else made: size and nesting caps, schemas, errors naming the field.

A shared run (`pipeline export-run`), a config, a head file may all be crafted. Each is read
whole as a regular file under a size cap (`fsutil.read_regular`: no FIFO, device or link to
one), its JSON nesting is capped before any code walks it, and the document is checked
against a JSON Schema (`jsonschema`) before any value of it is used. Every violation is an
`InputError` (exit 2) naming the file and the field.

The caps (`limits`) can be raised through environment variables, for a user who trusts a
larger run: ``AFFECTPIPE_MAX_RUN_MB`` (all files of an exported run together, unpacked),
``AFFECTPIPE_MAX_RUN_FILES`` (members of a run archive) and ``AFFECTPIPE_MAX_HEAD_MB`` (one
head file: LightGBM models are text inside it).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectpipe.errors import InputError
from affectpipe.fsutil import read_regular

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    json_bytes: int = 16 * MIB  # export.json, blend.json, run.json, configs: a few KB
    head_bytes: int = 256 * MIB  # one head file; 12 AU boosters of 300 rounds are ~10 MB
    run_bytes: int = 2048 * MIB  # an exported run, all files unpacked: ~10 MB in practice
    run_files: int = 10_000  # members of a run archive: 2 per head, plus 3
    json_depth: int = 64  # nesting of any JSON document: head files use ~10 levels


def _env_int(name: str, default: int, scale: int = 1) -> int:
    text = os.environ.get(name)
    if text is None:
        return default * scale
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"environment variable {name}={text!r}: expected a positive integer")
    return value * scale


def limits() -> Limits:
    """The caps in force (defaults, or the environment's overrides; see the module doc)."""
    base = Limits()
    return Limits(
        json_bytes=base.json_bytes,
        head_bytes=_env_int("AFFECTPIPE_MAX_HEAD_MB", base.head_bytes // MIB, MIB),
        run_bytes=_env_int("AFFECTPIPE_MAX_RUN_MB", base.run_bytes // MIB, MIB),
        run_files=_env_int("AFFECTPIPE_MAX_RUN_FILES", base.run_files),
        json_depth=base.json_depth,
    )


def read_json(path: str | Path, max_bytes: int | None = None) -> Any:
    """A JSON document from a regular file of at most `max_bytes` (default: the JSON cap),
    nested at most `Limits.json_depth` deep; InputError naming the file otherwise."""
    return _read_document(path, "JSON", json.loads, ValueError, max_bytes)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML document (a config) from a regular file, capped like `read_json`."""
    import tomllib

    return _read_document(path, "TOML", tomllib.loads, tomllib.TOMLDecodeError, None)


def _read_document(
    path: str | Path,
    kind: str,
    parse: Callable[[str], Any],
    parse_error: type[Exception],
    max_bytes: int | None,
) -> Any:
    """`parse` of a regular file's UTF-8 text, with the size and depth caps of `limits`."""
    caps = limits()
    data = read_regular(path, caps.json_bytes if max_bytes is None else max_bytes)
    try:
        document = parse(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: unreadable {kind} (not UTF-8: byte {exc.start})") from None
    except RecursionError:
        raise InputError(f"{path}: {kind} nested too deeply") from None
    except parse_error as exc:
        raise InputError(f"{path}: unreadable {kind} ({exc})") from None
    if _deeper_than(document, caps.json_depth):
        raise InputError(f"{path}: {kind} nested more than {caps.json_depth} levels deep")
    return document


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists / objects nest more than `limit` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _finite(validator: Any, wanted: bool, instance: Any, schema: Mapping) -> Any:
    """The ``finite`` keyword: JSON Schema's numeric checks let NaN through (NaN < 1 is false),
    and Python's JSON reader accepts NaN and Infinity."""
    if wanted and isinstance(instance, float) and not math.isfinite(instance):
        from jsonschema.exceptions import ValidationError

        yield ValidationError(f"{instance!r} is not a finite number")


@functools.cache
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"finite": _finite})


def check_schema(document: Any, schema: dict[str, Any], where: str | Path) -> None:
    """InputError ``WHERE: FIELD: WHY`` for the first (most relevant) violation of `schema`."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator_class()(schema).iter_errors(document))
    if error is not None:
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        field = error.json_path if error.json_path != "$" else "top level"
        raise InputError(f"{where}: {field}: {message}")


# Schema pieces shared by the run files and configs.
FINITE = {"type": "number", "finite": True}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# A file name part: letters, digits, '.', '_', '+', '@', '-', never starting with '.' (so no '..').
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$", "maxLength": 200}
# A relative POSIX path of such parts: never absolute, never climbing out with '..'.
RELATIVE_PATH = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+@-]*(/[A-Za-z0-9][A-Za-z0-9._+@-]*)*$",
    "maxLength": 1000,
}


def finite_array(length: int, minimum: float | None = None, maximum: float | None = None) -> dict:
    """Schema of a list of `length` finite numbers, optionally bounded."""
    item: dict[str, Any] = dict(FINITE)
    if minimum is not None:
        item["minimum"] = minimum
    if maximum is not None:
        item["maximum"] = maximum
    return {"type": "array", "items": item, "minItems": length, "maxItems": length}
