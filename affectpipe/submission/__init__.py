"""Challenge submissions: the registry of submission styles, the files a dataset's test list
asks for, and the checks `validate-submission` runs (abaw-formats.md §1.6, §3.5)."""

from affectpipe.submission.checks import Problem
from affectpipe.submission.styles import (
    STYLES,
    TASK_FILE_NAMES,
    Request,
    SubmissionStyle,
    detect_style,
    get_style,
    register_style,
    requested_submissions,
)

__all__ = [
    "STYLES",
    "TASK_FILE_NAMES",
    "Problem",
    "Request",
    "SubmissionStyle",
    "detect_style",
    "get_style",
    "register_style",
    "requested_submissions",
]
