# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Losses of TEASR training: flow matching, generator reconstruction, self-critic heads, self-consistency.

Notation (see the project brief): rectified-flow path `z_t = (1 - t) z0 + t eps`; the network predicts the average
velocity `u(z_t, c, t, s)` with `z_s = z_t - (t - s) u`. All per-sample weights are `(B,)` tensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from .transformer_teasr import _tokens_to_grid

CRITIC_HEADS_WEIGHTS_NAME = "critic_heads.safetensors"

__all__ = [
    "CRITIC_HEADS_WEIGHTS_NAME",
    "CriticHeads",
    "call_with_frozen_parameters",
    "consistency_loss",
    "critic_hinge_loss",
    "default_critic_blocks",
    "flow_map_step",
    "flow_matching_loss",
    "generator_adversarial_loss",
    "gradient_loss",
    "interpolate",
    "jump_weight",
    "patch_grid_loss",
    "reconstruction_loss",
    "renoise",
    "spectral_loss",
]


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) broadcastable against `like`, in its dtype."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float().mean(dim=1)


def _weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return per_sample.mean() if weight is None else (per_sample * weight.to(per_sample)).mean()


def interpolate(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Point of the rectified-flow path: `z_t = (1 - t) z0 + t eps`."""
    t = _expand(t, z0)
    return (1.0 - t) * z0 + t * eps


def flow_map_step(z_t: torch.Tensor, u: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One flow-map jump with the average velocity: `z_s = z_t - (t - s) u`."""
    return z_t - _expand(t - s, z_t) * u


def shift_within_patch(
    tensors: Sequence[torch.Tensor], patch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Roll every `(B, C, H, W)` tensor by one random offset in `[0, patch_size)` along H and W (wrapping around).

    The critic reads per-token states, and tokens are fixed `patch_size` squares: at a fixed phase the generator can
    lower the critic's score with patterns that repeat every patch. Shifted inputs move that grid to a random phase
    of the image, so a patch-periodic pattern is no longer where the critic's tokens see it.
    """
    dy, dx = (int(v) for v in torch.randint(patch_size, (2,), generator=generator, device=generator.device))
    return [torch.roll(x, shifts=(dy, dx), dims=(-2, -1)) for x in tensors]


def renoise(z_s: torch.Tensor, s: torch.Tensor, tau: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Move a sample of level `s` to a level `tau >= s` of the same rectified-flow marginal.

    `z_tau = a z_s + b n` with `a = (1 - tau) / (1 - s)` and `b = sqrt(tau^2 - a^2 s^2)`, so that for
    `z_s = (1 - s) z0 + s eps` the result is `(1 - tau) z0 + tau eps'` with fresh Gaussian `eps'`. With `s = 0` this is
    `interpolate(z_s, noise, tau)`. Real and fake samples renoised with the same `noise` share it (the critic compares
    them at equal noise).
    """
    a = (1.0 - tau) / (1.0 - s).clamp_min(1e-4)
    b = (tau.square() - (a * s).square()).clamp_min(0.0).sqrt()
    return _expand(a, z_s) * z_s + _expand(b, z_s) * noise


def jump_weight(
    t: torch.Tensor, s: torch.Tensor, rectification: bool = True, lq_anchored: torch.Tensor | None = None
) -> torch.Tensor:
    """Timestep-aware rectification weight of a generation step `t -> s`: the jump size `t - s` (1 without).

    A step that starts on the LQ image (`lq_anchored` rows) weighs 1 whatever `t - s`: its distance to the target is
    the LQ-to-HQ gap, which a small `t` does not shrink.
    """
    if not rectification:
        return torch.ones_like(t, dtype=torch.float32)
    weight = (t - s).float()
    return weight if lq_anchored is None else torch.where(lq_anchored, torch.ones_like(weight), weight)


def flow_matching_loss(
    u: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """L_flow = || u(z_t, c, t, t) - (eps - z0) ||^2 (mean over elements, optional per-sample weight)."""
    return _weighted_mean(_per_sample_mean((u.float() - (eps - z0).float()).square()), weight)


def reconstruction_loss(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, kind: str = "l2"
) -> torch.Tensor:
    """L_rec = || z_s_hat - z_s ||^2 (`kind="l1"`: absolute error), per-sample weighted."""
    diff = prediction.float() - target.float()
    if kind == "l2":
        per_sample = _per_sample_mean(diff.square())
    elif kind == "l1":
        per_sample = _per_sample_mean(diff.abs())
    else:
        raise ValueError(f"`kind` must be 'l2' or 'l1', got {kind!r}.")
    return _weighted_mean(per_sample, weight)


def gradient_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_grad = | d(prediction - target) | along height and width (the last two dims), per-sample weighted.

    The error of neighbouring pixels' differences: edges and fine detail, which a plain L1 / L2 lets a regressor
    trade for blur. Differences are taken across token borders too, so a pattern on the patch grid costs as well.
    """
    diff = prediction.float() - target.float()
    along_height = _per_sample_mean((diff[..., 1:, :] - diff[..., :-1, :]).abs())
    along_width = _per_sample_mean((diff[..., :, 1:] - diff[..., :, :-1]).abs())
    return _weighted_mean(along_height + along_width, weight)


def spectral_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_spec = | |F(prediction)| - |F(target)| |: L1 between the 2-D amplitude spectra (last two dims).

    The amplitude spectrum does not change when detail moves, so unlike a pixel L1 (which pays for detail drawn a
    pixel off and so prefers blur) it asks for the right amount of energy at each spatial frequency, wherever it is;
    and a pattern on the patch grid concentrates energy at the grid's frequencies, which the target lacks.
    Orthonormal FFT over the whole image (each frequency weighed alike), per-sample weighted.
    """
    amplitude = torch.fft.rfft2(prediction.float(), norm="ortho").abs()
    target_amplitude = torch.fft.rfft2(target.float(), norm="ortho").abs()
    return _weighted_mean(_per_sample_mean((amplitude - target_amplitude).abs()), weight)


def patch_grid_loss(
    prediction: torch.Tensor, target: torch.Tensor, patch_size: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """L_grid = mean | phase means of (prediction - target) on the patch grid, less their mean |, per-sample weighted.

    The error is averaged separately over each of the `patch_size x patch_size` pixel phases of the token grid (the
    last two dims, from the corner). Detail, right or wrong, does not follow the grid and averages out; a pattern
    repeated in every patch, which per-token critic heads reward (docs/RESULTS.md, "The self-critic"), does not.
    The phases' common mean (a colour shift) is left to the other terms. Differentiable counterpart of
    `pipeline_teasr.metrics.grid_pattern_strength`, on the error instead of the image's detail.
    """
    height, width = prediction.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_grid_loss needs sides divisible by patch_size {patch_size}, got {height}x{width}.")
    diff = prediction.float() - target.float()
    rows, cols = height // patch_size, width // patch_size
    phases = diff.reshape(*diff.shape[:-2], rows, patch_size, cols, patch_size).mean(dim=(-4, -2))
    grid = phases - phases.mean(dim=(-2, -1), keepdim=True)
    return _weighted_mean(_per_sample_mean(grid.abs()), weight)


def consistency_loss(u_jump: torch.Tensor, u_target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Self-consistency in velocity units: the direct jump `t -> s` vs the (stop-gradient) composed `t -> m -> s`."""
    return _weighted_mean(_per_sample_mean((u_jump.float() - u_target.detach().float()).square()), weight)


def critic_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the critic heads: mean(relu(1 - real)) + mean(relu(1 + fake))."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Generator term -mean(logit(fake)), logits (B, ...) averaged per sample, then per-sample weighted."""
    return _weighted_mean(-_per_sample_mean(fake_logits), weight)


def _detached_call(module: nn.Module, args: tuple, kwargs: dict):
    detached = {name: p.detach() for name, p in module.named_parameters()}
    detached.update(dict(module.named_buffers()))
    return functional_call(module, detached, args, kwargs, strict=False)


def call_with_frozen_parameters(module: nn.Module, *args, **kwargs):
    """Call `module` with every parameter detached: inputs still receive gradients, parameters never do.

    Used for the self-critic passes (the backbone in flow mode, and the heads in the generator's adversarial term).
    Unlike toggling `requires_grad`, it leaves the module untouched, so it is safe under DDP. With diffusers gradient
    checkpointing on, each checkpointed block is also run (and later recomputed) with detached parameters, so the
    recomputation rebuilds exactly the parameter-free graph of the forward pass.
    """
    checkpoint = getattr(module, "_gradient_checkpointing_func", None)
    if checkpoint is None or not getattr(module, "gradient_checkpointing", False):
        return _detached_call(module, args, kwargs)

    def frozen_checkpoint(block: nn.Module, *block_args):
        return checkpoint(lambda *a: _detached_call(block, a, {}), *block_args)

    module._gradient_checkpointing_func = frozen_checkpoint
    try:
        return _detached_call(module, args, kwargs)
    finally:
        module._gradient_checkpointing_func = checkpoint


def default_critic_blocks(num_layers: int) -> tuple[int, ...]:
    """Blocks read by the critic heads unless chosen: at 1/4, 1/2 and 3/4 of the depth (distinct, sorted)."""
    picks = {min(num_layers - 1, max(0, round(num_layers * f) - 1)) for f in (0.25, 0.5, 0.75)}
    return tuple(sorted(picks))


class CriticHeads(nn.Module):
    """The self-critic's only parameters: one small head per read block, giving one logit per token.

    With `kernel_size=1` (the default) each head is `LayerNorm + Linear(dim, 1)` on each token on its own. Such heads
    see one patch at a time and reward token-scale high-frequency energy, which the generator supplies as a lattice
    (docs/RESULTS.md, "The self-critic"). With `kernel_size=k > 1` each head is `LayerNorm`, a `k x k` convolution
    over the token grid to `dim // 2` channels, SiLU and a `1 x 1` convolution to one logit: it compares each token
    with its neighbours (measured on teasr-mini in docs/RESULTS.md, "A grid loss and wider heads for the
    self-critic": half the grid of per-token heads, not detail).

    Args:
        hidden_dim (`int`): width of the transformer's token states (`inner_dim`).
        block_indices (`Sequence[int]`): transformer blocks whose noisy-branch states the heads read, in order.
        kernel_size (`int`, *optional*, defaults to 1): odd size of the heads' window on the token grid.
    """

    def __init__(self, hidden_dim: int, block_indices: Sequence[int], kernel_size: int = 1):
        super().__init__()
        if not block_indices:
            raise ValueError("CriticHeads needs at least one block index.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CriticHeads' kernel_size must be an odd positive integer, got {kernel_size}.")
        self.hidden_dim = int(hidden_dim)
        self.block_indices = tuple(int(i) for i in block_indices)
        self.kernel_size = int(kernel_size)
        if self.kernel_size == 1:
            self.heads = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(self.hidden_dim), nn.Linear(self.hidden_dim, 1)) for _ in self.block_indices
            )
        else:
            width = max(1, self.hidden_dim // 2)
            self.norms = nn.ModuleList(nn.LayerNorm(self.hidden_dim) for _ in self.block_indices)
            self.heads = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(self.hidden_dim, width, self.kernel_size, padding=self.kernel_size // 2),
                    nn.SiLU(),
                    nn.Conv2d(width, 1, 1),
                )
                for _ in self.block_indices
            )
        for head in self.heads:
            # Zero logits at the start: the generator's adversarial gradient grows as the heads learn.
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(self, hidden_states: Sequence[torch.Tensor], grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Token states, one `(B, N, D)` tensor per block -> logits `(B, num_blocks * N)`.

        `grid_size` is the token grid `(rows, cols)` (row-major, `rows * cols = N`); heads with `kernel_size > 1`
        need it.
        """
        if len(hidden_states) != len(self.heads):
            raise ValueError(f"Expected {len(self.heads)} hidden-state tensors, got {len(hidden_states)}.")
        dtype = self.heads[0][-1].weight.dtype
        if self.kernel_size == 1:
            logits = [head(h.to(dtype)).squeeze(-1) for head, h in zip(self.heads, hidden_states)]
            return torch.cat(logits, dim=1)
        if grid_size is None:
            raise ValueError("CriticHeads with kernel_size > 1 need the token grid_size (rows, cols).")
        rows, cols = grid_size
        logits = []
        for norm, head, h in zip(self.norms, self.heads, hidden_states):
            if h.shape[1] != rows * cols:
                raise ValueError(f"{h.shape[1]} tokens do not fill a {rows} x {cols} token grid.")
            logits.append(head(_tokens_to_grid(norm(h.to(dtype)), rows, cols)).flatten(1))
        return torch.cat(logits, dim=1)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `critic_heads.safetensors` (config in its metadata); returns the file path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CRITIC_HEADS_WEIGHTS_NAME)
        metadata = {
            "hidden_dim": str(self.hidden_dim),
            "block_indices": json.dumps(list(self.block_indices)),
            "kernel_size": str(self.kernel_size),
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, path, metadata=metadata)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> CriticHeads:
        """Load from a folder holding `critic_heads.safetensors` or from the file itself."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CRITIC_HEADS_WEIGHTS_NAME)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "hidden_dim" not in metadata or "block_indices" not in metadata:
            raise ValueError(f"{path} is not a CriticHeads file: its metadata lacks hidden_dim / block_indices.")
        heads = cls(
            int(metadata["hidden_dim"]),
            json.loads(metadata["block_indices"]),
            kernel_size=int(metadata.get("kernel_size", 1)),
        )
        heads.load_state_dict(load_file(path))
        return heads
