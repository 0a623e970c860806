"""Extensions from outside the package, loaded once before a command runs.

A plugin is a Python module that registers its extensions when imported, one call per
extension: `extract.registry.register` (a backbone, network or descriptor),
`heads.model_registry.register_head_model`, `data.formats.register` (a dataset format),
`submission.register_style` (a submission style). The `pipeline` command imports the
modules named in ``$AFFECTPIPE_PLUGINS`` (comma-separated, importable from ``sys.path``) and
those installed under the ``affectpipe.plugins`` entry-point group. Code in the Python API
imports its plugins itself. Plugins are code the user chose to run; files the pipeline reads
never name code to import.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from affectpipe.errors import InputError

ENV_VAR = "AFFECTPIPE_PLUGINS"
ENTRY_POINT_GROUP = "affectpipe.plugins"


def plugin_modules() -> list[str]:
    """The modules to load: the environment's list, then the installed entry points."""
    named = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    installed = [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(named + installed))


def load_plugins() -> list[str]:
    """Import every plugin module (once: Python caches modules); exit 2 naming the module
    when one cannot be imported or fails while registering."""
    loaded = []
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # a plugin's own bug: reported, never a traceback
            raise InputError(
                f"plugin {name!r} (from ${ENV_VAR} or the {ENTRY_POINT_GROUP!r} entry points) "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from None
        loaded.append(name)
    return loaded
