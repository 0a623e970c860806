"""Extraction under faults (issue 15 items 2-5, 10-12; issue 9 item 9): killed runs with decode
workers, unreadable and non-regular image files, a full disk, leftovers, retries of failed
rows, damaged cache files, names that leave the cache and oversized images."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from test_extract_engine import (
    TINY,
    arrays_of,
    attrs_of,
    make_dataset,
    make_images,
    register_tiny,
    run_tiny,
)

from affectpipe import extract
from affectpipe import features as features_module
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract import decode, registry
from affectpipe.extract import store as store_module
from affectpipe.extract.rawrows import Finalized
from affectpipe.features import read_feature_file
from affectpipe.fsutil import file_lock, is_disk_full, pid_alive, write_text_atomic
from affectpipe.manifest import empty_manifest, write_manifest

TESTS = Path(__file__).parent
REPO = TESTS.parent
SLEEP_ENV = "AFFECTPIPE_TEST_DESCRIBE_SLEEP"  # seconds per image in the decode workers
PIDS_ENV = "AFFECTPIPE_TEST_WORKER_PIDS"  # folder where each decode worker leaves its pid
STALL_ENV = "AFFECTPIPE_TEST_STALL_FLAG"  # while this file exists, workers stall (a slow image)


@pytest.fixture()
def tiny():
    return register_tiny()


class SlowColour:
    """A toy descriptor run in the decode workers: mean RGB, optionally slow."""

    name = "slow-colour"
    raw_dim = 3

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        if os.environ.get(PIDS_ENV):
            Path(os.environ[PIDS_ENV], str(os.getpid())).touch()
        stall = os.environ.get(STALL_ENV)
        if stall and Path(stall).exists():
            Path(f"{stall}.{os.getpid()}").touch()
            time.sleep(30)
        time.sleep(float(os.environ.get(SLEEP_ENV, "0")))
        return rgb.reshape(-1, 3).mean(axis=0).astype(np.float32), True

    def finalize_rows(self, rows, train_mask, scratch=None):
        chunks = ((s, {"embedding": b, "ok": rows.ok[s : s + len(b)]}) for s, b in rows.blocks())
        return Finalized(3, {"colour": [0, 3]}, {}, chunks)


def run_with_workers(root: str, workers: int) -> None:
    """What the killed subprocess runs: a CNN and a descriptor sharing decode workers."""
    register_tiny()
    registry.register(registry.Backbone(SlowColour.name, "descriptor", SlowColour))
    extract.run(
        DatasetPaths(Path(root)),
        [TINY, SlowColour.name],
        random_init=True,
        workers=workers,
        batch_size=2,
        chunk_rows=4,
        progress=False,
    )


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_extract_faults as t
t.run_with_workers({root!r}, {workers})
"""


def script_command(paths: DatasetPaths, workers: int) -> list[str]:
    code = SCRIPT.format(tests=str(TESTS), root=str(paths.root), workers=workers)
    return [sys.executable, "-c", code]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- 15.2 / 9.9: locks die with their owner ----------------------------------------------------


def test_lock_is_not_inherited_by_children_and_a_dead_owner_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock, pids = tmp_path / ".x.lock", tmp_path / "pids"
    # The owner forks a long-lived child (as DataLoader workers are), then dies abruptly.
    code = (
        "import os, sys, time\n"
        "from affectpipe.fsutil import file_lock\n"
        f"with file_lock({str(lock)!r}):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        f"    open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child}}')\n"
        "    os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=60, check=True)
    owner, child = map(int, pids.read_text().split())
    try:
        assert pid_alive(child)
        with file_lock(lock):  # at once, while the forked child still lives
            pass
    finally:
        os.kill(child, signal.SIGKILL)
    assert f"taking over the lock of process {owner}" in caplog.text
    assert lock.read_text() == ""  # released cleanly: no owner recorded


