"""Options defined once: each stage's frozen dataclass is the single source of its defaults.

A field made with `option` carries the command-line face of a stage option (help text, flag,
click type). From the dataclass, `click_options` makes a command's click options (their
defaults are the fields'), `build` makes the dataclass from a command's keyword arguments or
from a TOML table, `table_schema` / `check_table` check such a table
(`untrusted.check_schema`: an unknown key, a wrong type or a value out of range is an
InputError naming the file and the key, exit 2), and `record` is what a stage's record
stores (`dataclasses.asdict`, as JSON). The Python API takes its defaults from the same
fields (``batch_size: int = ExtractOptions.batch_size``), so the command line, the API and
`pipeline run` cannot drift apart; `tests/test_options.py` checks that they do not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from affectpipe.errors import InputError
from affectpipe.untrusted import FINITE, check_schema

T = TypeVar("T")
_TEXT = {"type": "string", "maxLength": 10_000}
_MAX_ITEMS = 10_000


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    type: click.ParamType | None = None,
    is_flag: bool | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with a command-line face: `flag` (default ``--field-name``; a boolean
    may give ``--name/--no-name``), the click `type` (its range or choices also bound the
    TOML value), `is_flag` (default: a boolean default without a ``/`` pair)."""
    cli = {"help": help, "flag": flag, "type": type, "is_flag": is_flag, "metavar": metavar}
    return dataclasses.field(default=default, metadata={"cli": cli})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the modules use `from __future__ import annotations`


def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple or any(map(_is_tuple, typing.get_args(hint)))


def _is_path(hint: Any) -> bool:
    return hint is Path or Path in typing.get_args(hint)


def click_options(cls: type, *names: str) -> Callable:
    """Decorator: one click option per field of `cls` that has a command-line face (only
    `names`, when given), in field order, its parameter named as the field."""
    fields = [
        f for f in dataclasses.fields(cls) if "cli" in f.metadata and f.name in (names or [f.name])
    ]

    def decorate(func: Callable) -> Callable:
        for f in reversed(fields):  # decorators apply bottom-up
            func = _click_option(f, _hints(cls)[f.name])(func)
        return func

    return decorate


def _click_option(f: dataclasses.Field, hint: Any) -> Callable:
    cli = f.metadata["cli"]
    flag = cli["flag"] or "--" + f.name.replace("_", "-")
    is_flag = cli["is_flag"]
    if is_flag is None:
        is_flag = isinstance(f.default, bool) and "/" not in flag
    extra = {"type": cli["type"], "metavar": cli["metavar"]}
    if is_flag:
        extra["is_flag"] = True
    if _is_tuple(hint):
        extra["multiple"] = True
    return click.option(
        flag,
        f.name,
        default=f.default,
        show_default=True,
        help=cli["help"],
        **{k: v for k, v in extra.items() if v is not None},
    )


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """`cls` from the values of its fields in `values` (a command's keyword arguments or a
    checked TOML table; other keys are ignored, absent fields keep their defaults): lists
    become tuples, and text a Path where the field is one."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(value, list) and _is_tuple(hints[f.name]):
            value = tuple(value)
        elif isinstance(value, str) and _is_path(hints[f.name]):
            value = Path(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def record(options: Any) -> dict[str, Any]:
    """`options` as a stage's record stores it: `dataclasses.asdict`, as plain JSON values
    (paths as text, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))


def table_schema(*classes: type) -> dict[str, Any]:
    """JSON Schema of a TOML table whose keys are the fields of `classes`, each typed by its
    annotation and bounded by its click type (choices, ranges)."""
    properties = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            click_type = f.metadata.get("cli", {}).get("type")
            properties[f.name] = _schema(_hints(cls)[f.name], click_type)
    return {"type": "object", "additionalProperties": False, "properties": properties}


def check_table(table: Any, schema: dict[str, Any], where: str) -> None:
    """InputError ``WHERE: unknown key 'KEY'`` (naming the keys it knows), or the first
    violation of `schema` (`untrusted.check_schema`)."""
    known = schema["properties"]
    unknown = sorted(set(table) - set(known)) if isinstance(table, dict) else []
    if unknown:
        raise InputError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    check_schema(table, schema, where)


def _schema(hint: Any, click_type: click.ParamType | None) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: an optional field is one the table leaves out.
        kinds = [_schema(arg, click_type) for arg in args if arg is not type(None)]
        return kinds[0] if len(kinds) == 1 else {"anyOf": kinds}
    if origin is tuple:
        return {"type": "array", "items": _schema(args[0], click_type), "maxItems": _MAX_ITEMS}
    if isinstance(click_type, click.Choice):
        return {"enum": list(click_type.choices)}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", **_bounds(click_type)}
    if hint is float:
        return {**FINITE, **_bounds(click_type)}
    if hint in (str, Path):
        return _TEXT
    raise TypeError(f"no TOML schema for a field of type {hint!r}")


def _bounds(click_type: click.ParamType | None) -> dict[str, Any]:
    if not isinstance(click_type, (click.IntRange, click.FloatRange)):
        return {}
    bounds = {}
    for side, value, is_open in (
        ("minimum", click_type.min, click_type.min_open),
        ("maximum", click_type.max, click_type.max_open),
    ):
        if value is not None:
            bounds["exclusive" + side.title() if is_open else side] = value
    return bounds
