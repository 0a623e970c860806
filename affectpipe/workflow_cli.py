"""`pipeline run` and `pipeline demo`: the stages chained."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.command()
def run() -> None:
    """Chain index (if needed), extract, heads and blend."""
    raise AffectpipeError("`pipeline run` is not available yet")


@click.command()
def demo() -> None:
    """Run the whole pipeline on built-in synthetic data."""
    raise AffectpipeError("`pipeline demo` is not available yet")
