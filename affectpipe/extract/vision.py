"""torchvision (timm needs it) must be the build made for the installed torch.

A torchvision built for another torch fails at import in several ways (a RuntimeError such as
``operator torchvision::nms does not exist``, an ImportError or an AttributeError from its
compiled ops). `import_timm` turns any of them into an InputError that names both versions
and the pip command installing the matching torchvision (from PyTorch's CPU index for a CPU
build of torch), instead of a traceback from deep inside timm.
"""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# torchvision 0.(N + 15).P is the build for torch 2.N.P (0.15 for 2.0 ... 0.29 for 2.14).
TORCHVISION_MINOR_OFFSET = 15


def import_timm() -> ModuleType:
    """timm, after checking that torchvision imports with this torch."""
    check_torchvision()
    import timm

    return timm


def check_torchvision() -> None:
    """Import torchvision; a missing or mismatched build is an InputError saying how to fix it."""
    from affectpipe.errors import InputError

    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a build for another torch fails with any of several types
        raise InputError(mismatch_message(exc)) from None


def mismatch_message(exc: BaseException) -> str:
    """What is installed, why it fails, and the command that installs the matching pair."""
    import torch

    torch_version = torch.__version__
    try:
        installed = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    cpu = torch.version.cuda is None
    index = f" --index-url {CPU_INDEX}" if cpu else ""
    wanted = matching_torchvision(torch_version)
    fix = (
        f"pip install 'torchvision=={wanted}'{index}"
        if wanted
        else "pip install -c constraints.txt torch torchvision"
    )
    pair = (
        (
            " (or the tested CPU pair: pip install -c constraints-cpu.txt --extra-index-url "
            f"{CPU_INDEX} torch torchvision)"
        )
        if cpu
        else ""
    )
    if installed is None:
        return f"torchvision is not installed (timm needs it) beside torch {torch_version}: {fix}"
    return (
        f"torchvision {installed} does not work with torch {torch_version} "
        f"({type(exc).__name__}: {exc}); install the torchvision built for this torch: "
        f"{fix}{pair}"
    )


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release built for `torch_version` ("2.13.0+cpu" -> "0.28.0")."""
    parts = torch_version.split("+")[0].split(".")
    if len(parts) < 3 or parts[0] != "2" or not all(p.isdigit() for p in parts[1:3]):
        return None
    return f"0.{int(parts[1]) + TORCHVISION_MINOR_OFFSET}.{parts[2]}"
