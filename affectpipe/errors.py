"""Exceptions the CLI turns into exit codes: 2 for bad input or usage, 1 for runtime failures."""

from __future__ import annotations

from pathlib import Path


class AffectpipeError(Exception):
    """A runtime failure (exit code 1)."""

    exit_code = 1


class InputError(AffectpipeError):
    """Bad user input: a file, an option, a missing prerequisite (exit code 2)."""

    exit_code = 2


class AnnotationError(InputError):
    """A malformed line in an input file; the message names file and line."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = Path(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: {message}")


class NoValidationError(InputError):
    """The dataset has no labelled validation rows to score heads and tune a blend on."""
