# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""TEASR dual-branch diffusion transformer with a decoupled current/target timestep.

This file is self-contained (it imports only torch and diffusers) because it is also copied verbatim into exported
Hub model folders, where `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.modeling_utils import ModelMixin, get_parameter_dtype
from diffusers.models.normalization import AdaLayerNormContinuous, RMSNorm
from diffusers.models.transformers.transformer_qwenimage import (
    QwenEmbedRope,
    QwenImageTransformerBlock,
    QwenTimestepProjEmbeddings,
    compute_text_seq_len_from_mask,
)
from diffusers.utils import BaseOutput, apply_lora_scale

# Seed of the documented initialisation of the learned null prompt (see `TEASRTransformer2DModel`).
NULL_PROMPT_INIT_SEED = 0


@dataclass
class TEASRTransformerOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch_size, channels, height, width)`):
            The average velocity `u` over `[s, t]` for the noisy branch: `z_s = z_t - (t - s) * u`.
        block_hidden_states (`tuple[torch.Tensor]`, *optional*):
            Noisy-branch token states `(batch_size, num_tokens, inner_dim)` after each block listed in
            `output_hidden_states_at`, in that order (read by the self-critic heads during distillation).
    """

    sample: torch.Tensor
    block_hidden_states: tuple[torch.Tensor, ...] | None = None


def pack_latents(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), the token layout of diffusers' `QwenImagePipeline`."""
    b, c, h, w = latents.shape
    p = patch_size
    latents = latents.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // p) * (w // p), c * p * p)


def unpack_latents(tokens: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Inverse of `pack_latents`: (B, H/p * W/p, C * p * p) -> (B, C, H, W)."""
    b, _, d = tokens.shape
    p = patch_size
    c = d // (p * p)
    tokens = tokens.view(b, height // p, width // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(b, c, height, width)


def _initial_null_prompt(shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(NULL_PROMPT_INIT_SEED))


# A ~4M-parameter pixel-space model (4x4 RGB patches): teasr-mini's shape, and the default of training from scratch.
SMALL_PIXEL_CONFIG: dict[str, Any] = dict(
    patch_size=4,
    in_channels=48,
    out_channels=3,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    axes_dims_rope=(8, 12, 12),
)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TokenGridConvPath(nn.Module):
    """
    Residual 3x3 convolutions over the token grid of the noisy and LQ patches, next to the transformer.

    A small patch transformer trained from scratch learns the local, pixel-level part of super-resolution (edges,
    texture continuation) slowly: every token sees its neighbours only through attention. This path gives it a
    convolutional trunk on the same grid (one position per token, `2 * patch_channels` inputs), modulated by both
    timesteps, whose features are added to the noisy tokens and also refine the output patches. Both outputs are
    zero at initialisation, so a model that gains the path computes exactly what it computed before.
    """

    def __init__(self, patch_channels: int, channels: int, num_blocks: int, inner_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(2 * patch_channels, channels, 3, padding=1)
        self.time_modulation = _zero_linear(2 * inner_dim, 2 * channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
            )
            for _ in range(num_blocks)
        )
        self.to_tokens = _zero_conv(channels, inner_dim, 1)
        self.to_patches = _zero_conv(channels + patch_channels, patch_channels, 3)

    def encode(
        self, noisy_grid: torch.Tensor, lq_grid: torch.Tensor, temb_t: torch.Tensor, temb_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `(B, channels, h, w)` and the token update `(B, h * w, inner_dim)` for the noisy tokens."""
        features = self.conv_in(torch.cat([noisy_grid, lq_grid], dim=1))
        scale, shift = self.time_modulation(nn.functional.silu(torch.cat([temb_t, temb_s], dim=1))).chunk(2, dim=1)
        features = features * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        for block in self.blocks:
            features = features + block(features)
        return features, _grid_to_tokens(self.to_tokens(features))

    def refine(self, features: torch.Tensor, output_grid: torch.Tensor) -> torch.Tensor:
        """The transformer's output patches `(B, patch_channels, h, w)` plus a local correction."""
        return output_grid + self.to_patches(torch.cat([features, output_grid], dim=1))


def _zero_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _build_conv_path(patch_channels: int, channels: int, num_blocks: int, inner_dim: int) -> TokenGridConvPath | None:
    """The conv path of a `conv_channels` / `conv_blocks` config (None for 0 channels), after checking that shape."""
    if channels < 0 or num_blocks < 0 or (num_blocks and not channels):
        raise ValueError(
            f"`conv_channels` ({channels}) and `conv_blocks` ({num_blocks}) must be >= 0, and blocks need channels."
        )
    return TokenGridConvPath(patch_channels, channels, num_blocks, inner_dim) if channels else None


def _tokens_to_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h * w, D) -> (B, D, h, w), one grid position per token (the row-major order of `pack_latents`)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def _grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """Inverse of `_tokens_to_grid`: (B, D, h, w) -> (B, h * w, D)."""
    return grid.flatten(2).transpose(1, 2)


