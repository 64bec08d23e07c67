# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Where the default model lives."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_ENV_VAR = "TEASR_MODEL"
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model_card"


def embedded_model_path() -> Path | None:
    """The teasr-mini folder shipped in this repository's `model_card/`, if it holds a pipeline."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "model_index.json").is_file() else None


def default_model_path() -> str:
    """`$TEASR_MODEL` if set, else the embedded teasr-mini; a one-line `ValueError` when neither exists."""
    configured = os.environ.get(MODEL_ENV_VAR)
    if configured:
        return configured
    embedded = embedded_model_path()
    if embedded is None:
        raise ValueError(
            f"no default model: {EMBEDDED_MODEL_DIR} holds no pipeline yet; pass --model PATH_OR_ID "
            f"or set {MODEL_ENV_VAR}"
        )
    return str(embedded)
