# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""TEASRPipeline: any-step real-world super-resolution with one dual-branch diffusion transformer.

Besides torch and diffusers this file imports only its sibling leaf modules, because it is also copied into exported
Hub model folders, where `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` loads it.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import numbers
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import safetensors
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderKLQwenImage, FlowMapEulerDiscreteScheduler
from diffusers.loaders import QwenImageLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .image_processing_teasr import DecomposedImage, ImageInput, color_fix, decompose_image, recompose_image, resize
from .tiling import TileBlender, max_tile_overlap, plan_tiles

# Largest output (in pixels) produced unless the caller raises `max_output_pixels`: 8192 x 8192.
DEFAULT_MAX_OUTPUT_PIXELS = 8192 * 8192
# Files that an exported folder carries so that it loads without this package (see `save_pretrained`).
PIPELINE_CODE_FILES = ("pipeline_teasr.py", "image_processing_teasr.py", "tiling.py")
TRANSFORMER_CODE_FILE = "transformer_teasr.py"


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what `save_lora_weights` writes


def lora_training_base(path: str | os.PathLike) -> str | None:
    """The base pipeline a LoRA training output folder was trained on (`pretrained_model_name_or_path` in its
    `training_args.json`), or None when it records none."""
    try:
        with open(os.path.join(path, "training_args.json"), encoding="utf-8") as handle:
            base = json.load(handle).get("pretrained_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) and base not in ("", "None") else None


def lora_mismatch(transformer: torch.nn.Module, shapes: Mapping[str, Sequence[int]]) -> str | None:
    """Why LoRA weights (their key -> shape) do not fit `transformer`, or None: peft would skip layers the model
    lacks with a warning (a silently partial LoRA) and fail on other sizes with a page of size mismatches."""
    modules = dict(transformer.named_modules())
    for key, shape in shapes.items():
        name, separator, kind = key.removeprefix("transformer.").partition(".lora_")
        if not separator or kind[:1] not in ("A", "B"):
            continue
        if name not in modules:
            return f"that model has no layer {name}"
        layer = getattr(modules[name], "base_layer", modules[name])  # a layer that already carries a LoRA
        # lora_A reads the layer's input features, lora_B writes its output features. Read from the layer's
        # attributes rather than its weight, whose shape a quantised (4-bit) layer packs.
        if kind[0] == "A":
            found, expected = shape[1], getattr(layer, "in_features", getattr(layer, "in_channels", None))
        else:
            found, expected = shape[0], getattr(layer, "out_features", getattr(layer, "out_channels", None))
        if expected is not None and found != expected:
            return f"it adapts {name} for {found} features, that model's layer has {expected}"
    return None


def looks_like_local_path(name: str) -> bool:
    """Whether `name` names a local folder rather than a Hub repo id ("name" or "namespace/name")."""
    if os.path.isabs(os.path.expanduser(name)) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    # "runs/teasr" whose "runs" is a folder here is a path; "namespace/name" with no such folder is a repo id.
    parent = os.path.dirname(name)
    return parent != "" and os.path.isdir(parent)


def _lora_hint(path: str) -> str:
    """For a folder holding only a trained LoRA: how to use it (it needs its base pipeline)."""
    if not os.path.isfile(os.path.join(path, LORA_WEIGHT_NAME)):
        return ""
    base = lora_training_base(path) or "BASE"
    return (
        f" It holds a LoRA trained on {base}: load that pipeline and call `pipe.load_lora_weights({path!r})`, or "
        f"merge them into one folder with `teasr export OUT --model {base} --lora {path} --fuse`."
    )


@dataclass
class TEASRPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            Upscaled images. PIL images keep an RGB(A), L(A), 16-bit grey, float or CMYK input's mode (alpha
            re-attached); other modes (palette, YCbCr, HSV, LAB) come back as RGB(A), 1-bit as grey. Arrays are
            float in [0, 1], RGB plus the input's alpha as a 4th channel if it had one, stacked when every output
            has the same shape, otherwise a list with one HxWxC array (CxHxW tensor) per image.
        nfe (`int`): Number of transformer calls made (the network function evaluations).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list
    nfe: int = 0


