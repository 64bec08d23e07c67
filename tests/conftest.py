"""Shared fixtures: tiny, randomly initialised TEASR models built by the tests themselves."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMapEulerDiscreteScheduler

from pipeline_teasr import TEASRPipeline, TEASRTransformer2DModel

TINY_PIXEL_CONFIG = dict(
    patch_size=2,
    in_channels=12,
    out_channels=3,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=16,
    axes_dims_rope=(4, 6, 6),
)


def make_tiny_pipeline(seed: int = 0, **config) -> TEASRPipeline:
    torch.manual_seed(seed)
    transformer = TEASRTransformer2DModel(**{**TINY_PIXEL_CONFIG, **config}).eval()
    # Random init leaves AdaLN gates at small values; scale the output so that steps visibly move the sample.
    with torch.no_grad():
        transformer.proj_out.weight.mul_(20.0)
    pipe = TEASRPipeline(transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline() -> TEASRPipeline:
    return make_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_pipeline) -> str:
    folder = tmp_path_factory.mktemp("tiny_teasr")
    tiny_pipeline.save_pretrained(folder)
    return str(folder)


def random_photo(height: int, width: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    """A smooth random colour field with some texture, in the requested PIL mode."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + 1), np.cos(4 * y), np.sin(2 * (x + y))], axis=-1) * 0.35 + 0.5
    base += rng.normal(0, 0.05, base.shape)
    rgb = PIL.Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8), mode="RGB")
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        alpha = PIL.Image.fromarray((np.clip(x * 255, 0, 255)).astype(np.uint8), mode="L")
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        return rgba
    if mode == "I;16":
        return PIL.Image.fromarray((np.clip(base[..., 0], 0, 1) * 65535).astype(np.uint16))
    return rgb.convert(mode)


@functools.cache
def icc_profile(color_space: str = "RGB") -> bytes:
    """A real sRGB ICC profile, its header's colour-space field rewritten for "GRAY" or "CMYK" (enough for code that
    routes profiles by colour space; no colour management reads these in the tests). Cached: a new profile's header
    holds its creation time."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile[:16] + f"{color_space:<4}".encode("latin-1") + profile[20:]
