"""Registry of dataset layouts that `pipeline index --format` understands."""

from __future__ import annotations

from affectpipe.data.dataset import DatasetFormat
from affectpipe.data.formats.abaw_mtl import AbawMtl
from affectpipe.data.formats.abaw_task import AbawTask
from affectpipe.data.formats.abaw_tasks import AbawTasks
from affectpipe.data.formats.csv_table import CsvTable
from affectpipe.data.formats.videos import VideoFolder
from affectpipe.errors import InputError

_FORMATS: dict[str, DatasetFormat] = {}
_ALIASES: dict[str, str] = {}


def register(fmt: DatasetFormat, *aliases: str) -> None:
    _FORMATS[fmt.name] = fmt
    _ALIASES.update({alias: fmt.name for alias in aliases})


def get_format(name: str) -> DatasetFormat:
    key = _ALIASES.get(name, name)
    if key not in _FORMATS:
        raise InputError(f"unknown dataset format {name!r}; known: {', '.join(format_names())}")
    return _FORMATS[key]


def format_names() -> list[str]:
    return sorted([*_FORMATS, *_ALIASES])


register(AbawMtl())
for _task in ("va", "expr", "au"):
    register(AbawTask(_task))
register(AbawTasks())
register(CsvTable(), "folder")
register(VideoFolder())
