"""Which submission files a blend writes, and their outputs: a task whose listed test rows
mostly lack a real prediction is refused (`--max-filled`); an MTL file missing a task gives
way to the other tasks' files; per-video styles get every frame of each test video.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from affectpipe.blend.interpolate import interpolate_at
from affectpipe.blend.task_rules import TaskRules, rules_for
from affectpipe.submission import Request, get_style

if TYPE_CHECKING:  # the outcome records runner makes (runner imports this module)
    from affectpipe.blend.runner import TaskOutcome


def _per_video_outputs(
    rules: TaskRules, outcome: TaskOutcome, manifest: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Outputs for frames 1..last of each test video, interpolated where a frame is unlisted
    (listed frames keep their decisions, which may come from the confidence gate)."""
    sub = manifest.iloc[outcome.test_rows]
    out = {}
    for video, positions in sub.groupby("video", sort=False).indices.items():
        frames = sub["frame"].to_numpy(np.int64)[positions]
        every_frame = np.arange(1, frames.max() + 1)
        values = interpolate_at(frames, outcome.test_continuous[positions], every_frame)
        decided = rules.decide(values, outcome.blend.post)
        decided[frames - 1] = outcome.test_outputs[positions]
        out[str(video)] = decided
    return out


def _fill_problem(outcome: TaskOutcome, request: Request, max_filled: float) -> str | None:
    fill = outcome.fill
    style = get_style(request.style)
    unpredicted = fill.unpredicted(lists_imageless_frames=style.lists_imageless_frames)
    if not fill.listed or unpredicted <= max_filled * fill.listed:
        return None
    imageless = "" if style.lists_imageless_frames else f", {fill.imageless} without an image file"
    return (
        f"{unpredicted} of its {fill.listed} listed test rows ({unpredicted / fill.listed:.1%}) "
        f"have no real prediction ({fill.interpolated} interpolated{imageless}, {fill.prior} "
        f"the training prior), over the limit of {max_filled:.0%} (--max-filled); check the "
        "test images and their features"
    )


def plan_submissions(
    requests: list[Request],
    outcomes: dict[str, TaskOutcome],
    reasons: dict[str, str],
    max_filled: float,
) -> tuple[list[Request], dict[str, str]]:
    """The files to write, and each requested file that cannot be written with the reason.

    A task is refused when more than `max_filled` of its listed test rows have no real
    prediction. An MTL file missing a task is replaced by the per-task files of the others.
    """
    writes: list[Request] = []
    missing: dict[str, str] = {}
    for request in requests:
        problems = {}
        for task in request.tasks:
            why = reasons.get(task) or (
                _fill_problem(outcomes[task], request, max_filled) if task in outcomes else None
            )
            if why:
                problems[task] = why
        if not problems:
            writes.append(request)
            continue
        missing[request.name] = "; ".join(f"{task}: {why}" for task, why in problems.items())
        if len(request.tasks) > 1:
            writes += [request.for_task(t) for t in request.tasks if t not in problems]
    return writes, missing


def request_outputs(
    request: Request, outcomes: dict[str, TaskOutcome], manifest: pd.DataFrame
) -> dict[str, Any]:
    if get_style(request.style).per_video:
        task = request.tasks[0]
        return {task: _per_video_outputs(rules_for(task), outcomes[task], manifest)}
    out = {}
    for task in request.tasks:
        outcome = outcomes[task]
        out[task] = outcome.test_outputs[np.searchsorted(outcome.test_rows, request.rows)]
    return out
