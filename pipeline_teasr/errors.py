# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""One-line error reports: the CLI, the training scripts and the evaluation name a failure by its first line."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its class name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def training_error_message(error: BaseException) -> str:
    """What a training script prints for `error`: its own message, or for an error raised in a data-loader worker
    (which torch re-raises as 'Caught ValueError in DataLoader worker process 0.' plus the worker's traceback) the
    worker's message, without the traceback."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(error).__name__}: "
        return last.removeprefix(prefix) if last.startswith(prefix) else last
    return text