def _plain_number(value: Any) -> Any:
    """A numpy or Python integer as `int` and other reals as `float`; bools and anything else unchanged (the call's
    checks refuse them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sampling_sigmas(num_inference_steps: int, start_timestep: float) -> list[float]:
    """The any-step schedule `T = t_0 > t_1 > ... > t_{K-1}` (the terminal `t_K = 0` is implicit)."""
    return np.linspace(start_timestep, 0.0, num_inference_steps + 1)[:-1].tolist()


# Qwen-Image's transformer was trained on its text encoder's states of the prompt wrapped in this chat template, with
# the template's first 34 tokens (the system turn) dropped; a TEASR pipeline loaded from a Qwen-Image folder keeps it.
QWEN_IMAGE_PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
QWEN_IMAGE_PROMPT_TEMPLATE_DROP_TOKENS = 34


class TEASRPipeline(DiffusionPipeline, QwenImageLoraLoaderMixin):
    r"""
    Any-step super-resolution: the low-quality image, resized to the output size, is encoded as `c`; sampling starts
    at `z_T = (1 - T) c + T eps` (`start="noise"`) or on the LQ image itself, `z_T = c` (`start="lq"`: the noise-free
    LQ bridge, deterministic), and takes `K` flow-map steps `z_s = z_t - (t - s) u(z_t, c, t, s)`, one transformer
    call each, on the schedule `T = t_0 > ... > t_K = 0`.

    Args:
        transformer ([`TEASRTransformer2DModel`]): the dual-branch transformer predicting the average velocity.
        scheduler ([`FlowMapEulerDiscreteScheduler`]): the flow-map Euler sampler.
        vae ([`AutoencoderKLQwenImage`] or [`AutoencoderKL`], *optional*): `None` for a pixel-space model.
        text_encoder, tokenizer (*optional*): encode `prompt`; without them the learned null prompt is used.
        default_tile_size (`int`, *optional*): tile size in output pixels used when a call passes no `tile_size`
            (small models are trained on crops and upscale best on tiles of their training size).
        default_tile_overlap (`int`, *optional*): tile overlap in output pixels used when a call passes no
            `tile_overlap` (`None`: an eighth of the tile for a 1-step call, a quarter for more steps, see
            `resolve_tiling`). Each output pixel is computed `(tile / (tile - overlap))^2` times, so a small overlap
            is the cheapest speed-up of a tiled model.
        default_start_timestep (`float`, *optional*): start level used when a call passes no `start_timestep`
            (1.0 if unset); a model distilled for LQ-anchored starts records its largest trained level here.
        default_start (`str`, *optional*): `"noise"` or `"lq"`, used when a call passes no `start` (`"noise"` if
            unset); a model distilled with LQ-bridge rows only (`--lq_bridge_prob 1`) records `"lq"` here.
        supported_starts (`list[str]`, *optional*): the starts the model was trained for (`None`: both). A model
            trained on one path only (e.g. teasr-mini: LQ-bridge rows and no flow rows, `["lq"]`) returns noise, not
            an upscale, from the other, so a call asking for it is refused.
        prompt_template (`str`, *optional*): text the prompt is wrapped in (`{}` marks the prompt) before encoding;
            `None`: the prompt as given. Set to Qwen-Image's chat template when loading a Qwen-Image folder.
        prompt_template_drop_tokens (`int`, defaults to 0): leading tokens of the wrapped prompt whose states are
            dropped (Qwen-Image: 34, its system turn).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer,
        scheduler: FlowMapEulerDiscreteScheduler,
        vae: AutoencoderKLQwenImage | AutoencoderKL | None = None,
        text_encoder=None,
        tokenizer=None,
        default_tile_size: int | None = None,
        default_tile_overlap: int | None = None,
        default_start_timestep: float | None = None,
        default_start: str | None = None,
        supported_starts: list[str] | None = None,
        prompt_template: str | None = None,
        prompt_template_drop_tokens: int = 0,
    ):
        super().__init__()
        if prompt_template is not None and "{}" not in prompt_template:
            raise ValueError(f"`prompt_template` must contain '{{}}' where the prompt goes, got {prompt_template!r}.")
        if not isinstance(prompt_template_drop_tokens, int) or prompt_template_drop_tokens < 0:
            raise ValueError(
                f"`prompt_template_drop_tokens` must be an integer >= 0, got {prompt_template_drop_tokens!r}."
            )
        self.register_modules(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.register_to_config(
            default_tile_size=default_tile_size,
            default_tile_overlap=default_tile_overlap,
            default_start_timestep=default_start_timestep,
            default_start=default_start,
            supported_starts=list(supported_starts) if supported_starts is not None else None,
            prompt_template=prompt_template,
            prompt_template_drop_tokens=prompt_template_drop_tokens,
        )
        self._interrupt = False
        self._num_timesteps = 0

    # ------------------------------------------------------------------ latent space
    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        if isinstance(self.vae, AutoencoderKLQwenImage):
            return 2 ** len(self.vae.temperal_downsample)
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def grid_multiple(self) -> int:
        """Output sizes are padded to a multiple of this many pixels (VAE factor x transformer patch)."""
        return self.vae_scale_factor * self.transformer.config.patch_size

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        """Sampling steps of the current (or last) call, as diffusers pipelines expose them to callbacks."""
        return self._num_timesteps

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised latents (the identity map to [-1, 1] in pixel space)."""
        x = pixels * 2.0 - 1.0
        if self.vae is None:
            return x
        x = x.to(self.vae.device, self.vae.dtype)
        if isinstance(self.vae, AutoencoderKLQwenImage):
            latents = self.vae.encode(x[:, :, None]).latent_dist.mode()[:, :, 0]
            mean = torch.tensor(self.vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1)
            std = torch.tensor(self.vae.config.latents_std, device=latents.device).view(1, -1, 1, 1)
            return ((latents - mean) / std).to(latents.dtype)
        latents = self.vae.encode(x).latent_dist.mode()
        shift = self.vae.config.shift_factor or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of `encode_images`: latents -> (B, 3, H, W) pixels in [0, 1]."""
        if self.vae is None:
            return ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        latents = latents.to(self.vae.device, self.vae.dtype)
        if isinstance(self.vae, AutoencoderKLQwenImage):
            mean = torch.tensor(self.vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1)
            std = torch.tensor(self.vae.config.latents_std, device=latents.device).view(1, -1, 1, 1)
            pixels = self.vae.decode((latents * std + mean).to(self.vae.dtype)[:, :, None]).sample[:, :, 0]
        else:
            shift = self.vae.config.shift_factor or 0.0
            pixels = self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample
        return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ text
    def encode_prompt(
        self, prompt: str | list[str], device: torch.device, max_sequence_length: int = 512
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of `text_encoder` for `prompt`, with their attention mask.

        With a `prompt_template` the prompt is wrapped in it first and the states of its first
        `prompt_template_drop_tokens` tokens are dropped; each prompt keeps at most `max_sequence_length` tokens.
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("`prompt` needs a pipeline with `text_encoder` and `tokenizer`; pass `prompt_embeds`.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        template = self.config.prompt_template
        drop = self.config.prompt_template_drop_tokens if template else 0
        texts = [template.format(text) for text in prompts] if template else prompts
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_sequence_length + drop, return_tensors="pt"
        ).to(device)
        hidden = self.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-1]
        if not drop:
            return hidden, tokens.attention_mask
        # Each row's real tokens (wherever the tokenizer pads), minus the template's leading ones, padded on the right.
        rows = [states[mask.bool()][drop:] for states, mask in zip(hidden, tokens.attention_mask)]
        length = max(1, max(len(row) for row in rows))
        embeds = hidden.new_zeros(len(rows), length, hidden.shape[-1])
        mask = tokens.attention_mask.new_zeros(len(rows), length)
        for index, row in enumerate(rows):
            embeds[index, : len(row)] = row
            mask[index, : len(row)] = 1
        return embeds, mask

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self,
        image,
        upscale: float,
        num_inference_steps: int,
        start_timestep: float,
        tile_size: int | None,
        tile_overlap: int | None,
        output_type: str,
        color_fix: str | None,
        prompt,
        prompt_embeds,
        max_output_pixels: int | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        start: str = "noise",
    ) -> None:
        if image is None or (isinstance(image, list) and len(image) == 0):
            raise ValueError("`image` must be given (a PIL image, numpy array, torch tensor or a list of them).")
        if not _is_integer(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if not _is_number(upscale) or not math.isfinite(upscale) or upscale <= 0:
            raise ValueError(f"`upscale` must be a positive number, got {upscale!r}.")
        if not _is_number(start_timestep) or not 0.0 < start_timestep <= 1.0:
            raise ValueError(f"`start_timestep` must lie in (0, 1], got {start_timestep!r}.")
        if start not in ("noise", "lq"):
            raise ValueError(f"`start` must be 'noise' or 'lq', got {start!r}.")
        if tile_size is not None and (not _is_integer(tile_size) or tile_size < 0):
            raise ValueError(f"`tile_size` must be a non-negative integer (0 = no tiling), got {tile_size!r}.")
        if tile_size and tile_size < self.grid_multiple:
            raise ValueError(f"`tile_size` must be 0 or at least {self.grid_multiple} pixels, got {tile_size}.")
        if tile_overlap is not None and (not _is_integer(tile_overlap) or tile_overlap < 0):
            raise ValueError(f"`tile_overlap` must be a non-negative integer, got {tile_overlap!r}.")
        if tile_size and tile_overlap is not None and tile_overlap > max_tile_overlap(tile_size):
            raise ValueError(
                f"`tile_overlap` must be at most half the tile ({max_tile_overlap(tile_size)} px for {tile_size}-px "
                f"tiles), got {tile_overlap}."
            )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        if color_fix not in (None, "none", "adain", "wavelet"):
            raise ValueError(f"`color_fix` must be None, 'adain' or 'wavelet', got {color_fix!r}.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if isinstance(prompt, (list, tuple)):
            num_images = len(image) if isinstance(image, list) else 1
            if len(prompt) != num_images or not all(isinstance(text, str) for text in prompt):
                raise ValueError(
                    f"`prompt` must be a string or a list of {num_images} strings (one per image), got {prompt!r}."
                )
        elif prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
        if max_output_pixels is not None and (not isinstance(max_output_pixels, int) or max_output_pixels < 1):
            raise ValueError(f"`max_output_pixels` must be a positive integer, got {max_output_pixels!r}.")
        for name in callback_on_step_end_tensor_inputs or []:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` may only hold {self._callback_tensor_inputs}, got {name!r}."
                )

    @property
    def supported_starts(self) -> tuple[str, ...]:
        """The starts this model was trained for: `supported_starts` in the pipeline's config, else in the
        transformer's; both when neither sets them."""
        transformer_starts = self.transformer.config.get("supported_starts") if self.transformer is not None else None
        return tuple(self.config.get("supported_starts") or transformer_starts or ("noise", "lq"))

    def resolve_start(self, start: str | None, start_timestep: float | None) -> tuple[str, float]:
        """`(start, start_timestep)` of a call: the given values, else the pipeline's defaults ("noise" if the model
        supports it, 1.0). A start the model was not trained for (`supported_starts`) is refused."""
        supported = self.supported_starts
        if start is None:
            start = self.config.get("default_start") or ("noise" if "noise" in supported else supported[0])
        elif start in ("noise", "lq") and start not in supported:
            raise ValueError(
                f"This model was trained for start={' or '.join(map(repr, supported))} only (supported_starts in "
                f"its model_index.json); start={start!r} would return noise, not an upscale."
            )
        if start_timestep is None:
            start_timestep = float(self.config.get("default_start_timestep") or 1.0)
        return start, start_timestep

    def resolve_tiling(
        self, tile_size: int | None, tile_overlap: int | None, num_inference_steps: int
    ) -> tuple[int | None, int | None]:
        """`(tile_size, tile_overlap)` of a call in output pixels: the given values, else the pipeline's defaults
        (`default_tile_size`, `default_tile_overlap`), else an overlap that depends on the step count: an eighth of
        the tile for one step, a quarter for more. A 1-step call blends each tile's output once, so a narrow feather
        hides the seams; with more steps the blended state is fed back to the model at every step and small
        disagreements between tiles add up (teasr-mini, held-out: the same 1-step score with 8 or 16 px on 64-px
        tiles, 1.5x faster; up to 0.08 dB lost at 8 steps with 8 px, docs/RESULTS.md). Values are checked by the
        call."""
        if tile_size is None:
            tile_size = self.config.get("default_tile_size")
        if tile_size is None and self.transformer is not None and self.transformer.config.get("sample_size"):
            tile_size = self.transformer.config.sample_size * self.vae_scale_factor  # the training crops' size
        if tile_overlap is None:
            tile_overlap = self.config.get("default_tile_overlap")
        if tile_overlap is None and isinstance(tile_size, int) and tile_size > 0:
            tile_overlap = tile_size // 8 if num_inference_steps == 1 else tile_size // 4
        return tile_size, tile_overlap

    @staticmethod
    def output_size(height: int, width: int, upscale: float, max_output_pixels: int | None) -> tuple[int, int]:
        out_h, out_w = max(1, round(height * upscale)), max(1, round(width * upscale))
        if max_output_pixels is not None and out_h * out_w > max_output_pixels:
            raise ValueError(
                f"`upscale`={upscale:g} of a {width}x{height} image gives {out_w}x{out_h} = {out_h * out_w} pixels, "
                f"above `max_output_pixels`={max_output_pixels}; lower the scale or raise the limit."
            )
        return out_h, out_w

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | list[ImageInput],
        upscale: float = 4.0,
        num_inference_steps: int = 1,
        start_timestep: float | None = None,
        start: str | None = None,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        tile_batch_size: int = 4,
        color_fix: str | None = None,
        max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, float, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> TEASRPipelineOutput | tuple:
        r"""
        Upscale one or several images.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Low-quality input(s) of any size. Arrays: HxW(xC) uint8/uint16/float in [0, 1]; tensors: (1,)CxHxW
                uint8 or float in [0, 1]. PIL inputs keep their mode as `TEASRPipelineOutput` says (RGBA alpha is
                upscaled separately, 16-bit stays 16-bit) and are turned upright by their EXIF orientation; mode "I"
                (no fixed range) is refused.
            upscale (`float`, defaults to 4.0): output size = round(input size x upscale); any positive value.
            num_inference_steps (`int`, defaults to 1): number of flow-map steps (= transformer calls per tile).
            start_timestep (`float`, *optional*): start level `T` in (0, 1]; 1 starts from noise, lower values
                start closer to the LQ image (more fidelity, less generation). `None` uses the pipeline's
                `default_start_timestep` (1.0 if unset).
            start (`str`, *optional*): `"noise"` starts from `z_T = (1 - T) c + T eps`; `"lq"` starts from the LQ
                image itself, `z_T = c`, and follows the LQ bridge (no noise: the output does not depend on
                `generator`; T = 1 is the full restoration, a lower T moves part of the way; needs a model
                distilled with LQ-bridge rows). `None` uses the pipeline's `default_start` (`"noise"` if unset).
            prompt (`str` or `list[str]`, *optional*): text condition, one for every image or a list with one per
                image; needs `text_encoder` and `tokenizer`.
            prompt_embeds (`torch.Tensor`, *optional*): precomputed text embeddings `(1, L, joint_attention_dim)`.
            prompt_embeds_mask (`torch.Tensor`, *optional*): their mask `(1, L)`.
            generator (`torch.Generator` or a list, one per image, *optional*): makes the noise reproducible.
            latents (`torch.Tensor`, *optional*): the starting noise `eps` `(1, C, h, w)` in latent units of the
                padded output; only with a single image.
            tile_size (`int`, *optional*): tile side in output pixels; `None` uses the pipeline's
                `default_tile_size`, 0 processes the whole image at once. Tiles are blended at every step, so outputs
                have no seams and memory stays bounded by the tile size.
            tile_overlap (`int`, *optional*): overlap of neighbouring tiles in output pixels; `None` uses the
                pipeline's `default_tile_overlap`, else an eighth of the tile for 1 step and a quarter for more.
                At most half the tile.
            tile_batch_size (`int`, defaults to 4): tiles run through the transformer together.
            color_fix (`str`, *optional*): `"adain"` or `"wavelet"` colour correction towards the input.
            max_output_pixels (`int`, *optional*): refuse outputs larger than this (`None`: no limit).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return a [`TEASRPipelineOutput`] instead of a tuple.
            attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. `{"scale": 0.5}` for LoRA).
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, step, t, callback_kwargs)` after
                every step; may return `{"latents": ...}` to replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): tensors put into `callback_kwargs`.

        Returns:
            [`TEASRPipelineOutput`] or `tuple` `(images, nfe)`.
        """
        images = image if isinstance(image, list) else [image]
        # numpy scalars (e.g. from a loop over np.arange) count as the Python numbers they hold.
        upscale, num_inference_steps, start_timestep = map(
            _plain_number, (upscale, num_inference_steps, start_timestep)
        )
        tile_size, tile_overlap, tile_batch_size = map(_plain_number, (tile_size, tile_overlap, tile_batch_size))
        max_output_pixels = _plain_number(max_output_pixels)
        tile_size, tile_overlap = self.resolve_tiling(tile_size, tile_overlap, num_inference_steps)
        start, start_timestep = self.resolve_start(start, start_timestep)
        self.check_inputs(
            image,
            upscale,
            num_inference_steps,
            start_timestep,
            tile_size,
            tile_overlap,
            output_type,
            color_fix,
            prompt,
            prompt_embeds,
            max_output_pixels,
            callback_on_step_end_tensor_inputs,
            start=start,
        )
        if latents is not None and len(images) != 1:
            raise ValueError("`latents` can only be given with a single image.")
        if latents is not None and start == "lq":
            raise ValueError("`latents` is the starting noise, and start='lq' starts from the LQ image without noise.")
        generators = generator if isinstance(generator, list) else [generator]
        if not all(item is None or isinstance(item, torch.Generator) for item in generators):
            raise ValueError(f"`generator` must be a torch.Generator or a list of them, got {generator!r}.")
        if isinstance(generator, list) and len(generator) != len(images):
            raise ValueError(f"Got {len(generator)} generators for {len(images)} images; pass one per image.")
        if not _is_integer(tile_batch_size) or tile_batch_size < 1:
            raise ValueError(f"`tile_batch_size` must be an integer >= 1, got {tile_batch_size!r}.")

        decomposed = [decompose_image(item) for item in images]
        sizes = [self.output_size(*item.size, upscale, max_output_pixels) for item in decomposed]

        # Both properties walk every module (~25 and ~15 ms at Qwen-Image size on a CPU host): read them once per
        # call, not once per image.
        device = self._execution_device
        dtype = self.transformer.dtype
        if prompt is not None:
            prompt_embeds, prompt_embeds_mask = self.encode_prompt(prompt, device)
        self._interrupt = False
        self._num_timesteps = num_inference_steps

        outputs, nfe = [], 0
        for index, (item, size) in enumerate(zip(decomposed, sizes)):
            item_generator = generator[index] if isinstance(generator, list) else generator
            item_embeds, item_mask = prompt_embeds, prompt_embeds_mask
            if isinstance(prompt, (list, tuple)):  # one encoded prompt per image
                item_embeds, item_mask = prompt_embeds[index : index + 1], prompt_embeds_mask[index : index + 1]
            result, calls = self._upscale_one(
                item,
                size,
                num_inference_steps,
                start_timestep,
                start,
                item_generator,
                latents,
                tile_size,
                tile_overlap,
                tile_batch_size,
                item_embeds,
                item_mask,
                attention_kwargs,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs or ["latents"],
                output_type,
                color_fix,
                device=device,
                dtype=dtype,
            )
            outputs.append(result)
            nfe += calls

        if output_type in ("np", "pt", "latent"):
            if len({tuple(o.shape) for o in outputs}) == 1:  # one batch array
                outputs = torch.cat(outputs) if output_type != "np" else np.concatenate(outputs)
            else:  # a list with one HxWxC array / CxHxW tensor per image
                outputs = [o[0] for o in outputs]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (outputs, nfe)
        return TEASRPipelineOutput(images=outputs, nfe=nfe)

    def _upscale_one(
        self,
        item: DecomposedImage,
        size: tuple[int, int],
        num_inference_steps: int,
        start_timestep: float,
        start: str,
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        tile_size: int | None,
        tile_overlap: int | None,
        tile_batch_size: int,
        prompt_embeds: torch.Tensor | None,
        prompt_embeds_mask: torch.Tensor | None,
        attention_kwargs: dict[str, Any] | None,
        callback_on_step_end,
        callback_tensor_inputs: list[str],
        output_type: str,
        color_fix_method: str | None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[Any, int]:
        device = self._execution_device if device is None else device
        dtype = self.transformer.dtype if dtype is None else dtype
        out_h, out_w = size
        multiple = self.grid_multiple
        pad_h, pad_w = (-out_h) % multiple, (-out_w) % multiple

        # Full-size buffers are released as soon as they are used up: for large tiled images they, not the
        # transformer's tile activations, set the peak memory.
        lq_up = resize(item.rgb, size).to(device)
        padded = lq_up
        if pad_h or pad_w:
            mode = "reflect" if pad_h < out_h and pad_w < out_w else "replicate"
            padded = F.pad(lq_up, (0, pad_w, 0, pad_h), mode=mode)
        lq_latents = self.encode_images(padded).to(dtype)
        del padded
        color_reference = None if color_fix_method in (None, "none") else lq_up.float().cpu()
        del lq_up

        if noise is None:
            noise = randn_tensor(lq_latents.shape, generator=generator, device=device, dtype=dtype)
        elif noise.shape != lq_latents.shape:
            raise ValueError(
                f"`latents` must have shape {tuple(lq_latents.shape)} for this image, got {tuple(noise.shape)}."
            )
        noise = noise.to(device, dtype)

        # A private copy: the scheduler keeps per-call state, and one pipeline may serve several threads.
        scheduler = copy.copy(self.scheduler)
        scheduler.set_timesteps(sigmas=sampling_sigmas(num_inference_steps, start_timestep), device=device)
        sigmas = scheduler.sigmas
        if start == "lq":
            latents = lq_latents.clone()
        else:
            latents = (1.0 - sigmas[0].to(dtype)) * lq_latents + sigmas[0].to(dtype) * noise
        del noise

        tiles, overlap = self._plan_tiles(lq_latents.shape[-2:], tile_size, tile_overlap)
        text, text_mask = self._text_inputs(prompt_embeds, prompt_embeds_mask, device, dtype)
        batches = [tiles[i : i + tile_batch_size] for i in range(0, len(tiles), tile_batch_size)]

        nfe = 0
        with self.progress_bar(total=num_inference_steps * len(batches)) as progress:
            for step in range(num_inference_steps):
                if self.interrupt:
                    break
                t, s = float(sigmas[step]), float(sigmas[step + 1])
                blender = TileBlender(latents, overlap) if len(tiles) > 1 else None
                velocity = None
                for batch in batches:
                    z = torch.cat([latents[:, :, rows, cols] for rows, cols in (tile.region() for tile in batch)])
                    c = torch.cat([lq_latents[:, :, rows, cols] for rows, cols in (tile.region() for tile in batch)])
                    n = z.shape[0]
                    u = self.transformer(
                        hidden_states=z,
                        lq_hidden_states=c,
                        timestep=torch.full((n,), t, device=device),
                        target_timestep=torch.full((n,), s, device=device),
                        encoder_hidden_states=None if text is None else text.expand(n, -1, -1),
                        encoder_hidden_states_mask=None if text_mask is None else text_mask.expand(n, -1),
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                    nfe += 1
                    if blender is None:
                        velocity = u
                    else:
                        for tile, tile_u in zip(batch, u.split(1)):
                            blender.add(tile, tile_u)
                    progress.update()
                if blender is not None:
                    velocity = blender.result()
                    del blender
                latents = scheduler.step(velocity, scheduler.timesteps[step], latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {"latents": latents} if "latents" in callback_tensor_inputs else {}
                    callback_outputs = callback_on_step_end(self, step, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)

        if output_type == "latent":
            return latents, nfe
        pixels = self.decode_latents(latents)[:, :, :out_h, :out_w].float().cpu()
        pixels = color_fix(pixels, color_reference, color_fix_method)
        alpha = None if item.alpha is None else resize(item.alpha, size)
        if output_type in ("pt", "np"):
            if alpha is not None:  # the input's alpha, upscaled, as a 4th channel
                pixels = torch.cat([pixels, alpha], dim=1)
            return (pixels if output_type == "pt" else pixels.permute(0, 2, 3, 1).numpy()), nfe
        return recompose_image(pixels, alpha, item.mode, item.icc_profile), nfe

    def _plan_tiles(self, latent_size, tile_size: int | None, tile_overlap: int | None):
        height, width = int(latent_size[0]), int(latent_size[1])
        patch = self.transformer.config.patch_size
        if not tile_size:
            return plan_tiles(height, width, max(height, width), 0, patch), 0
        tile = max(patch, tile_size // self.vae_scale_factor // patch * patch)
        overlap = min((tile_overlap or 0) // self.vae_scale_factor, tile - patch)
        return plan_tiles(height, width, tile, overlap, patch), overlap

    def _text_inputs(self, prompt_embeds, prompt_embeds_mask, device, dtype):
        if prompt_embeds is None:
            return None, None
        if prompt_embeds.ndim == 2:
            prompt_embeds = prompt_embeds[None]
        width = self.transformer.config.joint_attention_dim
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 or prompt_embeds.shape[-1] != width:
            raise ValueError(f"`prompt_embeds` must be (1, length, {width}), got {tuple(prompt_embeds.shape)}.")
        length = prompt_embeds.shape[1]
        if prompt_embeds_mask is not None and prompt_embeds_mask.numel() != length:
            raise ValueError(
                f"`prompt_embeds_mask` must be (1, {length}), one entry per `prompt_embeds` token, got "
                f"{tuple(prompt_embeds_mask.shape)}."
            )
        mask = None if prompt_embeds_mask is None else prompt_embeds_mask.reshape(1, -1).to(device)
        return prompt_embeds.to(device, dtype), mask

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save a Hub model folder: weights as safetensors, plus the code files that let
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` load it without this package."""
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(self, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> TEASRPipeline:
        """Load a TEASR pipeline folder (local or Hub id) with the classes of the installed library.

        Components may be passed as keyword arguments to replace the stored ones; `torch_dtype` (or `dtype`) applies
        to models, as do `variant` and `low_cpu_mem_usage`. Only safetensors weights are read.
        """
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"`torch_dtype` ({torch_dtype}) and `dtype` ({dtype}) disagree; pass one of them.")
        torch_dtype = torch_dtype or dtype
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError("TEASR folders hold safetensors weights only; `use_safetensors=False` is not supported.")
        model_kwargs = {key: kwargs.pop(key) for key in ("variant", "low_cpu_mem_usage") if key in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        if looks_like_local_path(path) and not os.path.isdir(path):
            raise ValueError(f"model folder not found: {path}")
        if not os.path.isdir(path):
            path = cls.download(path, **{k: kwargs.pop(k) for k in list(kwargs) if k in _DOWNLOAD_KWARGS})
        index_file = os.path.join(path, "model_index.json")
        if not os.path.isfile(index_file):
            raise ValueError(f"{path} is not a TEASR pipeline folder: model_index.json is missing.{_lora_hint(path)}")
        try:
            with open(index_file, encoding="utf-8") as handle:
                index = json.load(handle)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{index_file} is not valid JSON: {error}") from None
        if not isinstance(index, dict):
            raise ValueError(f"{index_file} is not a pipeline index (a JSON object).")

        components: dict[str, Any] = {}
        component_names = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")
        for name in component_names:
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            spec = index.get(name)
            if spec is None or spec[0] is None:
                if name in cls._optional_components:
                    components[name] = None
                    continue
                raise ValueError(f"{path}: model_index.json names no `{name}` component.")
            components[name] = _load_component(path, name, spec[1], torch_dtype, model_kwargs)
        settings = set(inspect.signature(cls.__init__).parameters) - set(component_names) - {"self"}
        if index.get("_class_name") == "QwenImagePipeline" and components.get("text_encoder") is not None:
            # Qwen-Image's transformer knows its prompts only through this template.
            components["prompt_template"] = QWEN_IMAGE_PROMPT_TEMPLATE
            components["prompt_template_drop_tokens"] = QWEN_IMAGE_PROMPT_TEMPLATE_DROP_TOKENS
        for key, value in index.items():
            if key in settings:  # other entries (e.g. a Qwen-Image-Edit folder's `processor`) are not ours
                components[key] = value
        for key in settings & set(kwargs):
            components[key] = kwargs.pop(key)
        if kwargs:
            raise ValueError(f"Unexpected arguments for TEASRPipeline.from_pretrained: {sorted(kwargs)}.")
        pipe = cls(**components)
        pipe.register_to_config(_name_or_path=os.fspath(pretrained_model_name_or_path))
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> TEASRPipeline:
        """diffusers' `from_pipe`, carrying the transformer over too: diffusers keeps a model component only when its
        class matches the `__init__` annotation, which this file cannot import (the transformer's code is a separate
        file in exported folders)."""
        if "transformer" not in kwargs and getattr(pipeline, "transformer", None) is not None:
            kwargs["transformer"] = pipeline.transformer
        return super().from_pipe(pipeline, **kwargs)

    @classmethod
    def load_lora_into_transformer(cls, state_dict, transformer, **kwargs):
        """`QwenImageLoraLoaderMixin.load_lora_into_transformer` (behind `load_lora_weights`), after checking that
        the LoRA fits: one clear error for a LoRA made for another model, instead of a partial LoRA or a page of
        size mismatches."""
        problem = lora_mismatch(transformer, {key: tuple(value.shape) for key, value in state_dict.items()})
        if problem is not None:
            raise ValueError(
                f"this LoRA does not fit the pipeline's transformer: {problem}. A LoRA works only with the model it "
                "was trained on (its training_args.json names it)."
            )
        return super().load_lora_into_transformer(state_dict, transformer=transformer, **kwargs)

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, **kwargs):
        """`QwenImageLoraLoaderMixin.lora_state_dict` (behind `load_lora_weights`), safetensors only: diffusers
        would fall back to unpickling a `.bin` LoRA; here a pickled LoRA is refused instead."""
        if not isinstance(pretrained_model_name_or_path_or_dict, dict):
            weight_name = kwargs.get("weight_name")
            if weight_name is not None and not str(weight_name).endswith(".safetensors"):
                raise ValueError(f"LoRA weights {weight_name!r}: only .safetensors files are loaded, not pickles.")
            kwargs["use_safetensors"] = True
        try:
            return super().lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        except safetensors.SafetensorError as error:  # a corrupt file, or a pickle under another name
            raise ValueError(f"cannot read LoRA weights {pretrained_model_name_or_path_or_dict}: {error}") from None


_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")


def _load_component(
    folder: str,
    name: str,
    class_name: str,
    torch_dtype: torch.dtype | None,
    model_kwargs: dict[str, Any] | None = None,
):
    subfolder = os.path.join(folder, name)
    if not os.path.isdir(subfolder):
        raise ValueError(f"{folder}: the `{name}` component folder is missing.")
    try:
        if name == "transformer":
            # importlib rather than `from .transformer_teasr import`: diffusers' remote-code loader would otherwise
            # look for that file next to this one in exported folders, where it lives in transformer/.
            transformer_module = importlib.import_module(f"{__package__}.transformer_teasr")
            return transformer_module.TEASRTransformer2DModel.from_pretrained(
                subfolder, torch_dtype=torch_dtype, use_safetensors=True, **(model_kwargs or {})
            )
        if name == "scheduler":
            return FlowMapEulerDiscreteScheduler.from_pretrained(subfolder)
        if name in ("vae",):
            import diffusers

            return getattr(diffusers, class_name).from_pretrained(
                subfolder, torch_dtype=torch_dtype, use_safetensors=True, **(model_kwargs or {})
            )
        import transformers

        component_class = getattr(transformers, class_name)
        if name == "tokenizer":
            return component_class.from_pretrained(subfolder)
        return component_class.from_pretrained(
            subfolder, torch_dtype=torch_dtype, use_safetensors=True, **(model_kwargs or {})
        )
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load the `{name}` component from {subfolder}: {first_line}") from error


def write_remote_code(pipe: TEASRPipeline, save_directory: str | os.PathLike) -> None:
    """Copy the pipeline and transformer code into `save_directory` and point model_index.json at them."""
    here = os.path.dirname(os.path.abspath(__file__))
    for file_name in PIPELINE_CODE_FILES:
        shutil.copyfile(os.path.join(here, file_name), os.path.join(save_directory, file_name))
    transformer_source = inspect.getsourcefile(type(pipe.transformer))
    shutil.copyfile(transformer_source, os.path.join(save_directory, "transformer", TRANSFORMER_CODE_FILE))

    index_file = os.path.join(save_directory, "model_index.json")
    with open(index_file, encoding="utf-8") as handle:
        index = json.load(handle)
    index["_class_name"] = ["pipeline_teasr", "TEASRPipeline"]
    index["transformer"] = ["transformer_teasr", type(pipe.transformer).__name__]
    temporary = index_file + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, index_file)
