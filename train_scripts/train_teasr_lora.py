#!/usr/bin/env python
# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""TEASR self-adversarial distillation of a pretrained flow SR base: one network, no teacher, no discriminator.

Per step (see `pipeline_teasr.distillation.self_adversarial_losses` and the project brief):
  L = lambda_flow L_flow + lambda_rec L_rec + lambda_adv L_adv + lambda_critic L_critic + lambda_consistency L_cons
      + lambda_gradient L_grad + lambda_spectral L_spec + lambda_grid L_grid
- L_flow: flow matching in the s = t mode keeps the diffusion prior (the model is its own teacher);
- L_rec: || z_s_hat - z_s ||^2 for z_s_hat = z_t - (t - s) u(z_t, c, t, s), s = 0 (z0_hat) or random s < t;
- self-critic: the same network in flow mode at tau in [s, t] reads real / fake samples (shared noise); tiny
  per-token heads on a few blocks' hidden states learn a hinge loss; the generator gets -mean(logit(fake)) through
  a pass with every backbone and head parameter frozen;
- optional self-consistency (--lambda_consistency): the jump t -> s matches the stop-grad composition t -> m -> s;
- optional edge loss (--lambda_gradient): L1 error of neighbouring-pixel differences of the L_rec rows;
- optional spectral loss (--lambda_spectral): L1 between the amplitude spectra of the LQ-bridge rows' clean images
  and the HQ images (detail energy wherever it is drawn);
- optional grid loss (--lambda_grid): the part of the L_rec rows' error that repeats in every token patch;
- timestep-aware rectification (on unless --no_rectification): t over the whole any-step range, tau <= t, and the
  reconstruction / adversarial terms weighted by the jump size t - s.
Ablations: --coupled_timestep, --no_rectification, --reconstruction_only, --lambda_consistency 0/>0.

The LoRA is saved with `TEASRPipeline.save_lora_weights` at --output_dir (load it with
`pipe.load_lora_weights(output_dir)`); the critic heads go to --output_dir/critic_heads (not needed to sample).
With --full_finetune the whole pipeline is saved at --output_dir instead.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pipeline_teasr.distillation import (
    DistillationConfig,
    SelfAdversarialObjective,
    add_common_training_args,
    load_training_pipeline,
    parse_critic_blocks,
    run_training,
)
from pipeline_teasr.errors import training_error_message
from pipeline_teasr.losses import CriticHeads


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TEASR self-adversarial distillation (LoRA or full fine-tune).")
    add_common_training_args(parser)
    add = parser.add_argument
    add("--lambda_flow", type=float, default=1.0, help="Weight of L_flow (s = t flow matching).")
    add("--lambda_rec", type=float, default=1.0, help="Weight of L_rec (generator reconstruction).")
    add("--lambda_adv", type=float, default=0.1, help="Weight of the generator's adversarial term.")
    add("--lambda_critic", type=float, default=1.0, help="Weight of the critic heads' hinge loss.")
    add("--lambda_consistency", type=float, default=0.0, help="Weight of self-consistency (0 = off).")
    add(
        "--lambda_gradient",
        type=float,
        default=0.0,
        help="Weight of L_grad, the L1 error of neighbouring-pixel differences (edges, fine detail; 0 = off).",
    )
    add(
        "--lambda_spectral",
        type=float,
        default=0.0,
        help="Weight of L_spec, the L1 between amplitude spectra of the LQ-bridge rows' images and HQ (0 = off).",
    )
    add(
        "--lambda_grid",
        type=float,
        default=0.0,
        help="Weight of L_grid, the part of the generator's error that repeats in every token patch (0 = off).",
    )
    add(
        "--no_rectification",
        action="store_true",
        help="Ablation: generate from t = 1 only and weight all jumps equally.",
    )
    add("--reconstruction_only", action="store_true", help="Ablation: no critic, no adversarial term.")
    add(
        "--critic_blocks",
        type=str,
        default="auto",
        help='Blocks whose hidden states the critic heads read: "auto" (1/4, 1/2, 3/4 depth) or e.g. "10,30,50".',
    )
    add(
        "--critic_kernel_size",
        type=int,
        default=1,
        help="Window of each critic head on the token grid: 1 = per-token LayerNorm + Linear; k > 1 (odd) = a k x k "
        "convolution, so the heads see neighbouring tokens.",
    )
    add("--critic_learning_rate", type=float, default=None, help="Learning rate of the heads (default: the LoRA's).")
    add("--anystep_prob", type=float, default=0.5, help="Share of generator rows with a random target s > 0.")
    add(
        "--one_step_start_prob",
        type=float,
        default=0.25,
        help="With rectification: share of generator rows starting at t = 1.",
    )
    add(
        "--lq_anchor_prob",
        type=float,
        default=0.5,
        help="Share of generator rows starting on the LQ image, z_t = (1 - t) c + t eps (the sampler's T < 1 start).",
    )
    add(
        "--lq_anchor_max_timestep",
        type=float,
        default=1.0,
        help="Highest start level of the LQ-anchored rows (they start uniformly in [min_timestep, this]).",
    )
    add(
        "--lq_bridge_prob",
        type=float,
        default=0.0,
        help="Share of generator rows on the LQ bridge z_t = (1 - t) z0 + t c (the sampler's start='lq').",
    )
    add(
        "--lq_bridge_start_prob",
        type=float,
        default=0.5,
        help="With rectification: share of the LQ-bridge rows starting at t = 1, on the LQ image itself.",
    )
    add("--min_timestep", type=float, default=0.02, help="Lowest start level t with rectification.")
    add(
        "--bridge_critic_max_timestep",
        type=float,
        default=0.1,
        help="The critic reads LQ-bridge rows' clean estimates renoised to a level uniform in [0, this].",
    )
    add(
        "--critic_patch_shift",
        action="store_true",
        help="Roll the critic's inputs by a random offset within one patch, so its tokens do not sit on the "
        "generator's patch grid.",
    )
    add("--reconstruction_loss", type=str, default="l2", choices=("l2", "l1"))
    add(
        "--zero_init_output",
        action="store_true",
        help="Zero the base's velocity output layers before distilling, so that the LQ start begins as the upscaled "
        "LQ image and the base contributes its features only. Needs --full_finetune and --lambda_flow 0 (it "
        "discards the base's flow prediction, which the flow rows would otherwise have to relearn).",
    )
    add("--adversarial_warmup_steps", type=int, default=0, help="Ramp lambda_adv up linearly over these steps.")
    args = parser.parse_args(input_args)
    if args.pretrained_model_name_or_path is None:
        parser.error("--pretrained_model_name_or_path (the flow SR base to distil) is required.")
    if args.zero_init_output and (not args.full_finetune or args.lambda_flow != 0):
        parser.error("--zero_init_output needs --full_finetune and --lambda_flow 0.")
    if args.critic_kernel_size < 1 or args.critic_kernel_size % 2 == 0:
        parser.error(f"--critic_kernel_size must be an odd positive integer, got {args.critic_kernel_size}.")
    return args


