"""TEASR: training-efficient any-step diffusion transformer for real-world image super-resolution."""

from .pipeline_teasr import TEASRPipeline, TEASRPipelineOutput
from .transformer_teasr import TEASRTransformer2DModel, TEASRTransformerOutput

__all__ = ["TEASRPipeline", "TEASRPipelineOutput", "TEASRTransformer2DModel", "TEASRTransformerOutput"]
__version__ = "0.1.0"
