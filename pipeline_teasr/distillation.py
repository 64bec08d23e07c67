# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""TEASR training objectives and the training machinery shared by `train_scripts/`.

Objectives (what one training step computes):
- `flow_matching_losses`: the s = t mode, the multi-step SR base (`train_flow_sr.py`).
- `self_adversarial_losses`: self-adversarial distillation as the project brief defines it (`train_teasr_lora.py`):
  L_flow + L_rec on z_s_hat + self-critic heads + optional self-consistency, with timestep-aware rectification.

Machinery: loading the base (`load_training_pipeline`), LoRA setup, atomic checkpoints (`save_checkpoint`,
`latest_checkpoint`), the non-finite-loss guard, and `run_training`, the accelerate loop both scripts use.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn as nn

from .errors import first_line
from .hardware import EMULATED_BFLOAT16, bfloat16_is_emulated
from .losses import (
    CriticHeads,
    call_with_frozen_parameters,
    consistency_loss,
    critic_hinge_loss,
    default_critic_blocks,
    flow_map_step,
    flow_matching_loss,
    generator_adversarial_loss,
    gradient_loss,
    interpolate,
    jump_weight,
    patch_grid_loss,
    reconstruction_loss,
    renoise,
    shift_within_patch,
    spectral_loss,
)
from .tiling import max_tile_overlap

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_MARKER = "teasr_checkpoint.json"
CRITIC_HEADS_FOLDER = "critic_heads"
DEFAULT_LORA_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "img_mlp.net.0.proj", "img_mlp.net.2")


# ====================================================================================================================
# Timestep sampling
# ====================================================================================================================


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) row mask -> (B, 1, 1, ...) broadcastable against `like`, on its device."""
    return mask.to(like.device).view(-1, *([1] * (like.ndim - 1)))


def check_probabilities(**shares: float) -> None:
    """Raise one ValueError naming the first share outside [0, 1]."""
    for name, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}.")


def _rand(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, generator=generator, device=generator.device)


def sample_flow_timesteps(
    batch_size: int,
    generator: torch.Generator,
    scheme: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Levels t of the flow-matching loss: `"uniform"` on (0, 1) or SD3-style `"logit_normal"`."""
    if scheme == "uniform":
        return _rand(batch_size, generator).clamp(1e-4, 1.0)
    if scheme == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=generator.device)
        return torch.sigmoid(normal * logit_std + logit_mean)
    raise ValueError(f"timestep sampling must be 'uniform' or 'logit_normal', got {scheme!r}.")


