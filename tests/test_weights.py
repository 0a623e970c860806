"""Weights manager: local overrides, cache, downloads (offline, corrupt, partial) and the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import urllib.error
from pathlib import Path

import pytest

from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract import weights as weights_module
from affectpipe.extract.weights import (
    WEIGHTS,
    cached_path,
    get_weights_entry,
    resolve_weights,
)
from affectpipe.pipeline import main

NAME = "ddamfn_affectnet8"
# Starts like a torch zip archive, which is all the downloader checks.
PAYLOAD = b"PK\x03\x04 not really a checkpoint, but bytes to download" * 100
UNREACHABLE = "http://127.0.0.1:9/affecnet8_epoch25_acc0.6469.pth"


@pytest.fixture(autouse=True)
def weights_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder for every test."""
    monkeypatch.setenv("AFFECTPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def use_entry(monkeypatch, **changes) -> weights_module.WeightsEntry:
    entry = dataclasses.replace(WEIGHTS[NAME], **changes)
    monkeypatch.setitem(WEIGHTS, NAME, entry)
    return entry


def served_file(tmp_path: Path) -> str:
    source = tmp_path / "served.pth"
    source.write_bytes(PAYLOAD)
    return source.as_uri()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_lookup_by_weights_or_backbone_name():
    assert get_weights_entry("ddamfn") is get_weights_entry(NAME)
    assert get_weights_entry("mt-emotieffnet").filename == "enet_b0_8_va_mtl.pt"
    with pytest.raises(InputError, match="unknown weights 'nope'"):
        get_weights_entry("nope")


def test_override_is_hashed_and_must_exist(tmp_path):
    local = tmp_path / "mine.pth"
    local.write_bytes(PAYLOAD)
    resolved = resolve_weights(NAME, override=local)
    assert (resolved.path, resolved.sha256) == (local, sha(PAYLOAD))
    assert resolved.official_sha256 == WEIGHTS[NAME].sha256
    with pytest.raises(InputError, match="missing.pth"):
        resolve_weights(NAME, override=tmp_path / "missing.pth")


def test_offline_download_names_urls_and_target_path(monkeypatch, weights_home):
    use_entry(monkeypatch, urls=(UNREACHABLE,))
    with pytest.raises(InputError) as error:
        resolve_weights(NAME)
    message = str(error.value)
    assert UNREACHABLE in message
    assert str(weights_home / "affecnet8_epoch25_acc0.6469.pth") in message
    assert "--weights ddamfn=PATH" in message
    assert not weights_home.exists() or not any(weights_home.iterdir())


def test_download_then_cached_copy_is_used(tmp_path, monkeypatch, weights_home):
    entry = use_entry(monkeypatch, urls=(UNREACHABLE, served_file(tmp_path)))
    resolved = resolve_weights(NAME)
    assert resolved.path == cached_path(entry) == weights_home / entry.filename
    assert resolved.path.read_bytes() == PAYLOAD
    assert resolved.sha256 == sha(PAYLOAD)
    assert sorted(p.name for p in weights_home.iterdir()) == [
        entry.filename,
        entry.filename + ".sha256",
    ]

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", no_network)
    assert resolve_weights(NAME) == resolved


def test_checksum_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch, weights_home):
    use_entry(monkeypatch, urls=(served_file(tmp_path),), sha256="0" * 64)
    with pytest.raises(AffectpipeError, match="does not match"):
        resolve_weights(NAME)
    assert not any(weights_home.iterdir())


def test_known_checksum_is_accepted(tmp_path, monkeypatch):
    use_entry(monkeypatch, urls=(served_file(tmp_path),), sha256=sha(PAYLOAD))
    assert resolve_weights(NAME).official_sha256 == sha(PAYLOAD)


def test_html_page_is_not_accepted_as_weights(tmp_path, monkeypatch, weights_home):
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html>Not Found</html>")
    use_entry(monkeypatch, urls=(page.as_uri(),))
    with pytest.raises(InputError, match="not a weights file"):
        resolve_weights(NAME)
    assert not any(weights_home.iterdir())


