"""`pipeline blend`, `pipeline validate-submission`, `pipeline bench blend`."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.command()
def blend() -> None:
    """Tune blends on validation and write submission files and a report."""
    raise AffectpipeError("`pipeline blend` is not available yet")


@click.command("validate-submission")
def validate_submission() -> None:
    """Check a submission file against a dataset's test list."""
    raise AffectpipeError("`pipeline validate-submission` is not available yet")


@click.command()
def blend_bench() -> None:
    """Time blend tuning on validation-sized predictions."""
    raise AffectpipeError("`pipeline bench blend` is not available yet")
