"""`pipeline heads` and `pipeline bench heads`."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.command()
def heads() -> None:
    """Train shallow heads per task on cached features."""
    raise AffectpipeError("`pipeline heads` is not available yet")


@click.command()
def heads_bench() -> None:
    """Time the default heads run at s-Aff-Wild2 scale."""
    raise AffectpipeError("`pipeline bench heads` is not available yet")