def sample_generator_timesteps(
    batch_size: int, generator: torch.Generator, config: DistillationConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generation steps `t -> s`, and which of them start on the LQ image: `(t, s, lq_anchored)`.

    Start level t: with rectification it covers the whole range any-step sampling uses, (min_timestep, 1], with an
    extra point mass `one_step_start_prob` at t = 1 (one step from noise); without rectification t = 1.
    Target s: 0 (one step to the clean image) or, with probability `anystep_prob`, uniform in [0, t).
    LQ-anchored rows (probability `lq_anchor_prob`; with rectification only, since at t = 1 the start is pure noise
    either way) start uniformly in [min_timestep, lq_anchor_max_timestep] and keep the same relative target s / t.
    """
    if config.rectification:
        uniform_t = config.min_timestep + (1.0 - config.min_timestep) * _rand(batch_size, generator)
        start_at_one = _rand(batch_size, generator) < config.one_step_start_prob
        t = torch.where(start_at_one, torch.ones_like(uniform_t), uniform_t)
    else:
        t = torch.ones(batch_size, device=generator.device)
    anystep = _rand(batch_size, generator) < config.anystep_prob
    s = torch.where(anystep, t * _rand(batch_size, generator), torch.zeros_like(t))
    anchored = _rand(batch_size, generator) < config.lq_anchor_prob
    if config.rectification:
        span = config.lq_anchor_max_timestep - config.min_timestep
        t_anchor = config.min_timestep + span * _rand(batch_size, generator)
        s = torch.where(anchored, s / t * t_anchor, s)
        t = torch.where(anchored, t_anchor, t)
    return t, s, anchored


def lq_start_levels(t: torch.Tensor, generator: torch.Generator, start_prob: float) -> torch.Tensor:
    """Levels of LQ-bridge rows: t = 1 (the LQ image itself, where every LQ-start sampler run begins) for a share
    `start_prob` of the rows, the given `t` (the bridge states later steps visit) for the others."""
    at_start = _rand(t.shape[0], generator) < start_prob
    return torch.where(at_start, torch.ones_like(t), t)


def sample_critic_timesteps(
    t: torch.Tensor,
    s: torch.Tensor,
    generator: torch.Generator,
    bridge: torch.Tensor | None = None,
    bridge_max_timestep: float = 1.0,
) -> torch.Tensor:
    """Critic level tau of each generator row.

    Rows on the noise path: tau in [s, t], at or below the generation step's own level, at or above its output level.
    LQ-bridge rows (`bridge`): their levels measure the distance to the LQ image, not noise, and the critic reads
    their clean estimate renoised from 0, so tau is uniform in [0, bridge_max_timestep]. Kept low, because the
    difference between a photo and a restoration is small and noise hides it: fresh heads on the frozen release stay
    at chance at tau = 0.5 and separate the two at 0.1 and 0.02 (`train_scripts/teasr_mini/critic_probe.py`).
    """
    share = _rand(t.shape[0], generator)
    tau = s + (t - s) * share
    if bridge is None:
        return tau
    return torch.where(bridge.to(tau.device), bridge_max_timestep * share, tau)


# ====================================================================================================================
# Objectives
# ====================================================================================================================


@dataclass
class DistillationConfig:
    """Weights and switches of self-adversarial distillation (each is a flag of `train_teasr_lora.py`).

    Ablations: `rectification=False` (t = 1 only, unweighted losses); `reconstruction_only=True` (no critic);
    `lambda_consistency=0` (no self-consistency); the coupled timestep is a transformer config switch.

    `lq_anchor_prob`: share of generator rows that start where the sampler starts for `T < 1`, on the LQ image
    (`z_t = (1 - t) c + t eps`) instead of on the HQ path; their target is still the HQ path's `z_s`. Their start
    level is uniform in `[min_timestep, lq_anchor_max_timestep]` (the start levels one intends to sample from).

    `lq_bridge_prob`: share of generator rows on the LQ bridge, the noise-free straight path
    `z_t = (1 - t) z0 + t c` from the HQ image (t = 0) to the upscaled LQ image (t = 1) that the sampler follows with
    `start="lq"`. Their average velocity is `c - z0` for every `t -> s`, so their reconstruction loss is measured in
    velocity units: a one-step jump from the LQ image is trained at full scale. They take precedence over anchoring.
    With rectification a share `lq_bridge_start_prob` of them starts at t = 1, the others uniformly on the bridge.
    The critic reads their clean estimates renoised to a level in `[0, bridge_critic_max_timestep]`.
    """

    lambda_flow: float = 1.0
    lambda_rec: float = 1.0
    lambda_adv: float = 0.1
    lambda_critic: float = 1.0
    lambda_consistency: float = 0.0
    lambda_gradient: float = 0.0
    lambda_spectral: float = 0.0
    lambda_grid: float = 0.0
    rectification: bool = True
    reconstruction_only: bool = False
    anystep_prob: float = 0.5
    one_step_start_prob: float = 0.25
    lq_anchor_prob: float = 0.5
    lq_anchor_max_timestep: float = 1.0
    lq_bridge_prob: float = 0.0
    lq_bridge_start_prob: float = 0.5
    min_timestep: float = 0.02
    bridge_critic_max_timestep: float = 0.1
    critic_patch_shift: bool = False
    reconstruction_loss: str = "l2"
    adversarial_warmup_steps: int = 0
    flow_timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self) -> None:
        names = ("anystep_prob", "one_step_start_prob", "lq_anchor_prob", "lq_bridge_prob", "lq_bridge_start_prob")
        check_probabilities(**{name: getattr(self, name) for name in names})
        if not 0.0 <= self.min_timestep < 1.0:
            raise ValueError(f"min_timestep must lie in [0, 1), got {self.min_timestep}.")
        if not 0.0 < self.bridge_critic_max_timestep <= 1.0:
            raise ValueError(f"bridge_critic_max_timestep must lie in (0, 1], got {self.bridge_critic_max_timestep}.")
        if not self.min_timestep < self.lq_anchor_max_timestep <= 1.0:
            raise ValueError(
                f"lq_anchor_max_timestep must lie in (min_timestep, 1], got {self.lq_anchor_max_timestep}."
            )
        weights = ("lambda_flow", "lambda_rec", "lambda_adv", "lambda_critic", "lambda_consistency")
        for name in (*weights, "lambda_gradient", "lambda_spectral", "lambda_grid"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    @property
    def uses_critic(self) -> bool:
        return not self.reconstruction_only and self.lambda_adv > 0

    def adversarial_weight(self, step: int) -> float:
        """lambda_adv, ramped linearly over `adversarial_warmup_steps`."""
        if self.adversarial_warmup_steps <= 0:
            return self.lambda_adv
        return self.lambda_adv * min(1.0, step / self.adversarial_warmup_steps)


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strip DDP / torch.compile wrappers."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return getattr(module, "_orig_mod", module)


def flow_matching_losses(
    model: nn.Module,
    z0: torch.Tensor,
    c: torch.Tensor,
    generator: torch.Generator,
    scheme: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    lq_bridge_prob: float = 0.0,
    lq_bridge_start_prob: float = 0.5,
) -> dict[str, torch.Tensor]:
    """One step of flow matching in the s = t mode: `{"loss", "total", "flow"}`.

    A share `lq_bridge_prob` of the rows runs on the LQ bridge instead of the noise path: the path ends at the
    upscaled LQ image `c` instead of `eps` (`z_t = (1 - t) z0 + t c`, velocity `c - z0`), a share
    `lq_bridge_start_prob` of them at t = 1, where the sampler's `start="lq"` begins.
    """
    batch = z0.shape[0]
    eps = torch.randn(z0.shape, generator=generator, device=generator.device).to(z0)
    t = sample_flow_timesteps(batch, generator, scheme, logit_mean, logit_std)
    path_end = eps
    if lq_bridge_prob > 0:
        bridge = _rand(batch, generator) < lq_bridge_prob
        t = torch.where(bridge, lq_start_levels(t, generator, lq_bridge_start_prob), t)
        path_end = torch.where(_rows(bridge, z0), c, eps)
    t = t.to(z0.device)
    u = model(interpolate(z0, path_end, t), c, timestep=t, target_timestep=t).sample
    loss = flow_matching_loss(u, z0, path_end)
    return {"loss": loss, "total": loss.detach(), "flow": loss.detach()}


def self_adversarial_losses(
    model: nn.Module,
    z0: torch.Tensor,
    c: torch.Tensor,
    config: DistillationConfig,
    generator: torch.Generator,
    critic_heads: nn.Module | None = None,
    step: int = 0,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """One step of TEASR self-adversarial distillation; returns `"loss"` (to backpropagate), `"total"` and the
    detached terms.

    Forward passes of the one network (no teacher, no discriminator, no second copy):
    1. trainable: the flow rows `u(z_t', c, t', t')` and the generator rows `u(z_t, c, t, s)`, batched in one call;
       or, when `backward` is given, the flow rows alone followed at once by `backward(lambda_flow * L_flow)`, then
       the generator rows. The flow rows' activations are then freed before the generator and critic passes run
       (two batches of activations alive at the peak instead of three); the returned `"loss"` holds the remaining
       terms only. Same random draws, same gradients.
    2. critic on real `z_s` renoised to tau, with no gradient at all;
    3. critic on fake `z_s_hat` renoised to tau (same noise), parameters frozen so only the generator's output
       receives gradient; the heads read both (their own hinge loss on detached states) and, frozen, score the fake
       for the generator's `-mean(logit)`;
    4. optional self-consistency teacher: two no-grad jumps `t -> m -> s`.
    """
    batch = z0.shape[0]
    device = z0.device
    backbone = unwrap_module(model)
    n_blocks = len(backbone.transformer_blocks)
    patch = backbone.config.patch_size

    def randn() -> torch.Tensor:
        return torch.randn(z0.shape, generator=generator, device=generator.device).to(z0)

    # Flow rows: the model stays its own teacher (diffusion prior).
    eps_flow = randn()
    t_flow = sample_flow_timesteps(
        batch, generator, config.flow_timestep_sampling, config.logit_mean, config.logit_std
    )
    # Generator rows: z_t -> z_s_hat, some starting on the LQ image as the sampler does for T < 1.
    eps = randn()
    t, s, anchored = sample_generator_timesteps(batch, generator, config)
    bridge = torch.zeros_like(anchored)
    if config.lq_bridge_prob > 0:
        bridge = _rand(batch, generator) < config.lq_bridge_prob
        anchored = anchored & ~bridge
        if config.rectification:
            uniform_t = config.min_timestep + (1.0 - config.min_timestep) * _rand(batch, generator)
            t_bridge = lq_start_levels(uniform_t, generator, config.lq_bridge_start_prob)
            s = torch.where(bridge, s / t * t_bridge, s)
            t = torch.where(bridge, t_bridge, t)
    t_flow, t, s = t_flow.to(device), t.to(device), s.to(device)
    anchored, bridge = anchored.to(device), bridge.to(device)

    # Path ends: the HQ path runs from z0 to eps; anchored rows start from c on it; bridge rows run from z0 to c.
    bridge_rows = _rows(bridge, z0)
    path_end = torch.where(bridge_rows, c, eps)
    z_t = interpolate(torch.where(_rows(anchored, z0), c, z0), path_end, t)
    z_flow = interpolate(z0, eps_flow, t_flow)
    if config.lambda_flow == 0:
        # No flow term: skip the flow rows' forward and backward (their random draws above are kept, so a run
        # with lambda_flow 0 sees the same generator rows as one with lambda_flow > 0).
        loss_flow = z0.new_zeros((), dtype=torch.float32)
        u_gen = model(z_t, c, timestep=t, target_timestep=s).sample
    elif backward is None:
        u_all = model(
            torch.cat([z_flow, z_t]),
            torch.cat([c, c]),
            timestep=torch.cat([t_flow, t]),
            target_timestep=torch.cat([t_flow, s]),
        ).sample
        u_flow, u_gen = u_all.chunk(2)
        loss_flow = flow_matching_loss(u_flow, z0, eps_flow)
    else:
        loss_flow = flow_matching_loss(model(z_flow, c, timestep=t_flow, target_timestep=t_flow).sample, z0, eps_flow)
        backward(config.lambda_flow * loss_flow)
        loss_flow = loss_flow.detach()
        u_gen = model(z_t, c, timestep=t, target_timestep=s).sample

    z_s_hat = flow_map_step(z_t, u_gen, t, s)
    z_s = interpolate(z0, path_end, s)
    weight = jump_weight(t, s, config.rectification, lq_anchored=anchored | bridge)
    # Bridge rows in velocity units (their exact average velocity is c - z0), the others on the state z_s.
    rec_prediction = torch.where(bridge_rows, u_gen, z_s_hat)
    rec_target = torch.where(bridge_rows, c - z0, z_s)
    loss_rec = reconstruction_loss(rec_prediction, rec_target, weight, kind=config.reconstruction_loss)
    zero = z0.new_zeros((), dtype=torch.float32)
    loss_grad = gradient_loss(rec_prediction, rec_target, weight) if config.lambda_gradient > 0 else zero
    loss_spec = zero
    if config.lambda_spectral > 0 and bool(bridge.any()):
        # On the bridge the velocity is the same for every jump, so a row's clean image is `z_t - t u`; rows of the
        # noise path have no such image (their target is the noisy z_s) and are left out.
        clean_estimate = flow_map_step(z_t[bridge], u_gen[bridge], t[bridge], torch.zeros_like(t[bridge]))
        loss_spec = spectral_loss(clean_estimate, z0[bridge]) * bridge.float().mean()
    loss_grid = zero
    if config.lambda_grid > 0:
        loss_grid = patch_grid_loss(rec_prediction, rec_target, patch, weight)

    loss_adv, loss_critic, loss_cons = zero, zero, zero
    logits_real_mean, logits_fake_mean = zero, zero
    if config.uses_critic:
        if critic_heads is None:
            raise ValueError("The adversarial term needs `critic_heads` (or reconstruction_only=True).")
        blocks = unwrap_module(critic_heads).block_indices
        if max(blocks) >= n_blocks:
            raise ValueError(f"critic blocks {blocks} exceed the transformer's {n_blocks} blocks.")
        tau = sample_critic_timesteps(t, s, generator, bridge, config.bridge_critic_max_timestep).to(device)
        noise = randn()
        # The critic reads states of the noise path: bridge rows give it their clean image (real) and the clean
        # image their velocity implies (fake, `z_t - t u`), renoised from level 0.
        real = torch.where(bridge_rows, z0, z_s)
        fake = torch.where(bridge_rows, flow_map_step(z_t, u_gen, t, torch.zeros_like(t)), z_s_hat)
        level = torch.where(bridge, torch.zeros_like(s), s)
        real_in, fake_in, critic_c = renoise(real, level, tau, noise), renoise(fake, level, tau, noise), c
        if config.critic_patch_shift:
            real_in, fake_in, critic_c = shift_within_patch([real_in, fake_in, critic_c], patch, generator)
        with torch.no_grad():
            real_states = backbone(
                real_in, critic_c, timestep=tau, target_timestep=tau, output_hidden_states_at=blocks
            ).block_hidden_states
        fake_states = call_with_frozen_parameters(
            backbone,
            fake_in,
            critic_c,
            timestep=tau,
            target_timestep=tau,
            output_hidden_states_at=blocks,
        ).block_hidden_states
        # Heads: hinge on detached states (real and fake in one call, so DDP sees a single forward).
        grid_size = (fake_in.shape[-2] // patch, fake_in.shape[-1] // patch)
        head_logits = critic_heads(
            [torch.cat([r, f.detach()]) for r, f in zip(real_states, fake_states)], grid_size=grid_size
        )
        logits_real, logits_fake_detached = head_logits.chunk(2)
        loss_critic = critic_hinge_loss(logits_real, logits_fake_detached)
        # Generator: frozen heads, gradient reaches the generator's output only.
        logits_fake = call_with_frozen_parameters(unwrap_module(critic_heads), list(fake_states), grid_size=grid_size)
        loss_adv = generator_adversarial_loss(logits_fake, weight)
        logits_real_mean, logits_fake_mean = logits_real.detach().float().mean(), logits_fake.detach().float().mean()

    if config.lambda_consistency > 0:
        m = s + (t - s) * _rand(batch, generator).to(device)
        with torch.no_grad():
            u_first = backbone(z_t, c, timestep=t, target_timestep=m).sample
            z_m = flow_map_step(z_t, u_first, t, m)
            u_second = backbone(z_m, c, timestep=m, target_timestep=s).sample
            jump = (t - s).clamp_min(1e-4).view(-1, *([1] * (z0.ndim - 1)))
            u_target = (
                (t - m).view_as(jump) * u_first.float() + (m - s).view_as(jump) * u_second.float()
            ) / jump.float()
        loss_cons = consistency_loss(u_gen, u_target)

    lambda_adv = config.adversarial_weight(step) if config.uses_critic else 0.0
    rest = (
        config.lambda_rec * loss_rec
        + config.lambda_gradient * loss_grad
        + config.lambda_spectral * loss_spec
        + config.lambda_grid * loss_grid
        + lambda_adv * loss_adv
        + config.lambda_critic * loss_critic
        + config.lambda_consistency * loss_cons
    )
    total = config.lambda_flow * loss_flow + rest
    return {
        "loss": total if backward is None else rest,
        "total": total.detach(),
        "flow": loss_flow.detach(),
        "rec": loss_rec.detach(),
        "gradient": loss_grad.detach(),
        "spectral": loss_spec.detach(),
        "grid": loss_grid.detach(),
        "adv": loss_adv.detach(),
        "critic": loss_critic.detach(),
        "consistency": loss_cons.detach(),
        "logits_real": logits_real_mean,
        "logits_fake": logits_fake_mean,
    }


def _starts(noise_path: bool, lq_bridge: bool) -> list[str]:
    return [start for start, trained in (("noise", noise_path), ("lq", lq_bridge)) if trained]


class FlowMatchingObjective:
    """`run_training` objective of `train_flow_sr.py`: the s = t mode only."""

    name = "flow_sr"

    def __init__(
        self,
        scheme: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        lq_bridge_prob: float = 0.0,
        lq_bridge_start_prob: float = 0.5,
    ):
        check_probabilities(lq_bridge_prob=lq_bridge_prob, lq_bridge_start_prob=lq_bridge_start_prob)
        self.scheme, self.logit_mean, self.logit_std = scheme, logit_mean, logit_std
        self.lq_bridge_prob, self.lq_bridge_start_prob = lq_bridge_prob, lq_bridge_start_prob
        self.modules: dict[str, nn.Module] = {}

    @property
    def trained_starts(self) -> list[str]:
        """The sampler starts whose paths the rows train: the noise path and / or the LQ bridge."""
        return _starts(noise_path=self.lq_bridge_prob < 1, lq_bridge=self.lq_bridge_prob > 0)

    def __call__(self, model, z0, c, generator, step, backward=None) -> dict[str, torch.Tensor]:
        # One pass: everything is returned in "loss", `backward` (for early partial backwards) is not needed.
        return flow_matching_losses(
            model,
            z0,
            c,
            generator,
            self.scheme,
            self.logit_mean,
            self.logit_std,
            self.lq_bridge_prob,
            self.lq_bridge_start_prob,
        )


class SelfAdversarialObjective:
    """`run_training` objective of `train_teasr_lora.py`: self-adversarial distillation with critic heads."""

    name = "teasr"

    def __init__(self, config: DistillationConfig, critic_heads: CriticHeads | None):
        self.config = config
        self.modules: dict[str, nn.Module] = {"critic_heads": critic_heads} if critic_heads is not None else {}

    @property
    def trained_starts(self) -> list[str]:
        """The sampler starts whose paths the rows train (flow rows and non-bridge generator rows: the noise path)."""
        config = self.config
        return _starts(
            noise_path=config.lambda_flow > 0 or config.lq_bridge_prob < 1, lq_bridge=config.lq_bridge_prob > 0
        )

    def __call__(self, model, z0, c, generator, step, backward=None) -> dict[str, torch.Tensor]:
        heads = self.modules.get("critic_heads")
        return self_adversarial_losses(model, z0, c, self.config, generator, heads, step=step, backward=backward)


def parse_critic_blocks(value: str, num_layers: int) -> tuple[int, ...]:
    """`"auto"` -> `default_critic_blocks`; otherwise comma-separated block indices (negative counts from the end)."""
    if value.strip().lower() == "auto":
        return default_critic_blocks(num_layers)
    try:
        blocks = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        raise ValueError(f"--critic_blocks must be 'auto' or comma-separated integers, got {value!r}.") from error
    blocks = [b + num_layers if b < 0 else b for b in blocks]
    if not blocks or min(blocks) < 0 or max(blocks) >= num_layers:
        raise ValueError(f"--critic_blocks {value!r} must index blocks 0..{num_layers - 1}.")
    return tuple(sorted(set(blocks)))


# ====================================================================================================================
# Loading the base model
# ====================================================================================================================

TEASR_PIPELINE_NAMES = ("TEASRPipeline",)
QWEN_PIPELINE_NAMES = ("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline")
TRANSFORMER_CLASS_NAMES = ("QwenImageTransformer2DModel", "TEASRTransformer2DModel")


def _class_name(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            name = json.load(handle).get("_class_name")
    except (OSError, ValueError):
        return None
    return name[-1] if isinstance(name, list) else name


def load_vae(path: str, torch_dtype: torch.dtype | None = None):
    """An `AutoencoderKLQwenImage` or `AutoencoderKL` folder (a `vae/` subfolder of a pipeline is looked into)."""
    from diffusers import AutoencoderKL, AutoencoderKLQwenImage

    if not os.path.isdir(path):
        raise ValueError(
            f"VAE folder not found: {path!r} (pass a local AutoencoderKLQwenImage or AutoencoderKL folder, or a "
            "pipeline folder holding vae/)."
        )
    if os.path.isdir(os.path.join(path, "vae")) and not os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.join(path, "vae")
    vae_class = _class_name(os.path.join(path, "config.json"))
    if vae_class not in ("AutoencoderKLQwenImage", "AutoencoderKL"):
        found = f"its config.json names {vae_class}" if vae_class else "it holds no config.json naming a class"
        raise ValueError(f"{path} is not an AutoencoderKLQwenImage or AutoencoderKL folder: {found}.")
    vae_type = AutoencoderKLQwenImage if vae_class == "AutoencoderKLQwenImage" else AutoencoderKL
    return vae_type.from_pretrained(path, torch_dtype=torch_dtype, use_safetensors=True)


def load_training_pipeline(
    path: str,
    torch_dtype: torch.dtype | None = None,
    vae_path: str | None = None,
    cache_dir: str | None = None,
):
    """The base as a `TEASRPipeline` (text encoder left out: training uses the learned null prompt).

    Accepts a TEASR pipeline folder or Hub id, a Qwen-Image(-Edit) pipeline folder, or a bare Qwen-Image / TEASR
    transformer folder (then a VAE comes from `vae_path` unless the transformer works in pixel space). Anything else
    raises one `ValueError` naming what was expected.
    """
    from diffusers import FlowMapEulerDiscreteScheduler

    from .pipeline_teasr import TEASRPipeline
    from .transformer_teasr import TEASRTransformer2DModel

    expected = (
        "expected a TEASR pipeline folder (model_index.json with TEASRPipeline), a Qwen-Image(-Edit) pipeline folder, "
        "or a Qwen-Image transformer folder (config.json with _class_name QwenImageTransformer2DModel)"
    )
    vae = None if vae_path is None else load_vae(vae_path, torch_dtype)

    if not os.path.isdir(path):
        if os.path.exists(path) or path.startswith((".", "/", "~")):
            raise ValueError(f"--pretrained_model_name_or_path {path!r} is not a folder: {expected}.")
        try:  # A Hub id of a TEASR pipeline.
            pipe = TEASRPipeline.from_pretrained(path, torch_dtype=torch_dtype, cache_dir=cache_dir)
        except Exception as error:
            raise ValueError(f"cannot load {path!r} from the Hub ({error}); {expected}.") from error
        return pipe if vae is None else _replace_vae(pipe, vae)

    index_name = _class_name(os.path.join(path, "model_index.json"))
    config_name = _class_name(os.path.join(path, "config.json"))
    if index_name in TEASR_PIPELINE_NAMES or index_name in QWEN_PIPELINE_NAMES:
        extra = {} if vae is None else {"vae": vae}
        if index_name in QWEN_PIPELINE_NAMES:
            extra["scheduler"] = FlowMapEulerDiscreteScheduler()
        pipe = TEASRPipeline.from_pretrained(path, torch_dtype=torch_dtype, text_encoder=None, tokenizer=None, **extra)
        return pipe
    if config_name in TRANSFORMER_CLASS_NAMES:
        transformer = TEASRTransformer2DModel.from_pretrained(path, torch_dtype=torch_dtype, use_safetensors=True)
        if vae is None and transformer.out_channels != 3:
            raise ValueError(
                f"{path} holds a latent-space transformer ({transformer.out_channels} channels) and no VAE: pass "
                "--pretrained_vae_model_name_or_path, or point at the full pipeline folder."
            )
        return TEASRPipeline(transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler(), vae=vae)
    found = index_name or config_name or "no model_index.json or config.json"
    raise ValueError(f"--pretrained_model_name_or_path {path!r} ({found}) is not a usable base: {expected}.")


def _replace_vae(pipe, vae):
    pipe.register_modules(vae=vae)
    return pipe


# ====================================================================================================================
# Checkpoints, guards
# ====================================================================================================================


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints (`checkpoint-N` folders holding the marker) as sorted `(step, path)` pairs."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, CHECKPOINT_MARKER)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    """Path of the newest complete checkpoint, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


# Flags that decide which tensors a checkpoint holds and their shapes: a run resumed with other values would fail
# deep inside `load_state` (or load the wrong thing), so checkpoints record them and resume compares.
CHECKPOINT_STATE_FLAGS = (
    "full_finetune",
    "rank",
    "lora_alpha",
    "lora_layers",
    "trainable_modules",
    "lq_skip",
    "conv_channels",
    "conv_blocks",
    "model_config",
    "critic_blocks",
    "critic_kernel_size",
    "use_ema",
    "use_8bit_adam",
)


def checkpoint_state_flags(args: argparse.Namespace) -> dict:
    """The `CHECKPOINT_STATE_FLAGS` this script has, as JSON would store them."""
    return json.loads(
        json.dumps({flag: getattr(args, flag) for flag in CHECKPOINT_STATE_FLAGS if hasattr(args, flag)})
    )


def resume_checkpoint_path(args: argparse.Namespace) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: the newest complete one for "latest" (None if there is
    none), else the given folder."""
    if args.resume_from_checkpoint == "latest":
        return latest_checkpoint(args.output_dir)
    return args.resume_from_checkpoint


def read_checkpoint_marker(path: str) -> dict:
    """The checkpoint's marker: `global_step` and the `state_flags` it was written with (absent in older ones)."""
    with open(os.path.join(path, CHECKPOINT_MARKER), encoding="utf-8") as handle:
        return json.load(handle)


def check_resumable(args: argparse.Namespace) -> None:
    """Refuse to resume from a checkpoint written with other `CHECKPOINT_STATE_FLAGS` (checkpoints written before
    they were recorded are not checked)."""
    path = resume_checkpoint_path(args)
    if path is None or not os.path.isfile(os.path.join(path, CHECKPOINT_MARKER)):
        return
    recorded = read_checkpoint_marker(path).get("state_flags") or {}
    current = checkpoint_state_flags(args)
    differing = [flag for flag in recorded if flag in current and recorded[flag] != current[flag]]
    if differing:
        then = ", ".join(f"--{flag}={recorded[flag]!r}" for flag in differing)
        now = ", ".join(f"--{flag}={current[flag]!r}" for flag in differing)
        raise ValueError(
            f"--resume_from_checkpoint: {path} was written with {then}, this run has {now}: pass the same values "
            "to resume it, or another --output_dir to start a new run."
        )


def save_checkpoint(
    accelerator, output_dir: str, step: int, total_limit: int | None = None, state_flags: dict | None = None
) -> str:
    """`accelerator.save_state` into a temporary folder, then an atomic rename to `checkpoint-{step}`.

    Resume only considers folders with the marker file, written last, so a half-written checkpoint is never picked.
    The marker records the step and `state_flags` (`checkpoint_state_flags`, what `check_resumable` compares).
    Older checkpoints beyond `total_limit` are removed only after the new one is in place.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    temporary = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    if accelerator.is_main_process and os.path.isdir(temporary):
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(temporary, CHECKPOINT_MARKER), "w", encoding="utf-8") as handle:
            json.dump({"global_step": step, "state_flags": state_flags or {}}, handle)
        if os.path.isdir(final):
            remove_checkpoint(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint folder, its marker first: a kill midway leaves an incomplete folder that resume ignores,
    never one that still looks complete with files missing (`shutil.rmtree` may reach the marker last)."""
    marker = os.path.join(path, CHECKPOINT_MARKER)
    if os.path.isfile(marker):
        os.remove(marker)
    shutil.rmtree(path, ignore_errors=True)


def checkpoint_step(path: str) -> int:
    return int(read_checkpoint_marker(path)["global_step"])


class NonFiniteGuard:
    """Counts consecutive skipped (NaN/inf) steps; `update` raises once `max_bad_steps` are reached in a row."""

    def __init__(self, max_bad_steps: int):
        if max_bad_steps < 1:
            raise ValueError(f"--max_bad_steps must be >= 1, got {max_bad_steps}.")
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total = 0

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_bad_steps:
            raise FloatingPointError(
                f"Stopping at step {step}: {self.consecutive} consecutive steps had a non-finite loss or gradient "
                f"(--max_bad_steps {self.max_bad_steps}). Nothing was saved from the diverged state; lower "
                "--learning_rate, enable --max_grad_norm, or resume from an earlier checkpoint."
            )


def assert_finite_parameters(*modules: nn.Module) -> None:
    """Raise before saving if any trainable parameter holds NaN/inf."""
    for module in modules:
        for name, param in module.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise FloatingPointError(f"Refusing to save: parameter {name} holds NaN/inf values.")


def step_seed(seed: int, *keys: int) -> int:
    """Deterministic 63-bit seed from a base seed and counters (step, micro-step, process)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ====================================================================================================================
# Command-line flags (shared by both scripts, named as in diffusers' examples)
# ====================================================================================================================


def add_common_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags both training scripts share."""
    add = parser.add_argument
    # Model.
    add(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="Base: a TEASR pipeline folder or Hub id, a Qwen-Image(-Edit) pipeline folder or transformer folder.",
    )
    add(
        "--pretrained_vae_model_name_or_path",
        type=str,
        default=None,
        help="VAE folder, for a bare latent-space transformer base.",
    )
    add("--full_finetune", action="store_true", help="Train every transformer weight instead of a LoRA.")
    add(
        "--trainable_modules",
        type=str,
        nargs="+",
        default=None,
        help="With --full_finetune: train only these top-level submodules of the transformer (e.g. conv_path "
        "proj_out norm_out); the rest stays frozen but still computes. Default: all.",
    )
    add("--rank", type=int, default=16, help="LoRA rank.")
    add("--lora_alpha", type=int, default=16, help="LoRA alpha.")
    add(
        "--lora_layers",
        type=str,
        default=None,
        help=f"Comma-separated module names that get LoRA (default: {','.join(DEFAULT_LORA_LAYERS)}).",
    )
    add(
        "--coupled_timestep",
        action="store_true",
        help="Ablation: modulate the LQ branch with t too (decoupled_timestep=False in the transformer config).",
    )
    add(
        "--lq_skip",
        action="store_true",
        help="Add the zero-initialised LQ skip (lq_skip=True in the transformer config) if the model has none; "
        "needs --full_finetune. Speeds up small models trained from scratch.",
    )
    add(
        "--conv_channels",
        type=int,
        default=0,
        help="Add the zero-initialised token-grid conv path with this width (conv_channels in the transformer "
        "config) if the model has none; needs --full_finetune. Small models trained from scratch learn local detail "
        "much faster with it.",
    )
    add("--conv_blocks", type=int, default=4, help="Residual blocks of the conv path added by --conv_channels.")
    add("--gradient_checkpointing", action="store_true", help="Recompute block activations in the backward pass.")
    # Data.
    add("--train_data_dir", type=str, default=None, help="A local folder of images (🤗 datasets imagefolder).")
    add("--dataset_name", type=str, default=None, help="A 🤗 Hub dataset name (or a local dataset script/folder).")
    add("--dataset_config_name", type=str, default=None, help="The dataset config, if any.")
    add("--streaming", action="store_true", help="Stream --dataset_name instead of downloading it.")
    add("--image_column", type=str, default="image", help="Column holding the HQ images.")
    add("--lq_column", type=str, default=None, help="Optional column of paired LQ images (no synthetic LQ then).")
    add("--cache_dir", type=str, default=None, help="Where downloaded models and datasets are cached.")
    add("--resolution", type=int, default=512, help="HQ crop size in pixels.")
    add("--scale", type=int, default=4, help="Super-resolution factor of the synthetic LQ.")
    add(
        "--degradation",
        type=str,
        default="realesrgan",
        choices=("light", "realesrgan", "bicubic"),
        help="LQ synthesis: Real-ESRGAN second order, its light variant, or plain bicubic.",
    )
    add(
        "--small_images",
        type=str,
        default="upsize",
        choices=("upsize", "skip"),
        help="Images smaller than --resolution: enlarge them or skip them (counted in the log either way).",
    )
    add(
        "--min_crop_gradient",
        type=float,
        default=0.0,
        help="Redraw a training crop (at most 9 times) while the mean absolute difference of neighbouring grey "
        "pixels (in [0, 1]) of its HQ image is below this; photos with large flat areas (sky, bokeh) otherwise give "
        "mostly flat crops. 0 = off.",
    )
    add(
        "--cache_images",
        action="store_true",
        help="Keep the decoded training images in memory after their first use (a small folder of large photos is "
        "then not decoded again for every crop); needs RAM for the whole decoded set. Not with --streaming.",
    )
    add("--random_flip", action="store_true", help="Random horizontal flips.")
    add(
        "--random_rotate",
        action="store_true",
        help="Random 90-degree rotations of the crops (with --random_flip: all eight flips and rotations).",
    )
    add("--dataloader_num_workers", type=int, default=0, help="Data loading worker processes.")
    # Optimisation.
    add("--output_dir", type=str, default="teasr-output", help="Where checkpoints and the final weights go.")
    add("--seed", type=int, default=0, help="Seed of everything (crops, degradations, noise, timesteps).")
    add("--train_batch_size", type=int, default=4, help="Batch size per device.")
    add("--num_train_epochs", type=int, default=1)
    add("--max_train_steps", type=int, default=None, help="Total optimiser steps; overrides --num_train_epochs.")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--learning_rate", type=float, default=1e-4)
    add("--scale_lr", action="store_true", help="Scale the learning rate by GPUs x accumulation x batch size.")
    add(
        "--lr_scheduler",
        type=str,
        default="constant",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"),
        help="Learning-rate schedule; every one but 'constant' starts with --lr_warmup_steps of linear warm-up.",
    )
    add("--lr_warmup_steps", type=int, default=0)
    add("--lr_num_cycles", type=int, default=1)
    add("--lr_power", type=float, default=1.0)
    add("--use_8bit_adam", action="store_true", help="bitsandbytes 8-bit AdamW (pip install bitsandbytes).")
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-4)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0, help="Clip the gradient norm to this (<= 0: no clipping).")
    add(
        "--use_ema",
        action="store_true",
        help="Keep an exponential moving average of the trained transformer parameters (LoRA or full) and save it "
        "as the final weights; checkpoints hold the raw weights and the average.",
    )
    add(
        "--ema_decay",
        type=float,
        default=0.999,
        help="Upper bound of the EMA decay; diffusers' EMAModel ramps it up as (1 + step) / (10 + step).",
    )
    add(
        "--max_bad_steps",
        type=int,
        default=10,
        help="Stop after this many consecutive steps with a NaN/inf loss or gradient (each one is skipped).",
    )
    add(
        "--timestep_sampling",
        type=str,
        default="uniform",
        choices=("uniform", "logit_normal"),
        help="Levels t of the flow-matching loss.",
    )
    add("--logit_mean", type=float, default=0.0)
    add("--logit_std", type=float, default=1.0)
    add(
        "--mixed_precision",
        type=str,
        default=None,
        choices=("no", "fp16", "bf16"),
        help="Overrides the accelerate config. The frozen base (LoRA) is stored in this precision.",
    )
    add("--allow_tf32", action="store_true")
    # Checkpoints, logging, validation, Hub.
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest".')
    add(
        "--report_to",
        type=str,
        default="tensorboard",
        help='"tensorboard", "wandb", ... (its package installed), "all" or "none".',
    )
    add("--logging_dir", type=str, default="logs", help="TensorBoard folder, relative to --output_dir.")
    add("--tracker_project_name", type=str, default=None)
    add(
        "--validation_image",
        type=str,
        nargs="+",
        action="extend",
        default=None,
        help="LQ image(s) upscaled at each validation (the flag may be repeated).",
    )
    add("--validation_steps", type=int, default=500, help="Validate every this many steps (and at the end).")
    add("--validation_num_inference_steps", type=int, nargs="+", default=[1, 4])
    add("--validation_start_timestep", type=float, default=None, help="Default: the pipeline's start level.")
    add(
        "--default_tile_size",
        type=int,
        default=None,
        help="Tile size stored in a saved pixel-space pipeline (default: --resolution for models trained here).",
    )
    add(
        "--default_tile_overlap",
        type=int,
        default=None,
        help=(
            "Tile overlap (output pixels) stored in the saved pipeline (default: the base's, else none stored: 1/8 of "
            "the tile for 1-step calls, 1/4 for more)."
        ),
    )
    add(
        "--default_start_timestep",
        type=float,
        default=None,
        help="Start level stored in a saved pipeline (default: the base's).",
    )
    add("--push_to_hub", action="store_true", help="Upload the final weights with a model card.")
    add("--hub_model_id", type=str, default=None)
    add("--hub_token", type=str, default=None)


