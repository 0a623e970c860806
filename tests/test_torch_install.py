"""A torchvision that does not match torch (the CPU-only install of issue 20) is a clear
error naming both versions and the fix, exit 2, never a traceback; the constraints files pin
pairs that match."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from affectpipe.extract.vision import matching_torchvision

# Makes `import torchvision` fail as a torchvision built for another torch does.
BROKEN_TORCHVISION = """
import importlib.abc, sys

class _Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            import importlib.util
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")

sys.meta_path.insert(0, _Broken())
"""


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    return dict(re.findall(r"^(torch|torchvision)==(\S+)$", text, flags=re.M))


def test_constraint_files_pin_matching_pairs():
    for name in ("constraints.txt", "constraints-cpu.txt"):
        pins = _pins(REPO / name)
        assert matching_torchvision(pins["torch"]) == pins["torchvision"].split("+")[0], name
    cpu = _pins(REPO / "constraints-cpu.txt")
    assert cpu["torch"].endswith("+cpu") and cpu["torchvision"].endswith("+cpu")
    assert "constraints-cpu.txt" in (REPO / "README.md").read_text()
    assert matching_torchvision("2.13.0+cpu") == "0.28.0"
    assert matching_torchvision("1.13.1") is None


@pytest.mark.slow
def test_a_mismatched_torchvision_is_a_clear_error(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BROKEN_TORCHVISION)
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = run_cli(
        "bench",
        "extract",
        "--repeat",
        "1",
        "--backbones",
        "mt-emotieffnet",
        "--workers",
        "0",
        # torch's own path (a cached ONNX graph would run without importing torchvision)
        "--runtime",
        "torch",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    import torch

    message = result.stderr
    assert f"does not work with torch {torch.__version__}" in message
    assert "operator torchvision::nms does not exist" in message
    wanted = matching_torchvision(torch.__version__)
    assert f"pip install 'torchvision=={wanted}'" in message
