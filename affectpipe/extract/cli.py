"""`pipeline extract` and `pipeline bench extract`."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.command()
def extract() -> None:
    """Run frozen backbones over every image and cache their features."""
    raise AffectpipeError("`pipeline extract` is not available yet")


@click.command()
def extract_bench() -> None:
    """Measure extraction throughput."""
    raise AffectpipeError("`pipeline bench extract` is not available yet")
