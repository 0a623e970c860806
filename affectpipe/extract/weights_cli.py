"""`pipeline weights list|fetch|verify`."""

from __future__ import annotations

import click


@click.group()
def weights() -> None:
    """List, fetch and verify backbone weight files."""
