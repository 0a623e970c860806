"""`pipeline index`: dataset readers -> manifest."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.command()
def index() -> None:
    """Index a dataset into cache/<name>/manifest.parquet."""
    raise AffectpipeError("`pipeline index` is not available yet")
