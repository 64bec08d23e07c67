# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Where models live: the default model, and the LoRA an exported model ships beside its pipeline."""

from __future__ import annotations

import logging
import os
from pathlib import Path

MODEL_ENV_VAR = "TEASR_MODEL"
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model_card"

logger = logging.getLogger(__name__)


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


def shipped_lora_file(model: str) -> str | None:
    """The unfused LoRA (`pytorch_lora_weights.safetensors`) that an exported model ships next to its pipeline, or
    None. `model` is a local folder or a Hub repo id; for a repo the file is fetched into the Hub cache (diffusers'
    `from_pretrained` downloads only the pipeline's component folders, not this file)."""
    from .errors import first_line
    from .pipeline_teasr import LORA_WEIGHT_NAME, looks_like_local_path

    if Path(model).expanduser().exists() or looks_like_local_path(model):
        path = Path(model).expanduser() / LORA_WEIGHT_NAME
        return str(path) if path.is_file() else None

    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return hf_hub_download(model, LORA_WEIGHT_NAME)
    except LocalEntryNotFoundError:  # offline, and not in the cache: either the repo has none or it was never fetched
        reason = "offline"
    except EntryNotFoundError:  # the repo has no such file: the LoRA (if any) is fused into its weights
        return None
    except (HfHubHTTPError, OSError) as error:  # rate limit, server error: the pipeline itself came from the cache
        reason = f"the Hub did not answer ({first_line(error)})"
    cached = try_to_load_from_cache(model, LORA_WEIGHT_NAME)
    if isinstance(cached, str):
        return cached
    if cached is None:  # not even a cached "no such file"
        logger.warning(
            f"teasr: warning: {reason}, so it is unknown whether {model} ships a LoRA ({LORA_WEIGHT_NAME}); "
            "run again online if its model card says it does"
        )
    return None
