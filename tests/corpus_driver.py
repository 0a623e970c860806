"""Runs crafted cases through the real entry points in one process (`test_shared_run_corpus`).

Usage: python corpus_driver.py CASES.json RESULTS.jsonl. Each case is
``{"name", "kind": "cli" | "api", "args": [...], "env": {...}}``: `cli` runs
`affectpipe.pipeline.main` with those arguments (the user's `pipeline ...`), `api` runs
``Predictor.from_export(args[0]).predict(args[1:])``. One JSON line per case is appended to
RESULTS before the next case starts, so a native crash or a hang (the parent's timeout)
names the case it happened in: ``{"name", "started": true}`` then ``{"name", "outcome":
"exit", "code", "stderr"}`` or ``{"name", "outcome": "traceback" | "hang", "error"}``,
each with the case's peak resident memory (`peak_rss_mb`, of this process) and peak disk
use under $TMPDIR (`peak_tmp_mb`, allocated blocks, so sparse files count as written),
sampled every 50 ms by a thread.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
import traceback

CASE_SECONDS = 60


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no result after {CASE_SECONDS} s")


def _run(case: dict) -> dict:
    from affectpipe.errors import AffectpipeError

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if case["kind"] == "cli":
                from affectpipe.pipeline import main

                sys.argv = ["pipeline", *case["args"]]
                try:
                    main()
                except SystemExit as exc:
                    return {"outcome": "exit", "code": exc.code, "stderr": err.getvalue()}
            else:
                from affectpipe import Predictor

                try:
                    Predictor.from_export(case["args"][0]).predict(case["args"][1:])
                except AffectpipeError as exc:
                    return {"outcome": "exit", "code": exc.exit_code, "stderr": str(exc)}
                return {"outcome": "exit", "code": 0, "stderr": err.getvalue()}
    except _Hang as exc:
        return {"outcome": "hang", "error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - every escape is what this driver reports
        return {"outcome": "traceback", "error": "".join(traceback.format_exception(exc))}
    return {"outcome": "traceback", "error": "the CLI returned without exiting"}


class _Peaks:
    """Peak RSS and $TMPDIR disk use since the last `reset`, sampled in a thread."""

    def __init__(self) -> None:
        self.tmp = tempfile.gettempdir()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.reset()
        threading.Thread(target=self._sample, daemon=True).start()

    def reset(self) -> None:
        self.rss = self.disk = 0

    def _disk(self) -> int:
        total = 0
        for parent, _, names in os.walk(self.tmp):
            for name in names:
                with contextlib.suppress(OSError):  # gone since listed
                    total += os.lstat(os.path.join(parent, name)).st_blocks * 512
        return total

    def _sample(self) -> None:
        while True:
            with open("/proc/self/statm") as handle:
                rss = int(handle.read().split()[1]) * self.page
            self.rss, self.disk = max(self.rss, rss), max(self.disk, self._disk())
            threading.Event().wait(0.05)

    def read(self) -> dict:
        return {"peak_rss_mb": self.rss / 2**20, "peak_tmp_mb": self.disk / 2**20}


def main() -> None:
    with open(sys.argv[1]) as handle:
        cases = json.load(handle)
    signal.signal(signal.SIGALRM, _alarm)
    peaks = _Peaks()
    with open(sys.argv[2], "a") as results:
        for case in cases:
            results.write(json.dumps({"name": case["name"], "started": True}) + "\n")
            results.flush()
            saved = dict(os.environ)
            os.environ.update(case.get("env", {}))
            peaks.reset()
            signal.alarm(CASE_SECONDS)
            outcome = _run(case)
            signal.alarm(0)
            outcome.update(peaks.read())
            os.environ.clear()
            os.environ.update(saved)
            results.write(json.dumps({"name": case["name"], **outcome}) + "\n")
            results.flush()


if __name__ == "__main__":
    main()
