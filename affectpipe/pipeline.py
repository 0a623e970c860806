"""The `pipeline` command line: thin click wrappers that parse options and call stage APIs.

Exit codes: 0 ok, 1 runtime failure, 2 usage or input error. Stage modules are imported
lazily by their commands, so `pipeline --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from affectpipe import __version__
from affectpipe.blend.cli import blend, blend_bench, validate_submission
from affectpipe.config import DEFAULT_CACHE_DIR, Settings
from affectpipe.data.cli import index
from affectpipe.errors import AffectpipeError
from affectpipe.extract.cli import extract, extract_bench
from affectpipe.extract.weights_cli import weights
from affectpipe.finetune.cli import finetune
from affectpipe.heads.cli import heads, heads_bench
from affectpipe.plugins import load_plugins
from affectpipe.predict.cli import export_run, predict
from affectpipe.workflow_cli import demo, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--cache-dir",
    envvar="AFFECTPIPE_CACHE",
    default=DEFAULT_CACHE_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache root holding one folder per dataset (env AFFECTPIPE_CACHE).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(__version__, prog_name="affectpipe")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path, verbose: int) -> None:
    """affectpipe: frozen face backbones -> cached features -> shallow heads -> tuned blends.

    \b
    Typical use:
      pipeline index DATA_ROOT --format abaw-mtl --name abaw7
      pipeline extract --dataset abaw7 --gpu 0
      pipeline heads   --dataset abaw7
      pipeline blend   --dataset abaw7
    or `pipeline demo` for the whole chain on built-in synthetic data.

    Extensions (backbones, head models, dataset formats, submission styles) load from the
    modules named in $AFFECTPIPE_PLUGINS (comma-separated) and the `affectpipe.plugins`
    entry points.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings(cache_dir=cache_dir, verbose=verbose)


@cli.group()
def bench() -> None:
    """Measure throughput of a stage (results belong in docs/benchmarks.md)."""


for command in (
    index,
    extract,
    weights,
    finetune,
    heads,
    blend,
    validate_submission,
    predict,
    export_run,
    run,
    demo,
):
    cli.add_command(command)
bench.add_command(extract_bench, "extract")
bench.add_command(heads_bench, "heads")
bench.add_command(blend_bench, "blend")


def main() -> None:
    """Entry point: load plugins, run the CLI and map affectpipe errors to exit codes."""
    try:
        load_plugins()
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except AffectpipeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
