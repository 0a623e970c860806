"""Every `--help` text says only what exists: each `--option` it mentions is an option of
the pipeline (of that command when the text names no other), each repository file it points
to is in the repository, no default points outside it, and the file names `index` discovers
are the ones the code looks for."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from affectpipe.pipeline import cli

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# A path into this repository (the README's and the help's way of naming example files).
REPO_PATH = re.compile(r"(?<![\w/.-])(?:docs|affectpipe|benchmarks|tests)/[\w./-]*\.\w+")
# A default that lives outside the repository (it exists only beside this checkout, in CI).
OUTSIDE = re.compile(r"default:?[^\]]{0,30}?(\.\./[\w./-]+)")
# `pipeline COMMAND [SUBCOMMAND]`: the command an option mention belongs to.
NAMED = re.compile(r"pipeline ((?:[a-z-]+)(?: [a-z-]+)?)")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple]:
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def _options(command: click.Command) -> set[str]:
    """The command's long options, with the --help click adds to every command (and those a
    command makes when it runs, like blend's `--no-<stage>` flags)."""
    return {"--help"} | {
        name
        for p in command.get_params(click.Context(command))
        if isinstance(p, click.Option)
        for name in (*p.opts, *p.secondary_opts)
        if name.startswith("--")
    }


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="pipeline")
    assert result.exit_code == 0, result.output
    return result.output


COMMANDS = dict(_commands(cli))
EVERY_OPTION = set().union(*map(_options, COMMANDS.values())) | _options(cli)


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "pipeline")
def test_help_mentions_only_what_exists(path: tuple[str, ...]) -> None:
    text = _help(path)
    command = COMMANDS.get(path, cli)
    own = _options(command) | _options(cli)
    for sentence in re.split(r"(?<=[.;:])\s|\n\s*\n", text):
        named = [tuple(m.split()) for m in NAMED.findall(sentence)]
        named = [n if n in COMMANDS else n[:1] for n in named]
        allowed = set().union(*(_options(COMMANDS[n]) for n in named if n in COMMANDS)) | own
        for option in OPTION.findall(sentence):
            assert option in (allowed if named else own | EVERY_OPTION), (
                f"`pipeline {' '.join(path)} --help` mentions {option}, which is not an "
                f"option of {named or 'any command'}:\n{sentence}"
            )
    for file in REPO_PATH.findall(text):
        assert (REPO / file).exists(), f"`pipeline {' '.join(path)} --help` names {file}"
    outside = OUTSIDE.findall(re.sub(r"\s+", " ", text))  # click wraps long defaults
    assert not outside, f"`pipeline {' '.join(path)} --help` has defaults outside: {outside}"


def test_the_checks_catch_drift() -> None:
    """The patterns above find what the issue found (so the test above can fail)."""
    assert OPTION.findall("run `pipeline index --val-fraction 0.2`") == ["--val-fraction"]
    assert REPO_PATH.findall("(see affectpipe/heads/pipeline.example.toml).") == [
        "affectpipe/heads/pipeline.example.toml"
    ]
    assert not (REPO / "affectpipe/heads/pipeline.example.toml").exists()
    assert OUTSIDE.findall("[default: ../shared/fixtures/images/bench112]")


def test_discovered_test_list_names_are_documented() -> None:
    from affectpipe.data.formats import abaw_mtl, abaw_task

    names = [*abaw_mtl.TEST_LISTS, *(n for ns in abaw_task.TEST_LISTS.values() for n in ns)]
    help_text = re.sub(r"\s+", " ", _help(("index",)))
    readme = (REPO / "README.md").read_text()
    for name in names:
        assert name in help_text, f"`pipeline index --help` does not name {name}"
        assert name in readme, f"README.md does not name {name}"


def test_help_names_the_files_heads_write() -> None:
    """Heads are JSON + safetensors (storage refuses pickles): the help says so."""
    from pathlib import Path

    from affectpipe.heads.fitted import arrays_path

    text = _help(("heads",))
    assert ".joblib" not in text and ".pkl" not in text
    assert "CANDIDATE.json" in text
    assert arrays_path(Path("CANDIDATE.json")).suffix in text