def test_a_held_lock_names_its_owner(tmp_path: Path) -> None:
    lock = tmp_path / ".x.lock"
    code = (
        "import time\nfrom affectpipe.fsutil import file_lock\n"
        f"with file_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AffectpipeError, match=f"process {holder.pid}"), file_lock(lock):
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_sigkill_with_decode_workers_then_immediate_rerun(tiny, tmp_path: Path) -> None:
    paths = make_dataset(tmp_path / "killed")
    pids, stall = tmp_path / "pids", tmp_path / "stall"
    pids.mkdir()
    env = child_env(**{SLEEP_ENV: "0.05", PIDS_ENV: str(pids), STALL_ENV: str(stall)})
    child = subprocess.Popen(script_command(paths, workers=2), env=env)
    parts = paths.features_dir / f".{TINY}.h5.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk-*.npz"))) < 2 and time.monotonic() < deadline:
        assert child.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    stall.touch()  # the workers now meet a slow image (a long descriptor batch)
    while not list(tmp_path.glob("stall.*")) and time.monotonic() < deadline:
        assert child.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stall.unlink()
    workers = [int(p.name) for p in pids.iterdir() if int(p.name) != child.pid]
    assert workers, "the descriptor should have run in decode worker processes"
    assert not paths.features(TINY).exists()

    rerun = subprocess.run(
        script_command(paths, workers=2),
        env=child_env(**{SLEEP_ENV: "0"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"taking over the lock of process {child.pid}" in rerun.stderr
    assert "resuming after" in rerun.stderr
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in workers), "orphaned decode workers live on"

    reference = make_dataset(tmp_path / "reference")
    registry.register(registry.Backbone(SlowColour.name, "descriptor", SlowColour))
    try:
        extract.run(
            reference,
            [TINY, SlowColour.name],
            random_init=True,
            workers=0,
            batch_size=2,
            chunk_rows=4,
            progress=False,
        )
    finally:
        registry.unregister(SlowColour.name)
    for name in (TINY, SlowColour.name):
        got, want = arrays_of(paths.features(name)), arrays_of(reference.features(name))
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        assert attrs_of(paths.features(name)) == attrs_of(reference.features(name))


# --- 15.3: unreadable folders and files ---------------------------------------------------------


@pytest.fixture()
def unreadable(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Folders whose contents cannot be reached, as after `chmod 000 FOLDER` for a normal
    user (the tests run as root, for whom chmod changes nothing): stat and open of anything
    inside fail with EACCES. Append folders to the returned list."""
    blocked: list[Path] = []
    real_stat, real_open, real_builtin_open = os.stat, os.open, builtins.open

    def deny(path) -> None:
        if isinstance(path, int):
            return
        full = os.path.abspath(os.fsdecode(path))
        if any(full.startswith(str(folder) + os.sep) for folder in blocked):
            raise PermissionError(errno.EACCES, "Permission denied", full)

    def fake_stat(path, *args, **kwargs):
        deny(path)
        return real_stat(path, *args, **kwargs)

    def fake_open(path, *args, **kwargs):
        deny(path)
        return real_open(path, *args, **kwargs)

    def fake_builtin_open(file, *args, **kwargs):
        deny(file)
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_builtin_open)
    return blocked


def test_unreadable_folder_becomes_failed_rows(tiny, tmp_path: Path, unreadable) -> None:
    paths = make_dataset(tmp_path)
    unreadable.append((tmp_path / "images" / "vid1").resolve())
    summary = run_tiny(paths)  # does not raise
    features = extract_features(paths)
    in_vid1 = np.char.startswith(features["image"], "vid1/")
    assert in_vid1.sum() == 5
    assert not features["ok"][in_vid1].any()
    reasons = {f["image"]: f["reason"] for f in attrs_of(paths.features(TINY))["failed_images"]}
    for image in features["image"][in_vid1]:
        assert reasons[image] == "unreadable: permission denied"
    assert summary.reports[0].failed_count == 5 + 5  # the vid1 images + the odd bad files


def extract_features(paths: DatasetPaths) -> dict[str, np.ndarray]:
    with h5py.File(paths.features(TINY), "r") as handle:
        return {"image": handle["image"].asstr()[...].astype(str), "ok": handle["ok"][...]}


# --- 15.5: non-regular files ----------------------------------------------------------------------


def dataset_with(tmp_path: Path, extra_keys: list[str]) -> DatasetPaths:
    root = tmp_path / "images"
    keys = make_images(root, n_good=6)[:6] + extra_keys
    frame = empty_manifest(len(keys))
    frame["image"] = keys
    frame["video"] = [k.split("/")[0] for k in keys]
    frame["frame"] = np.arange(len(keys))
    frame["split"] = ["train"] * 4 + ["val"] * (len(keys) - 4)
    frame["has_image"] = True
    paths = DatasetPaths.of(tmp_path / "cache", "special")
    roots = {split: str(root) for split in ("train", "val", "test")}
    write_manifest(frame, paths.manifest, {"dataset": "special", "image_roots": roots})
    return paths


@pytest.mark.slow
def test_non_regular_files_become_failed_rows_without_hanging(tiny, tmp_path: Path) -> None:
    special = tmp_path / "images" / "special"
    special.mkdir(parents=True)
    os.mkfifo(special / "fifo.jpg")
    (special / "folder.jpg").mkdir()
    (special / "zero.jpg").symlink_to("/dev/zero")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(special / "socket.jpg"))
    kinds = {
        "fifo.jpg": "a FIFO",
        "folder.jpg": "a directory",
        "zero.jpg": "a character device",
        "socket.jpg": "a socket",
    }
    try:
        paths = dataset_with(tmp_path, [f"special/{name}" for name in kinds])
        # A worker process decodes (workers=1); a hang would end in the timeout, a failure.
        child = subprocess.Popen(
            script_command(paths, workers=1), env=child_env(), start_new_session=True
        )
        try:
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    finally:
        sock.close()
    attrs = attrs_of(paths.features(TINY))
    reasons = {f["image"]: f["reason"] for f in attrs["failed_images"]}
    expected = {f"special/{name}": f"not a regular file ({kind})" for name, kind in kinds.items()}
    assert reasons == expected
    assert arrays_of(paths.features(TINY))["ok"].sum() == 6


# --- 15.4: a full disk ----------------------------------------------------------------------------


def run_main(monkeypatch: pytest.MonkeyPatch, capsys, *args: str) -> tuple[int, str, str]:
    """`pipeline ARGS` through the real entry point, in this process (to inject faults):
    (exit code, stdout, stderr)."""
    from affectpipe.pipeline import main

    monkeypatch.setattr(sys, "argv", ["pipeline", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def extract_args(paths: DatasetPaths, *more: str) -> list[str]:
    return [
        "--cache-dir",
        str(paths.root.parent),
        "extract",
        "--dataset",
        paths.root.name,
        "--backbones",
        TINY,
        "--random-init",
        "--workers",
        "0",
        "--batch-size",
        "4",
        *more,
    ]


def assert_same_as_uninterrupted(paths: DatasetPaths, tmp_path: Path) -> None:
    reference = make_dataset(tmp_path / "reference", name=paths.root.name)
    run_tiny(reference, chunk_rows=extract.DEFAULT_CHUNK_ROWS)
    got, want = arrays_of(paths.features(TINY)), arrays_of(reference.features(TINY))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert attrs_of(paths.features(TINY)) == attrs_of(reference.features(TINY))


def test_disk_full_while_committing_a_chunk(tiny, tmp_path, monkeypatch, capsys) -> None:
    paths = make_dataset(tmp_path)
    real_savez = np.savez

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.np, "savez", full_disk)
    code, _, err = run_main(monkeypatch, capsys, *extract_args(paths))
    assert code == 1
    assert "error: no space left on device at " in err
    assert f".{TINY}.h5.parts/chunk-000000000000.npz; 0 rows committed; free space and " in err
    assert "rerun to resume" in err and "Traceback" not in err
    assert not paths.features(TINY).exists()
    assert not list(paths.features_dir.glob(f".{TINY}.h5.parts/.*tmp-*"))

    monkeypatch.setattr(store_module.np, "savez", real_savez)
    code, _, err = run_main(monkeypatch, capsys, *extract_args(paths))
    assert code == 0, err
    assert_same_as_uninterrupted(paths, tmp_path)


def test_disk_full_before_the_final_write(tiny, tmp_path, monkeypatch, capsys) -> None:
    paths = make_dataset(tmp_path)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10_000))
    code, _, err = run_main(monkeypatch, capsys, *extract_args(paths))
    assert code == 1
    assert f"no space left on device at {paths.features(TINY)} (needs about " in err
    assert "; 25 rows committed; free space and rerun to resume" in err
    assert "Traceback" not in err and not paths.features(TINY).exists()

    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    code, out, err = run_main(monkeypatch, capsys, *extract_args(paths))
    assert code == 0, err
    assert f"{TINY}: resumed" in out
    assert_same_as_uninterrupted(paths, tmp_path)


def test_disk_full_when_reserving_the_final_file(tiny, tmp_path, monkeypatch, capsys) -> None:
    paths = make_dataset(tmp_path)

    def no_room(fd: int, nbytes: int) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features_module, "reserve_space", no_room)
    code, _, err = run_main(monkeypatch, capsys, *extract_args(paths))
    assert code == 1 and "Traceback" not in err
    assert f"no space left on device at {paths.features(TINY)}; 25 rows committed" in err
    assert not list(paths.features_dir.glob(f".{TINY}.h5.tmp-*"))


def test_disk_full_while_merging(tiny, tmp_path, monkeypatch, capsys) -> None:
    paths = make_dataset(tmp_path)
    for i in (1, 2):
        run_tiny(paths, shard=(i, 2))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10_000))
    args = ["--cache-dir", str(paths.root.parent), "extract", "--dataset", "toy", "--merge"]
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 1 and "Traceback" not in err
    assert f"no space left on device at {paths.features(TINY)} (needs about" in err
    assert "25 rows committed; free space and rerun to resume" in err
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err


def test_hdf5_wrapped_disk_full_errors_are_recognised() -> None:
    hdf5 = (
        "Can't decrement id ref count (file write failed: time = Tue Dec  1 10:09:35 2026\n, "
        "filename = 'x.h5', file descriptor = 3, errno = 28, error message = 'No space left "
        "on device', buf = 0x55d12ffaa0, total write size = 4096)"
    )
    assert is_disk_full(RuntimeError(hdf5))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(RuntimeError("Can't decrement id ref count (bad id)"))


MOUNT_POINT_BYTES = 600 * 1024


@pytest.mark.slow
def test_real_full_disk_ends_in_a_message_not_a_segfault(tiny, tmp_path: Path) -> None:
    """On a real, tiny tmpfs: filled so the chunks fit but the final file does not."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={MOUNT_POINT_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "mounting a tmpfs needs root with CAP_SYS_ADMIN; the monkeypatched disk-full "
            "tests above cover the same paths"
        )
    try:
        paths = make_dataset(mount, n_good=10)
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 20480))  # chunks fit, the .h5 not
        code = (
            "import sys\n"
            f"sys.path.insert(0, {str(TESTS)!r})\n"
            "import test_extract_engine as t\n"
            "t.register_tiny()\n"
            "import affectpipe.features as features\n"
            "features.ensure_free_space = lambda *a, **k: None  # only the reservation guards\n"
            "from affectpipe.pipeline import main\n"
            "sys.argv = ['pipeline', *sys.argv[1:]]\n"
            "main()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, *extract_args(paths)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1, result.stderr  # 139 before: HDF5 crashed at exit
        assert f"no space left on device at {paths.features(TINY)}" in result.stderr
        assert "rows committed; free space and rerun to resume" in result.stderr
        assert not paths.features(TINY).exists()
        (mount / "filler").unlink()
        rerun = subprocess.run(
            [sys.executable, "-c", code, *extract_args(paths)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert extract_features(paths)["ok"].sum() == 10 + 6
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- 15.10: leftovers of killed runs are cleaned on the next run of the same target --------------


def test_leftovers_of_killed_runs_are_removed(tiny, tmp_path: Path) -> None:
    paths = make_dataset(tmp_path)
    run_tiny(paths)
    final = paths.features(TINY)
    want = arrays_of(final)
    gone, alive = (
        dead_pid(),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
    )
    try:
        stale = final.with_name(f".{final.name}.tmp-{gone}")  # killed while finalising/merging
        live = final.with_name(f".{final.name}.tmp-{alive.pid}")  # a writer still at work
        stale.write_bytes(b"half an hdf5 file")
        live.write_bytes(b"in progress")
        # A kill between the final rename and the removal of the parts leaves both.
        parts = store_module.PartStore(final, {"backbone": TINY}, 25, 8)
        parts.open()
        parts.commit(0, {"ok": np.ones(8, bool), "embedding": np.ones((8, 6), np.float32)})
        assert run_tiny(paths).reports[0].action == "skipped"
        assert not stale.exists() and live.exists()
        assert not store_module.parts_dir(final).exists()
        for key, array in arrays_of(final).items():
            np.testing.assert_array_equal(array, want[key])
    finally:
        alive.kill()
        alive.wait()


def test_atomic_writes_remove_stale_temporary_siblings(tmp_path: Path) -> None:
    report = tmp_path / "blend" / "report.html"
    report.parent.mkdir()
    stale = report.with_name(f".report.html.tmp-{dead_pid()}")
    stale.write_text("<html>half")
    other = report.with_name(f".other.html.tmp-{dead_pid()}")  # another target: left alone
    other.write_text("x")
    write_text_atomic(report, "<html></html>")
    assert report.read_text() == "<html></html>"
    assert not stale.exists() and other.exists()


# --- 15.11: failures are retried on request; non-finite files are never current ----------------


def test_retry_failed_reattempts_only_the_failed_rows(tiny, tmp_path: Path, unreadable) -> None:
    paths = make_dataset(tmp_path)
    unreadable.append((tmp_path / "images" / "vid1").resolve())
    run_tiny(paths)
    before = arrays_of(paths.features(TINY))
    unreadable.clear()  # the transient cause is gone
    assert run_tiny(paths).reports[0].action == "skipped"  # still cached as it was
    (report,) = run_tiny(paths, retry_failed=True).reports
    assert report.action == "retried"
    assert report.failed_count == 5  # the files that really are bad (and the row without one)
    assert "9 failed rows re-attempted, 5 recovered" in report.detail
    after = arrays_of(paths.features(TINY))
    in_vid1 = np.char.startswith(after["image"].astype(str), "vid1/")
    assert after["ok"][in_vid1].all()
    for key in ("embedding", "logits", "ok"):  # the other rows are copied as they were
        np.testing.assert_array_equal(after[key][~in_vid1], before[key][~in_vid1])
    reference = make_dataset(tmp_path / "reference")
    run_tiny(reference)
    want = arrays_of(reference.features(TINY))
    np.testing.assert_allclose(after["embedding"], want["embedding"], atol=1e-5)
    np.testing.assert_array_equal(after["ok"], want["ok"])
    assert attrs_of(paths.features(TINY)) == attrs_of(reference.features(TINY))
    again = run_tiny(paths, retry_failed=True).reports[0]  # the bad files are tried again
    assert again.action == "retried" and "4 failed rows re-attempted, 0 recovered" in again.detail
    assert attrs_of(paths.features(TINY)) == attrs_of(reference.features(TINY))


def test_retry_failed_redoes_committed_chunks_of_an_interrupted_run(
    tiny, tmp_path: Path, unreadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_dataset(tmp_path)
    unreadable.append((tmp_path / "images" / "vid1").resolve())
    real_commit = store_module.PartStore.commit
    calls = []

    def commit_then_die(self, start, arrays, failed=None):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run stops after two committed chunks
        calls.append(start)
        real_commit(self, start, arrays, failed)

    monkeypatch.setattr(store_module.PartStore, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(paths)
    monkeypatch.setattr(store_module.PartStore, "commit", real_commit)
    unreadable.clear()
    (report,) = run_tiny(paths, retry_failed=True).reports
    assert report.action == "resumed"
    reference = make_dataset(tmp_path / "reference")
    run_tiny(reference)
    got, want = arrays_of(paths.features(TINY)), arrays_of(reference.features(TINY))
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_a_file_with_non_finite_features_is_rebuilt(
    tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = make_dataset(tmp_path)
    run_tiny(paths)
    want = arrays_of(paths.features(TINY))
    with h5py.File(paths.features(TINY), "a") as handle:  # attrs intact, data damaged
        handle["embedding"][0, 2] = np.nan
        handle["logits"][3, 0] = np.inf
    assert run_tiny(paths).reports[0].action == "extracted"
    assert "2 rows of NaN/inf features: rebuilding it" in caplog.text
    for key, array in arrays_of(paths.features(TINY)).items():
        np.testing.assert_array_equal(array, want[key])


def test_non_finite_model_outputs_become_failed_rows(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affectpipe.extract import engine

    real_forward = engine.forward

    def forward_with_nan(job, pixels, *args, **kwargs):
        parts = real_forward(job, pixels, *args, **kwargs)
        parts["embedding"][pixels.reshape(len(pixels), -1).float().mean(1).numpy() > 0, :1] = np.nan
        return parts

    monkeypatch.setattr(engine, "forward", forward_with_nan)
    paths = make_dataset(tmp_path)
    run_tiny(paths)
    after = arrays_of(paths.features(TINY))
    assert not after["ok"].any() and np.isfinite(after["embedding"]).all()
    reasons = {f["reason"] for f in attrs_of(paths.features(TINY))["failed_images"]}
    assert "non-finite features" in reasons


def test_retry_failed_is_a_cli_option(tiny, tmp_path, monkeypatch, capsys) -> None:
    code, out, _ = run_main(monkeypatch, capsys, "extract", "--help")
    assert code == 0 and "--retry-failed" in out
    paths = make_dataset(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, *extract_args(paths, "--retry-failed"))
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, *extract_args(paths, "--retry-failed"))
    assert code == 0 and f"{TINY}: retried" in out, err
    assert "(4 failed rows re-attempted, 0 recovered)" in out


# --- 15.12: names stay in the cache; oversized images ------------------------------------------


@pytest.mark.parametrize("name", ["../..", "..", ".", "", "a/b", "/tmp/x", "a\\b", " x"])
def test_run_and_dataset_names_are_confined_to_the_cache(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="bad dataset name"):
        DatasetPaths.of(tmp_path, name)
    with pytest.raises(InputError, match="bad run name"):
        DatasetPaths.of(tmp_path, "toy").run(name)
    assert DatasetPaths.of(tmp_path, "toy").run("seed-1.v2") == tmp_path / "toy/runs/seed-1.v2"


def test_cli_refuses_a_run_name_that_leaves_the_cache(tmp_path, monkeypatch, capsys) -> None:
    paths = make_dataset(tmp_path)
    cache = str(paths.root.parent)
    code, _, err = run_main(
        monkeypatch, capsys, "--cache-dir", cache, "blend", "--dataset", "toy", "--run", "../.."
    )
    assert code == 2 and "bad run name '../..'" in err
    code, _, err = run_main(
        monkeypatch, capsys, "--cache-dir", cache, "extract", "--dataset", "../toy"
    )
    assert code == 2 and "bad dataset name '../toy'" in err
    assert not (tmp_path / "runs").exists() and not (paths.root / "heads").exists()


def test_large_jpegs_are_decoded_in_draft_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (3000, 4200, 3), dtype=np.uint8)).save(big)
    image, reason = decode.load_rgb(big, draft_side=1024)
    assert reason is None and image.size == (2100, 1500)  # 1/2 scale: still >= 1024 pixels
    full, _ = decode.load_rgb(big)
    assert full.size == (4200, 3000)
    # Images below twice the draft side decode exactly as without it (parity on normal crops).
    normal = tmp_path / "normal.jpg"
    Image.fromarray(rng.integers(0, 256, (1500, 1800, 3), dtype=np.uint8)).save(normal)
    drafted, _ = decode.load_rgb(normal, draft_side=1024)
    np.testing.assert_array_equal(np.asarray(drafted), np.asarray(decode.load_rgb(normal)[0]))
    dataset = decode.DecodeDataset([str(big)], [lambda im: np.asarray(im.resize((16, 16)))], [16])
    assert dataset.draft_side == decode.DRAFT_MIN_SIDE


def test_decompression_bombs_are_refused_as_failed_rows(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(bomb)  # 72 M pixels in a few kilobytes
    assert bomb.stat().st_size < 100_000
    image, reason = decode.load_rgb(bomb)
    assert image is None
    assert reason.startswith("too large to decode: 9000x8000 pixels")


@pytest.mark.slow
def test_kill_of_the_openface_cli_with_workers_then_immediate_rerun(
    realfaces_dir: Path, tmp_path: Path
) -> None:
    """The user's way: `pipeline extract --backbones openface --workers 2` on real faces,
    SIGKILLed while its decode workers describe a batch, then run again at once."""
    import csv

    with open(realfaces_dir / "labels.csv") as handle:
        keys = [row["image"] for row in csv.DictReader(handle)][:128]
    frame = empty_manifest(len(keys))
    frame["image"] = keys
    frame["video"] = "v"
    frame["frame"] = np.arange(len(keys))
    frame["split"] = ["train"] * 96 + ["val"] * 32
    frame["has_image"] = True
    paths = DatasetPaths.of(tmp_path / "cache", "faces")
    roots = {split: str(realfaces_dir / "images") for split in ("train", "val", "test")}
    write_manifest(frame, paths.manifest, {"dataset": "faces", "image_roots": roots})
    command = [sys.executable, "-m", "affectpipe.pipeline", "--cache-dir", str(tmp_path / "cache")]
    command += ["extract", "--dataset", "faces", "--backbones", "openface"]
    command += ["--workers", "2", "--batch-size", "64"]
    child = subprocess.Popen(command, env=child_env(), cwd=REPO, stderr=subprocess.DEVNULL)
    children = Path(f"/proc/{child.pid}/task/{child.pid}/children")
    deadline = time.monotonic() + 120
    while len(children.read_text().split()) < 2 and time.monotonic() < deadline:
        assert child.poll() is None, "the run finished before it could be killed"
        time.sleep(0.05)
    time.sleep(3)  # the workers are describing their first batches
    workers = [int(pid) for pid in children.read_text().split()]
    child.send_signal(signal.SIGKILL)
    child.wait()
    rerun = subprocess.run(
        command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"taking over the lock of process {child.pid}" in rerun.stderr
    assert not any(pid_alive(pid) for pid in workers)
    features = read_feature_file(paths.features("openface"))
    assert len(features.images) == 128 and features.ok.mean() > 0.9
