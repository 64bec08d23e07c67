"""TEASR: training-efficient any-step diffusion transformer for real-world image super-resolution."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public classes are imported on first use (PEP 562), so that `import pipeline_teasr.cli` (the `teasr` command's
# `--help` and its input checks) does not pay the seconds of importing torch and diffusers.
_EXPORTS = {
    "TEASRPipeline": ".pipeline_teasr",
    "TEASRPipelineOutput": ".pipeline_teasr",
    "TEASRTransformer2DModel": ".transformer_teasr",
    "TEASRTransformerOutput": ".transformer_teasr",
}

__all__ = ["TEASRPipeline", "TEASRPipelineOutput", "TEASRTransformer2DModel", "TEASRTransformerOutput"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline_teasr import TEASRPipeline, TEASRPipelineOutput
    from .transformer_teasr import TEASRTransformer2DModel, TEASRTransformerOutput


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