def _as_batch_timestep(value: float | torch.Tensor, batch_size: int, device: torch.device, name: str) -> torch.Tensor:
    if not torch.is_tensor(value) and not 0.0 <= float(value) <= 1.0:
        # Tensors are not range-checked here: that would synchronise the device on every call.
        raise ValueError(f"`{name}` must lie in [0, 1] (1 = pure noise), got {value}.")
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch_size)
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(f"`{name}` must be a float or a tensor of shape ({batch_size},), got shape {tuple(t.shape)}.")
    return t


class TEASRTransformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin):
    """
    Dual-branch diffusion transformer of TEASR, built from diffusers' Qwen-Image blocks.

    The image sequence is `[noisy branch tokens ; LQ branch tokens]`: both branches share all weights and the same
    spatial RoPE grid, the LQ branch sits on the second frame index (as the condition image of Qwen-Image-Edit).
    AdaLN modulation is decoupled: noisy-branch tokens, text tokens and the output norm are modulated by the current
    noise level `t`; LQ-branch tokens by the denoising target `s`. The output is the average velocity over `[s, t]`.
    With `s = t` the model is an ordinary flow-matching velocity model; with `s = 0` it is exactly Qwen-Image-Edit's
    `zero_cond_t` forward, so Qwen-Image(-Edit) transformer folders load with every tensor used.

    The config is a superset of `QwenImageTransformer2DModel`'s. The only new parameter, `null_prompt_embeds`
    (`num_null_prompt_tokens` x `joint_attention_dim`), is the prompt used when no text embeddings are given. It is
    initialised from a standard normal drawn with a fixed seed (`NULL_PROMPT_INIT_SEED`): the text path starts with
    an RMS-normalised token, so its scale does not matter and the initialisation is reproducible.

    Args:
        patch_size (`int`): side of the square patch packed into one token.
        in_channels (`int`): token width, `channels * patch_size**2` (64 for Qwen-Image latents, 48 for RGB pixels
            with 4x4 patches).
        out_channels (`int`): channels of the latents (16 for Qwen-Image, 3 in pixel space).
        num_layers (`int`): number of dual-stream blocks.
        attention_head_dim (`int`), num_attention_heads (`int`): attention shape; inner dim is their product.
        joint_attention_dim (`int`): width of the text embeddings.
        axes_dims_rope (`tuple[int, int, int]`): RoPE dims for (frame, height, width); must sum to
            `attention_head_dim`.
        decoupled_timestep (`bool`): `False` gives the coupled ablation, where LQ tokens are modulated by `t` too.
        lq_skip (`bool`): also add each LQ token, through a linear layer `lq_skip_in` (zero at initialisation), to the
            embedding of the noisy token at the same position. A model trained from scratch then reads the LQ image
            without first having to learn an attention pattern that finds it; pretrained weights are unaffected
            (see `enable_lq_skip`).
        conv_channels (`int`): width of the convolutional path on the token grid (`TokenGridConvPath`); 0 (the
            default, and every Qwen-Image folder) means none. See `enable_conv_path`.
        conv_blocks (`int`): residual blocks of that path.
        sample_size (`int`, *optional*): side of the crops the model was trained on, in latent (for pixel-space
            models: output) pixels; a pipeline without its own `default_tile_size` tiles at this size, since a model
            trained on crops does not extrapolate to larger windows.
        supported_starts (`list[str]`, *optional*): the sampling starts the weights were trained for (`"noise"`,
            `"lq"`; `None`: both). A pipeline without its own `supported_starts` reads them here, so that one built
            from components (`TEASRPipeline(transformer=..., scheduler=...)`) never runs an untrained start.
        num_null_prompt_tokens (`int`): length of the learned null prompt.
        guidance_embeds, zero_cond_t, use_additional_t_cond, use_layer3d_rope: accepted for config compatibility
            with Qwen-Image folders. TEASR always modulates the LQ branch with `s`; the Qwen-Image-Layered options
            are not supported.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["QwenImageTransformerBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "null_prompt"]
    _repeated_blocks = ["QwenImageTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 64,
        out_channels: int | None = 16,
        num_layers: int = 60,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 3584,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        zero_cond_t: bool = False,
        use_additional_t_cond: bool = False,
        use_layer3d_rope: bool = False,
        decoupled_timestep: bool = True,
        num_null_prompt_tokens: int = 1,
        lq_skip: bool = False,
        conv_channels: int = 0,
        conv_blocks: int = 0,
        sample_size: int | None = None,
        supported_starts: list[str] | None = None,
    ):
        super().__init__()
        if supported_starts is not None and (not supported_starts or set(supported_starts) - {"noise", "lq"}):
            raise ValueError(f"`supported_starts` must list 'noise' and/or 'lq', got {supported_starts!r}.")
        if use_additional_t_cond or use_layer3d_rope:
            raise ValueError(
                "Qwen-Image-Layered configs (use_additional_t_cond / use_layer3d_rope) are not supported."
            )
        out_channels = out_channels or in_channels // (patch_size * patch_size)
        if in_channels != out_channels * patch_size * patch_size:
            raise ValueError(
                f"`in_channels` ({in_channels}) must equal out_channels * patch_size**2 "
                f"({out_channels} * {patch_size}**2): tokens pack one patch of the latents."
            )
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"`axes_dims_rope` {tuple(axes_dims_rope)} must sum to attention_head_dim.")
        self.out_channels = out_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        self.pos_embed = QwenEmbedRope(theta=10000, axes_dim=list(axes_dims_rope), scale_rope=True)
        self.time_text_embed = QwenTimestepProjEmbeddings(embedding_dim=self.inner_dim)
        self.txt_norm = RMSNorm(joint_attention_dim, eps=1e-6)
        self.img_in = nn.Linear(in_channels, self.inner_dim)
        self.txt_in = nn.Linear(joint_attention_dim, self.inner_dim)
        self.lq_skip_in = _zero_linear(in_channels, self.inner_dim) if lq_skip else None
        self.conv_path = _build_conv_path(in_channels, conv_channels, conv_blocks, self.inner_dim)
        # zero_cond_t=True makes each block read a (2B, D) embedding: rows [:B] modulate noisy and text tokens,
        # rows [B:] the second image stream. TEASR fills the second half with the target timestep s.
        self.transformer_blocks = nn.ModuleList(
            [
                QwenImageTransformerBlock(
                    dim=self.inner_dim,
                    num_attention_heads=num_attention_heads,
                    attention_head_dim=attention_head_dim,
                    zero_cond_t=True,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, patch_size * patch_size * out_channels, bias=True)

        self.null_prompt_embeds = nn.Parameter(_initial_null_prompt((num_null_prompt_tokens, joint_attention_dim)))
        self.gradient_checkpointing = False

    def enable_lq_skip(self) -> None:
        """Add the LQ skip (`lq_skip=True`) to a model that has none; being zero, it leaves the outputs unchanged."""
        if self.lq_skip_in is None:
            layer = _zero_linear(self.config.in_channels, self.inner_dim)
            self.lq_skip_in = layer.to(self.img_in.weight.device, self.img_in.weight.dtype)
            self.register_to_config(lq_skip=True)

    def zero_output_layers(self) -> None:
        """Zero the layers that write the velocity (`proj_out` and the conv path's output convolution), so that the
        model predicts `u = 0` for every input: one step from the LQ start then returns the upscaled LQ image itself.
        DiT's initialisation when training from scratch; on a trained base it discards the base's velocity head
        and keeps its features."""
        layers = [self.proj_out] + ([self.conv_path.to_patches] if self.conv_path is not None else [])
        with torch.no_grad():
            for layer in layers:
                layer.weight.zero_()
                layer.bias.zero_()

    def enable_conv_path(self, channels: int, num_blocks: int) -> None:
        """Add the token-grid convolutional path (`conv_channels`, `conv_blocks`) to a model that has none; its
        outputs start at zero, so the model's outputs are unchanged until it is trained."""
        if self.conv_path is not None:
            if (channels, num_blocks) != (self.config.conv_channels, self.config.conv_blocks):
                raise ValueError(
                    f"This model already has a conv path ({self.config.conv_channels} channels, "
                    f"{self.config.conv_blocks} blocks), not {channels} x {num_blocks}."
                )
            return
        if channels <= 0:
            raise ValueError(f"The conv path needs channels > 0, got {channels}.")
        path = _build_conv_path(self.config.in_channels, channels, num_blocks, self.inner_dim)
        self.conv_path = path.to(self.img_in.weight.device, self.img_in.weight.dtype)
        self.register_to_config(conv_channels=channels, conv_blocks=num_blocks)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`ModelMixin.from_pretrained`, plus the documented initialisation of the null prompt when the folder has
        none (a Qwen-Image or Qwen-Image-Edit transformer): diffusers would otherwise leave it on the meta device."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.null_prompt_embeds.is_meta:
            reference = model.img_in.weight
            init = _initial_null_prompt(model.null_prompt_embeds.shape)
            model.null_prompt_embeds = nn.Parameter(init.to(reference.device, reference.dtype))
        return loaded

    def _check_latents(self, hidden_states: torch.Tensor, lq_hidden_states: torch.Tensor) -> None:
        p = self.config.patch_size
        if hidden_states.ndim != 4 or hidden_states.shape[1] != self.out_channels:
            raise ValueError(
                f"`hidden_states` must be (batch, {self.out_channels}, height, width), "
                f"got {tuple(hidden_states.shape)}."
            )
        if hidden_states.shape[-2] % p or hidden_states.shape[-1] % p:
            raise ValueError(
                f"`hidden_states` height and width must be multiples of patch_size={p}, got "
                f"{tuple(hidden_states.shape[-2:])}."
            )
        if lq_hidden_states.shape != hidden_states.shape:
            raise ValueError(
                f"`lq_hidden_states` must have the shape of `hidden_states` {tuple(hidden_states.shape)}, got "
                f"{tuple(lq_hidden_states.shape)}."
            )

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        lq_hidden_states: torch.Tensor,
        timestep: float | torch.Tensor,
        target_timestep: float | torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        output_hidden_states_at: tuple[int, ...] | None = None,
        return_dict: bool = True,
    ) -> TEASRTransformerOutput | tuple[torch.Tensor]:
        """
        Predict the average velocity that carries `hidden_states` from noise level `timestep` to `target_timestep`.

        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, channels, height, width)`):
                Noisy latents `z_t = (1 - t) z_0 + t eps`; height and width multiples of `patch_size`.
            lq_hidden_states (`torch.Tensor` of the same shape):
                Latents of the low-quality image resized to the output size, `c = E(resize(y))`.
            timestep (`float` or `torch.Tensor` of shape `(batch_size,)`):
                Current noise level `t` in [0, 1] (1 = pure noise).
            target_timestep (`float` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Denoising target `s` in [0, t]. `None` means `s = t` (plain flow-matching velocity).
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, text_len, joint_attention_dim)`, *optional*):
                Text embeddings; the learned null prompt is used when `None`.
            encoder_hidden_states_mask (`torch.Tensor` of shape `(batch_size, text_len)`, *optional*):
                1 for valid text tokens, 0 for padding.
            attention_kwargs (`dict`, *optional*):
                Passed to the attention processors; `scale` sets the LoRA scale.
            output_hidden_states_at (`tuple[int]`, *optional*):
                Block indices whose noisy-branch token states are returned in `block_hidden_states`.
            return_dict (`bool`, defaults to `True`):
                Return a [`TEASRTransformerOutput`] instead of a plain tuple.

        Returns:
            [`TEASRTransformerOutput`] or `tuple`: `sample` has the shape of `hidden_states`.
        """
        self._check_latents(hidden_states, lq_hidden_states)
        batch_size, _, height, width = hidden_states.shape
        p = self.config.patch_size
        device = hidden_states.device

        t = _as_batch_timestep(timestep, batch_size, device, "timestep")
        s = (
            t
            if target_timestep is None
            else _as_batch_timestep(target_timestep, batch_size, device, "target_timestep")
        )
        if not self.config.decoupled_timestep:
            s = t

        noisy_tokens = pack_latents(hidden_states, p)
        lq_tokens = pack_latents(lq_hidden_states, p)
        num_noisy = noisy_tokens.shape[1]
        # img_in's compute dtype: its weight's, or with layerwise casting the dtype its (narrower) weights are cast to
        tokens = self.img_in(torch.cat([noisy_tokens, lq_tokens], dim=1).to(get_parameter_dtype(self.img_in)))
        # One embedding per branch: rows [:B] from t (noisy + text tokens), rows [B:] from s (LQ tokens).
        temb = self.time_text_embed(torch.cat([t, s], dim=0).to(tokens.dtype), tokens)

        noisy_update = 0
        if self.lq_skip_in is not None:
            noisy_update = self.lq_skip_in(lq_tokens.to(tokens.dtype))
        if self.conv_path is not None:
            grid_size = (height // p, width // p)
            conv_features, conv_update = self.conv_path.encode(
                _tokens_to_grid(noisy_tokens.to(tokens.dtype), *grid_size),
                _tokens_to_grid(lq_tokens.to(tokens.dtype), *grid_size),
                temb[:batch_size],
                temb[batch_size:],
            )
            noisy_update = noisy_update + conv_update
        if torch.is_tensor(noisy_update):
            tokens = torch.cat([tokens[:, :num_noisy] + noisy_update, tokens[:, num_noisy:]], dim=1)
        modulate_index = torch.cat(
            [
                torch.zeros(batch_size, num_noisy, dtype=torch.int, device=device),
                torch.ones(batch_size, lq_tokens.shape[1], dtype=torch.int, device=device),
            ],
            dim=1,
        )

        if encoder_hidden_states is None:
            encoder_hidden_states = self.null_prompt_embeds.unsqueeze(0).expand(batch_size, -1, -1)
            encoder_hidden_states_mask = None
        text = self.txt_in(self.txt_norm(encoder_hidden_states.to(tokens.dtype)))
        text_seq_len, _, text_mask = compute_text_seq_len_from_mask(text, encoder_hidden_states_mask)

        grid = (1, height // p, width // p)
        image_rotary_emb = self.pos_embed([[grid, grid]], max_txt_seq_len=text_seq_len, device=device)

        wanted = set(output_hidden_states_at or ())
        if wanted and (min(wanted) < 0 or max(wanted) >= len(self.transformer_blocks)):
            raise ValueError(f"`output_hidden_states_at` must index blocks 0..{len(self.transformer_blocks) - 1}.")
        collected: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.transformer_blocks):
            block_args = (tokens, text, text_mask, temb, image_rotary_emb, attention_kwargs, modulate_index)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                text, tokens = self._gradient_checkpointing_func(block, *block_args)
            else:
                text, tokens = block(*block_args)
            if index in wanted:
                collected[index] = tokens[:, :num_noisy]

        noisy_out = self.proj_out(self.norm_out(tokens[:, :num_noisy], temb[:batch_size]))
        if self.conv_path is not None:
            refined = self.conv_path.refine(conv_features, _tokens_to_grid(noisy_out, *grid_size))
            noisy_out = _grid_to_tokens(refined)
        sample = unpack_latents(noisy_out, height, width, p)
        block_hidden_states = tuple(collected[i] for i in output_hidden_states_at) if wanted else None

        if not return_dict:
            return (sample,) if block_hidden_states is None else (sample, block_hidden_states)
        return TEASRTransformerOutput(sample=sample, block_hidden_states=block_hidden_states)