# The packages each --report_to tracker needs (any one of them); accelerate only warns and logs nothing without them.
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "comet_ml": ("comet_ml",),
    "mlflow": ("mlflow",),
    "aim": ("aim",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "trackio": ("trackio",),
    "swanlab": ("swanlab",),
}


def check_output_dir(args: argparse.Namespace) -> None:
    """--output_dir must be a folder that can be created, and one holding checkpoints is only resumed: a new run
    there would number its checkpoints from 1, and --checkpoints_total_limit would delete those as the oldest."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output_dir {args.output_dir!r} is a file; pass a folder (new or to resume in).")
    output_dir = existing = os.path.abspath(args.output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--output_dir {args.output_dir!r} cannot be created: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {args.output_dir!r} cannot be written: no write permission in {existing}.")
    if args.resume_from_checkpoint is None and os.path.isdir(output_dir) and list_checkpoints(output_dir):
        raise ValueError(
            f"--output_dir {args.output_dir!r} holds checkpoints of an earlier run: pass --resume_from_checkpoint "
            "latest to continue it, or another --output_dir."
        )


def check_common_args(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, reported before anything is loaded."""
    if (args.train_data_dir is None) == (args.dataset_name is None):
        raise ValueError("Pass exactly one of --train_data_dir or --dataset_name.")
    if args.resolution < 1 or args.scale < 1:
        raise ValueError(f"--resolution and --scale must be >= 1, got {args.resolution} and {args.scale}.")
    if args.resolution % args.scale:
        raise ValueError(f"--resolution ({args.resolution}) must be a multiple of --scale ({args.scale}).")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a folder.")
    if args.resume_from_checkpoint:
        check_resumable(args)
    for path in args.validation_image or []:
        if os.path.isdir(path):
            raise ValueError(f"--validation_image {path!r} is a folder; pass image files.")
        if not os.path.isfile(path):
            raise ValueError(f"--validation_image {path!r} does not exist.")
        try:
            PIL.Image.open(path).close()  # reads the header only
        except (OSError, PIL.Image.DecompressionBombError) as error:
            raise ValueError(f"--validation_image {path!r} is not a readable image ({error}).") from None
    check_output_dir(args)
    if any(steps < 1 for steps in args.validation_num_inference_steps):
        raise ValueError(f"--validation_num_inference_steps must be >= 1, got {args.validation_num_inference_steps}.")
    for flag in ("validation_start_timestep", "default_start_timestep"):
        value = getattr(args, flag)
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"--{flag} must lie in (0, 1], got {value}.")
    if args.default_tile_size is not None and args.default_tile_size < 0:
        raise ValueError(f"--default_tile_size must be >= 0 (0: no tiling), got {args.default_tile_size}.")
    for flag in (
        "train_batch_size",
        "num_train_epochs",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "max_bad_steps",
    ):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be >= 1, got {args.max_train_steps}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}.")
    for flag in ("lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}.")
    if args.lr_warmup_steps > 0 and args.lr_scheduler == "constant":  # diffusers' "constant" ignores the warm-up
        raise ValueError(
            f"--lr_warmup_steps {args.lr_warmup_steps} has no effect with --lr_scheduler constant: "
            "pass --lr_scheduler constant_with_warmup, or drop --lr_warmup_steps."
        )
    for flag in ("learning_rate", "critic_learning_rate"):
        value = getattr(args, flag, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{flag} must be a positive number, got {value}.")
    if not args.full_finetune and (args.rank < 1 or args.lora_alpha < 1):
        raise ValueError(f"--rank and --lora_alpha must be >= 1, got {args.rank} and {args.lora_alpha}.")
    if not 0.0 < args.ema_decay < 1.0:
        raise ValueError(f"--ema_decay must lie in (0, 1), got {args.ema_decay}.")
    if args.conv_channels < 0 or args.conv_blocks < 0:
        raise ValueError(f"--conv_channels / --conv_blocks must be >= 0: {args.conv_channels} / {args.conv_blocks}.")
    if args.default_tile_overlap is not None and args.default_tile_overlap < 0:
        raise ValueError(f"--default_tile_overlap must be >= 0, got {args.default_tile_overlap}.")
    if args.cache_images and args.streaming:
        raise ValueError("--cache_images keeps a map-style dataset in memory; a --streaming one is not kept.")
    if args.trainable_modules is not None and not args.full_finetune:
        raise ValueError("--trainable_modules selects what a full fine-tune trains: add --full_finetune.")
    tracker_packages = TRACKER_PACKAGES.get(args.report_to, ())
    if tracker_packages and not any(importlib.util.find_spec(name) for name in tracker_packages):
        raise ValueError(
            f"--report_to {args.report_to} needs the {tracker_packages[0]} package: "
            f"`pip install {tracker_packages[0]}` (or --report_to none)."
        )
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`.")
    if args.push_to_hub:
        from huggingface_hub import get_token

        if args.hub_token is None and get_token() is None:
            raise ValueError("--push_to_hub needs a Hub token: run `hf auth login` or pass --hub_token.")


# ====================================================================================================================
# The training loop shared by train_flow_sr.py and train_teasr_lora.py
# ====================================================================================================================


def _flat_config(args: argparse.Namespace) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}


def _recorded_base(args: argparse.Namespace) -> str | None:
    """--pretrained_model_name_or_path as the outputs record it: a local folder by its absolute path (findable from
    any folder later), a Hub id as given."""
    base = args.pretrained_model_name_or_path
    return os.path.abspath(base) if base and os.path.isdir(base) else base


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _lora_target_modules(lora_layers: str | None) -> list[str]:
    if lora_layers is None:
        return list(DEFAULT_LORA_LAYERS)
    return [layer.strip() for layer in lora_layers.split(",") if layer.strip()]


def _make_optimizer(args: argparse.Namespace, groups: list[dict]) -> torch.optim.Optimizer:
    kwargs = {
        "betas": (args.adam_beta1, args.adam_beta2),
        "weight_decay": args.adam_weight_decay,
        "eps": args.adam_epsilon,
    }
    if args.use_8bit_adam:
        import bitsandbytes as bnb  # checked by `check_common_args`

        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def write_model_card(args: argparse.Namespace, output_dir: str, kind: str, lora: bool) -> str:
    """A README.md with YAML front matter describing what was trained and how to load it."""
    from .pipeline_teasr import looks_like_local_path

    base = _recorded_base(args) or "trained from scratch"
    local = os.path.isdir(base) or looks_like_local_path(base)
    # The Hub accepts only a model id as `base_model`: none for a local folder or a model trained from scratch.
    base_model = f"base_model: {base}\n" if args.pretrained_model_name_or_path and not local else ""
    lora_tag = "- lora\n" if lora else ""
    load = (
        "pipe = TEASRPipeline.from_pretrained(BASE)\npipe.load_lora_weights(REPO)"
        if lora
        else "pipe = TEASRPipeline.from_pretrained(REPO)"
    )
    title = "TEASR self-adversarial distillation" if kind == "teasr" else "TEASR flow-matching SR base"
    flags = "\n".join(
        f"- `--{k} {v}`"
        for k, v in sorted(vars(args).items())
        if k.startswith(("lambda_", "rank", "lora_alpha", "resolution", "scale", "degradation", "learning_rate"))
        or k in ("max_train_steps", "coupled_timestep", "no_rectification", "reconstruction_only", "full_finetune")
    )
    text = f"""---
license: apache-2.0
library_name: diffusers
{base_model}tags:
- super-resolution
- image-to-image
- diffusers
- diffusers-training
- teasr
{lora_tag}---

# {title}

{"LoRA weights" if lora else "A TEASR pipeline"} trained with `train_scripts/{
        "train_teasr_lora.py" if kind == "teasr" else "train_flow_sr.py"
    }` of the `pipeline_teasr` project. Base: `{base}`.

## Use

```python
from PIL import Image
from pipeline_teasr import TEASRPipeline

BASE, REPO = "{base}", "{args.hub_model_id or output_dir}"
{load}
image = pipe(Image.open("lq.png"), upscale={args.scale}, num_inference_steps=1).images[0]
```

## Training settings

{flags}
"""
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def run_training(
    args: argparse.Namespace,
    load_base: Callable[[argparse.Namespace, torch.dtype], object],
    build_objective: Callable[[argparse.Namespace, nn.Module], FlowMatchingObjective | SelfAdversarialObjective],
    extra_learning_rates: dict[str, float] | None = None,
) -> str:
    """Train with accelerate and save the result to `args.output_dir`; returns the output folder.

    `load_base(args, torch_dtype)` returns a `TEASRPipeline` on the CPU (the frozen base of a LoRA is loaded
    directly in the mixed-precision dtype); `build_objective(args, transformer)` the objective,
    whose `modules` (e.g. the critic heads) are trained alongside the transformer. An objective call returns
    `"loss"` (what is left to backpropagate; earlier parts go through its `backward` argument), `"total"` (the
    whole step's loss, detached) and detached terms; everything but `"loss"` is logged as `loss/<name>`.
    """
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers import FlowMapEulerDiscreteScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    from .data import (
        SRCropDataset,
        SRStreamingCropDataset,
        build_degradation,
        collate_sr_batch,
        load_image_dataset,
        lq_condition_pixels,
    )
    from .pipeline_teasr import TEASRPipeline

    check_common_args(args)
    os.makedirs(args.output_dir, exist_ok=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    log = get_logger("teasr.train")
    log.info(accelerator.state, main_process_only=False)
    if accelerator.mixed_precision == "bf16" and bfloat16_is_emulated(accelerator.device.type):
        log.warning(f"--mixed_precision bf16: {EMULATED_BFLOAT16}; use --mixed_precision no.")
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    repo_id = upload_failure = None
    if args.push_to_hub and accelerator.is_main_process:
        from huggingface_hub import create_repo

        name = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        try:
            repo_id = create_repo(name, exist_ok=True, token=args.hub_token).repo_id
        except Exception as error:  # offline, a bad token, a name taken: the Hub's errors have no common base
            reason = first_line(error)
            raise ValueError(f"--push_to_hub: cannot create the Hub repository {name!r}: {reason}") from None

    # ---- data and base: every bad input is reported here, before any training.
    dataset = load_image_dataset(
        train_data_dir=args.train_data_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        image_column=args.image_column,
        lq_column=args.lq_column,
        cache_dir=args.cache_dir,
        streaming=args.streaming,
    )
    lora = not args.full_finetune
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    pipe = load_base(args, weight_dtype if lora else torch.float32)
    transformer, vae = pipe.transformer, pipe.vae
    if args.resolution % pipe.grid_multiple:
        raise ValueError(
            f"--resolution ({args.resolution}) must be a multiple of {pipe.grid_multiple} for this model."
        )
    if args.lq_skip:
        if lora:
            raise ValueError("--lq_skip adds a new layer that a LoRA cannot train: use it with --full_finetune.")
        transformer.enable_lq_skip()
    if args.conv_channels:
        if lora:
            raise ValueError("--conv_channels adds new layers that a LoRA cannot train: use it with --full_finetune.")
        transformer.enable_conv_path(args.conv_channels, args.conv_blocks)
    if args.coupled_timestep:
        transformer.register_to_config(decoupled_timestep=False)
        if not args.full_finetune:
            log.warning("--coupled_timestep with a LoRA: load the LoRA into a base with decoupled_timestep=False.")
    vae_dtype = vae.dtype if vae is not None else None
    if vae is not None:
        vae.requires_grad_(False)
        vae.to(accelerator.device, dtype=weight_dtype)
    if lora:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        _move(transformer, accelerator.device, weight_dtype)
        transformer.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.lora_alpha,
                init_lora_weights="gaussian",
                target_modules=_lora_target_modules(args.lora_layers),
            )
        )
        cast_training_params(transformer, dtype=torch.float32)
    else:
        transformer.requires_grad_(args.trainable_modules is None)
        for name in args.trainable_modules or ():
            trainable = getattr(transformer, name, None)
            if not isinstance(trainable, nn.Module):
                children = ", ".join(child for child, _ in transformer.named_children())
                raise ValueError(f"--trainable_modules: the transformer has no submodule {name!r} (has: {children}).")
            trainable.requires_grad_(True)
        _move(transformer, accelerator.device, torch.float32)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    objective = build_objective(args, transformer)
    extra_names = list(objective.modules)
    extras = [objective.modules[name].to(accelerator.device) for name in extra_names]
    degradation = build_degradation(args.degradation, args.scale)
    default_tile_size = args.default_tile_size or pipe.config.default_tile_size
    if default_tile_size is None and vae is None:
        default_tile_size = args.resolution
    default_start_timestep = args.default_start_timestep or pipe.config.get("default_start_timestep")
    # A model trained on one path only records it: the pipeline refuses the other start and defaults to this one.
    trained_starts = objective.trained_starts
    saved_defaults = {
        "default_tile_size": default_tile_size,
        "default_tile_overlap": (
            args.default_tile_overlap
            if args.default_tile_overlap is not None
            else pipe.config.get("default_tile_overlap")
        ),
        "default_start_timestep": default_start_timestep,
        "default_start": trained_starts[0] if len(trained_starts) == 1 else pipe.config.get("default_start"),
        "supported_starts": trained_starts if len(trained_starts) == 1 else None,
    }
    overlap = saved_defaults["default_tile_overlap"]
    if default_tile_size and overlap is not None and overlap > max_tile_overlap(default_tile_size):
        raise ValueError(
            f"--default_tile_overlap must be at most half the default tile ({max_tile_overlap(default_tile_size)} px "
            f"for {default_tile_size}-px tiles), got {overlap}."
        )

    # ---- optimiser, data loader, schedule.
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    groups = [{"params": [p for p in transformer.parameters() if p.requires_grad], "lr": learning_rate}]
    for name, module in zip(extra_names, extras):
        lr = (extra_learning_rates or {}).get(name) or learning_rate
        groups.append({"params": list(module.parameters()), "lr": lr})
    optimizer = _make_optimizer(args, groups)

    crop_kwargs = dict(
        image_column=args.image_column,
        lq_column=args.lq_column,
        resolution=args.resolution,
        scale=args.scale,
        random_flip=args.random_flip,
        random_rotate=args.random_rotate,
        small_images=args.small_images,
        seed=args.seed,
        min_crop_gradient=args.min_crop_gradient,
    )
    if args.streaming:
        if args.max_train_steps is None:
            raise ValueError("--streaming needs --max_train_steps (a stream has no length).")
        train_dataset = SRStreamingCropDataset(dataset, **crop_kwargs)
        dataloader = torch.utils.data.DataLoader(
            train_dataset,
            batch_size=args.train_batch_size,
            collate_fn=collate_sr_batch,
            num_workers=args.dataloader_num_workers,
        )
    else:
        train_dataset = SRCropDataset(dataset, cache_images=args.cache_images, **crop_kwargs)
        dataloader = torch.utils.data.DataLoader(
            train_dataset,
            batch_size=args.train_batch_size,
            shuffle=True,
            collate_fn=collate_sr_batch,
            num_workers=args.dataloader_num_workers,
        )
    max_train_steps = args.max_train_steps
    if max_train_steps is None:
        steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
        max_train_steps = args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    prepared = accelerator.prepare(transformer, *extras, optimizer, dataloader, lr_scheduler)
    transformer, extras = prepared[0], list(prepared[1 : 1 + len(extras)])
    optimizer, dataloader, lr_scheduler = prepared[1 + len(extras) :]
    objective.modules = dict(zip(extra_names, extras))
    train_modules = [transformer, *extras]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    transformer_params = [p for p in transformer.parameters() if p.requires_grad]
    ema = None
    if args.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(transformer_params, decay=args.ema_decay)
        accelerator.register_for_checkpointing(ema)
    if args.streaming:
        # A stream is re-shuffled and replayed (epoch = pass over the stream) until max_train_steps.
        steps_per_epoch, num_epochs = None, 2**31
    else:
        steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
        num_epochs = math.ceil(max_train_steps / steps_per_epoch)

    # ---- checkpoint format: LoRA / transformer / critic heads as safetensors, plus accelerate's optimiser state.
    def save_model_hook(models, weights, output_dir):
        for model in models:
            model = unwrap_module(model)
            if accelerator.is_main_process:
                _save_trainable(model, output_dir, lora, TEASRPipeline)
            if weights:
                weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            _load_trainable(unwrap_module(models.pop()), input_dir, lora, TEASRPipeline)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name or f"teasr-{objective.name}", config=_flat_config(args))
        for name in os.listdir(args.output_dir):  # Stale half-written checkpoints of an interrupted run.
            if name.startswith(".checkpoint-") and name.endswith(".tmp"):
                shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)

    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = resume_checkpoint_path(args)
        if path is None:
            log.info("No complete checkpoint in --output_dir; starting a new run.")
        else:
            if not os.path.isfile(os.path.join(path, CHECKPOINT_MARKER)):
                raise ValueError(f"{path} is not a complete checkpoint (no {CHECKPOINT_MARKER}).")
            accelerator.load_state(path)
            global_step = checkpoint_step(path)
            if steps_per_epoch is None:  # A stream cannot seek: continue on a freshly shuffled pass.
                first_epoch = global_step
            else:
                first_epoch = global_step // steps_per_epoch
                resume_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps
            log.info(f"Resuming from checkpoint {path} at step {global_step} (epoch {first_epoch}).")

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    log.info(
        f"***** Running {objective.name} training ({'LoRA' if lora else 'full'}) *****\n"
        f"  examples = {'streaming' if args.streaming else len(dataset)}, "
        f"epochs = {'until max_train_steps' if args.streaming else num_epochs}, "
        f"batch per device = {args.train_batch_size}, total batch = {total_batch}, steps = {max_train_steps}"
    )

    def run_validation(step: int) -> None:
        if not args.validation_image or not accelerator.is_main_process:
            return
        model = unwrap_module(transformer)
        val_pipe = TEASRPipeline(
            transformer=model,
            scheduler=FlowMapEulerDiscreteScheduler.from_config(pipe.scheduler.config),
            vae=vae,
            **saved_defaults,
        )
        val_pipe.set_progress_bar_config(disable=True)
        log_validation(val_pipe, args, accelerator, step, log)

    guard = NonFiniteGuard(args.max_bad_steps)
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    skipped_rows: set[int] = set()
    upsized = 0
    micro_step, window_bad = 0, False
    losses: dict[str, torch.Tensor] = {}

    def backward_if_finite(loss: torch.Tensor) -> None:
        """Backpropagate (all or part of) a step's loss, unless it is non-finite on some process: then the
        accumulation window is marked bad and its update skipped. Objectives call it for early partial losses."""
        nonlocal window_bad
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if bool(accelerator.gather(flag).min() > 0):
            accelerator.backward(loss)
        else:
            window_bad = True

    try:
        for epoch in range(first_epoch, num_epochs):
            if global_step >= max_train_steps:
                break
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            train_dataset.set_epoch(epoch)
            loader = dataloader
            if epoch == first_epoch and resume_batches:
                loader = accelerator.skip_first_batches(dataloader, resume_batches)
            batches_this_epoch = 0
            for batch in loader:
                batches_this_epoch += 1
                skipped_rows.update(batch["skipped"])
                upsized += batch["num_upsized"]
                keys = (global_step, micro_step, accelerator.process_index)
                noise_generator = torch.Generator(device=accelerator.device).manual_seed(step_seed(args.seed, *keys))
                lq_generator = torch.Generator().manual_seed(step_seed(args.seed, *keys, 1))
                with accelerator.accumulate(*train_modules):
                    hq = batch["pixel_values"].to(accelerator.device)
                    with torch.no_grad():
                        if "lq_pixel_values" in batch:
                            lq = batch["lq_pixel_values"].to(accelerator.device)
                        else:
                            lq = degradation(hq, generator=lq_generator)
                        c = pipe.encode_images(lq_condition_pixels(lq, tuple(hq.shape[-2:]))).float()
                        z0 = pipe.encode_images(hq).float()
                    with accelerator.autocast():
                        losses = objective(
                            transformer, z0, c, noise_generator, global_step, backward=backward_if_finite
                        )
                    backward_if_finite(losses["loss"])
                    micro_step += 1
                    if accelerator.sync_gradients:
                        loss_scale_overflow = False
                        if not window_bad:
                            max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
                            grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                            overflow = grad_norm is not None and not math.isfinite(float(grad_norm))
                            # fp16 loss scaling (a GPU): an overflow is the scaler's to handle. optimizer.step() skips
                            # the update and lowers the scale, and must be called, or the next step's unscale fails.
                            loss_scale_overflow = overflow and accelerator.scaler is not None
                            window_bad = overflow and not loss_scale_overflow
                        if not window_bad:
                            optimizer.step()  # after a loss-scale overflow, the scaler skips the update itself
                            if ema is not None and not loss_scale_overflow:
                                ema.step(transformer_params)
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)

                if not accelerator.sync_gradients:
                    continue
                guard.update(not window_bad, global_step + 1)
                global_step += 1
                progress.update(1)
                logs = {f"loss/{k}": float(v) for k, v in losses.items() if k != "loss"}
                logs.update(
                    {
                        "lr": lr_scheduler.get_last_lr()[0],
                        "data/skipped_images": len(skipped_rows),
                        "data/upsized_images": upsized,
                        "train/skipped_steps": guard.total,
                    }
                )
                if window_bad:
                    log.warning(f"Step {global_step}: non-finite loss or gradient, update skipped.")
                micro_step, window_bad = 0, False
                progress.set_postfix(loss=logs["loss/total"], lr=logs["lr"])
                accelerator.log(logs, step=global_step)
                # The last step is saved too, so that a longer run (a larger --max_train_steps) resumes where this
                # one ended, not at the checkpoint before.
                if global_step % args.checkpointing_steps == 0 or global_step >= max_train_steps:
                    assert_finite_parameters(*[unwrap_module(m) for m in train_modules])
                    saved = save_checkpoint(
                        accelerator,
                        args.output_dir,
                        global_step,
                        args.checkpoints_total_limit,
                        state_flags=checkpoint_state_flags(args),
                    )
                    log.info(f"Saved checkpoint {saved}")
                # The last step is validated once, after the final (EMA) weights are in place.
                if global_step % args.validation_steps == 0 and global_step < max_train_steps:
                    run_validation(global_step)
                if global_step >= max_train_steps:
                    break
            if batches_this_epoch == 0:
                raise ValueError("The training set yielded no readable image.")
    except FloatingPointError as error:
        log.error(str(error))
        accelerator.end_training()
        raise
    progress.close()
    if skipped_rows or upsized:
        log.info(f"Data: {len(skipped_rows)} unreadable or skipped images, {upsized} crops from upsized images.")

    # ---- final weights.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = unwrap_module(transformer)
        if ema is not None:
            ema.copy_to(transformer_params)
            log.info("Final transformer weights: the exponential moving average (--use_ema).")
        assert_finite_parameters(model, *[unwrap_module(m) for m in extras])
        for name, module in zip(extra_names, extras):
            unwrap_module(module).save_pretrained(os.path.join(args.output_dir, name))
        if lora:
            _save_trainable(model, args.output_dir, True, TEASRPipeline)
        else:
            if vae is not None:
                vae.to(dtype=vae_dtype)
            # The transformer carries them too, for pipelines built from components rather than loaded.
            tile = saved_defaults["default_tile_size"]
            model.register_to_config(
                sample_size=tile // pipe.vae_scale_factor if tile else model.config.get("sample_size"),
                supported_starts=saved_defaults["supported_starts"],
            )
            final = TEASRPipeline(
                transformer=model,
                scheduler=FlowMapEulerDiscreteScheduler.from_config(pipe.scheduler.config),
                vae=vae,
                **saved_defaults,
            )
            final.save_pretrained(args.output_dir)
            if vae is not None:
                vae.to(dtype=weight_dtype)
        recorded = {**_flat_config(args), "pretrained_model_name_or_path": str(_recorded_base(args))}
        with open(os.path.join(args.output_dir, "training_args.json"), "w", encoding="utf-8") as handle:
            json.dump(recorded, handle, indent=2)
        write_model_card(args, args.output_dir, objective.name, lora)
        log.info(f"Saved the final {'LoRA' if lora else 'pipeline'} to {args.output_dir}")
        run_validation(global_step)
        if repo_id is not None:
            from huggingface_hub import upload_folder

            ignore = ["checkpoint-*", ".checkpoint-*", f"{args.logging_dir}/*"]
            try:
                upload_folder(
                    repo_id=repo_id,
                    folder_path=args.output_dir,
                    commit_message="End of training",
                    ignore_patterns=ignore,
                    token=args.hub_token,
                )
            except Exception as error:  # the trained model is saved; only the upload is left to redo
                excludes = " ".join(f"--exclude '{pattern}'" for pattern in ignore)
                upload_failure = (
                    f"the model is saved in {args.output_dir}, but the upload to {repo_id} failed "
                    f"({first_line(error)}); "
                    f"upload it with: hf upload {repo_id} {args.output_dir} {excludes}"
                )
    accelerator.end_training()
    if upload_failure is not None:
        raise ValueError(upload_failure)
    return args.output_dir


def _move(module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """`module.to(device, dtype)`, without diffusers' warning when the dtype does not change."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def _save_trainable(model: nn.Module, folder: str, lora: bool, pipeline_class) -> None:
    """Write one trained module into a checkpoint (or final) folder."""
    if isinstance(model, CriticHeads):
        model.save_pretrained(os.path.join(folder, CRITIC_HEADS_FOLDER))
    elif lora:
        from diffusers.training_utils import _collate_lora_metadata
        from peft.utils import get_peft_model_state_dict

        pipeline_class.save_lora_weights(
            folder,
            transformer_lora_layers=get_peft_model_state_dict(model),
            **_collate_lora_metadata({"transformer": model}),
        )
    else:
        model.save_pretrained(os.path.join(folder, "transformer"))


def _load_trainable(model: nn.Module, folder: str, lora: bool, pipeline_class) -> None:
    """Inverse of `_save_trainable`, into the live module."""
    if isinstance(model, CriticHeads):
        model.load_state_dict(CriticHeads.from_pretrained(os.path.join(folder, CRITIC_HEADS_FOLDER)).state_dict())
    elif lora:
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict

        state = pipeline_class.lora_state_dict(folder)
        state = {k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")}
        result = set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(state), adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"The checkpoint's LoRA does not fit this model (unexpected keys {unexpected[:5]}).")
    else:
        loaded = type(model).from_pretrained(
            os.path.join(folder, "transformer"), torch_dtype=torch.float32, use_safetensors=True
        )
        model.load_state_dict(loaded.state_dict())


def log_validation(pipe, args: argparse.Namespace, accelerator, step: int, log) -> list[str]:
    """Upscale each `--validation_image` at every `--validation_num_inference_steps`; save PNGs and log them."""
    from .data import decode_image

    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    saved = []
    for index, path in enumerate(args.validation_image):
        image = decode_image(path)
        for steps in args.validation_num_inference_steps:
            generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
            with torch.no_grad(), accelerator.autocast():
                result = pipe(
                    image,
                    upscale=args.scale,
                    num_inference_steps=steps,
                    start_timestep=args.validation_start_timestep,
                    generator=generator,
                ).images[0]
            out = os.path.join(folder, f"step-{step:06d}_image-{index}_{steps}-steps.png")
            result.save(out)
            saved.append(out)
            array = np.asarray(result.convert("RGB"))
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_images(
                        f"validation/image-{index}/{steps}-steps", array[None], step, dataformats="NHWC"
                    )
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log({f"validation/image-{index}/{steps}-steps": wandb.Image(result)}, step=step)
    log.info(f"Validation images: {', '.join(saved)}")
    return saved
