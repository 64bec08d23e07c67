# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""One-line error reports: the CLI, the training scripts and the evaluation name a failure by its first line."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its class name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