def distillation_config(args: argparse.Namespace) -> DistillationConfig:
    return DistillationConfig(
        lambda_flow=args.lambda_flow,
        lambda_rec=args.lambda_rec,
        lambda_adv=0.0 if args.reconstruction_only else args.lambda_adv,
        lambda_critic=args.lambda_critic,
        lambda_consistency=args.lambda_consistency,
        lambda_gradient=args.lambda_gradient,
        lambda_spectral=args.lambda_spectral,
        lambda_grid=args.lambda_grid,
        rectification=not args.no_rectification,
        reconstruction_only=args.reconstruction_only,
        anystep_prob=args.anystep_prob,
        one_step_start_prob=args.one_step_start_prob,
        lq_anchor_prob=args.lq_anchor_prob,
        lq_anchor_max_timestep=args.lq_anchor_max_timestep,
        lq_bridge_prob=args.lq_bridge_prob,
        lq_bridge_start_prob=args.lq_bridge_start_prob,
        min_timestep=args.min_timestep,
        bridge_critic_max_timestep=args.bridge_critic_max_timestep,
        critic_patch_shift=args.critic_patch_shift,
        reconstruction_loss=args.reconstruction_loss,
        adversarial_warmup_steps=args.adversarial_warmup_steps,
        flow_timestep_sampling=args.timestep_sampling,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
    )


def load_base(args: argparse.Namespace, torch_dtype: torch.dtype = torch.float32):
    pipe = load_training_pipeline(
        args.pretrained_model_name_or_path,
        torch_dtype=torch_dtype,
        vae_path=args.pretrained_vae_model_name_or_path,
        cache_dir=args.cache_dir,
    )
    if args.zero_init_output:
        pipe.transformer.zero_output_layers()
    return pipe


def build_objective(args: argparse.Namespace, transformer: torch.nn.Module) -> SelfAdversarialObjective:
    config = distillation_config(args)
    heads = None
    if config.uses_critic:
        blocks = parse_critic_blocks(args.critic_blocks, len(transformer.transformer_blocks))
        heads = CriticHeads(transformer.inner_dim, blocks, kernel_size=args.critic_kernel_size)
    return SelfAdversarialObjective(config, heads)


def main(args: argparse.Namespace) -> None:
    distillation_config(args)  # Reject bad weights / probabilities before anything is loaded.
    run_training(args, load_base, build_objective, extra_learning_rates={"critic_heads": args.critic_learning_rate})


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FloatingPointError) as error:
        print(f"error: {training_error_message(error)}", file=sys.stderr)
        sys.exit(1)