class _BrokenResponse:
    """A response whose connection drops: fewer bytes than announced, or an error mid-read."""

    def __init__(self, data: bytes, announced: int, fail: bool):
        self.data, self.fail = data, fail
        self.headers = {"Content-Length": str(announced)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size: int) -> bytes:
        if not self.data:
            if self.fail:
                raise ConnectionResetError("connection reset by peer")
            return b""
        block, self.data = self.data[:size], self.data[size:]
        return block


@pytest.mark.parametrize("fail", [False, True])
def test_partial_download_is_never_used(monkeypatch, weights_home, fail):
    use_entry(monkeypatch, urls=("https://example.invalid/file.pth",))
    half = PAYLOAD[: len(PAYLOAD) // 2]
    monkeypatch.setattr(
        weights_module.urllib.request,
        "urlopen",
        lambda url, timeout: _BrokenResponse(half, len(PAYLOAD), fail),
    )
    with pytest.raises(InputError, match="could not be downloaded"):
        resolve_weights(NAME)
    assert not any(weights_home.iterdir())


def test_leftover_temporary_file_is_not_a_cached_copy(monkeypatch, weights_home):
    entry = use_entry(monkeypatch, urls=(UNREACHABLE,))
    weights_home.mkdir(parents=True)
    (weights_home / f".{entry.filename}.tmp-12345").write_bytes(PAYLOAD[:10])
    with pytest.raises(InputError, match="could not be downloaded"):
        resolve_weights(NAME)


def test_corrupted_cache_is_an_error(tmp_path, monkeypatch):
    entry = use_entry(monkeypatch, urls=(served_file(tmp_path),))
    resolve_weights(NAME)  # downloads and records the hash
    cached_path(entry).write_bytes(PAYLOAD[:-1])
    with pytest.raises(AffectpipeError, match="corrupt"):
        resolve_weights(NAME)


def test_network_errors_are_reported_per_url(monkeypatch):
    def refuse(url, timeout):
        raise urllib.error.URLError("no route to host")

    use_entry(monkeypatch, urls=("https://a.invalid/x.pth", "https://b.invalid/x.pth"))
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", refuse)
    with pytest.raises(InputError, match=r"a\.invalid/x\.pth: no route to host") as error:
        resolve_weights(NAME)
    assert "b.invalid" in str(error.value)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pipeline", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_cli_list_fetch_verify(tmp_path, monkeypatch, capsys, weights_home):
    code, out = run_cli(monkeypatch, capsys, "weights", "list")
    assert code == 0
    for entry in WEIGHTS.values():
        assert entry.name in out and entry.filename in out
    assert str(weights_home) in out
    code, out = run_cli(monkeypatch, capsys, "weights", "list", "--urls")
    assert code == 0 and WEIGHTS[NAME].urls[0] in out

    use_entry(monkeypatch, urls=(served_file(tmp_path),))
    code, out = run_cli(monkeypatch, capsys, "weights", "fetch", "ddamfn")
    assert code == 0 and sha(PAYLOAD) in out
    code, out = run_cli(monkeypatch, capsys, "weights", "list")
    assert any(NAME in line and " yes " in line for line in out.splitlines())

    code, out = run_cli(monkeypatch, capsys, "weights", "verify", NAME)
    assert code == 0 and "ok" in out
    cached_path(WEIGHTS[NAME]).write_bytes(b"tampered")
    code, out = run_cli(monkeypatch, capsys, "weights", "verify")
    assert code == 1 and "MISMATCH" in out and "not cached" in out


def test_cli_fetch_offline_exits_2(monkeypatch, capsys):
    use_entry(monkeypatch, urls=(UNREACHABLE,))
    code, out = run_cli(monkeypatch, capsys, "weights", "fetch", NAME)
    assert code == 2 and UNREACHABLE in out
