#!/usr/bin/env python
# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Flow-matching training of the TEASR s = t mode: the multi-step super-resolution base.

L_flow = || u(z_t, c, t, t) - (eps - z0) ||^2 with z_t = (1 - t) z0 + t eps and c the encoded LQ image resized to the
output size. From scratch (`--full_finetune` with `--model_config`), full fine-tuning, or LoRA on a pretrained base.
With `--full_finetune` the pipeline is saved at the root of `--output_dir`, ready as the
`--pretrained_model_name_or_path` of `train_teasr_lora.py`.

    accelerate launch --quiet train_scripts/train_flow_sr.py --train_data_dir photos --full_finetune \
        --resolution 64 --scale 4 --degradation light --output_dir teasr-flow-small
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys

import torch
from diffusers import FlowMapEulerDiscreteScheduler

from pipeline_teasr import TEASRPipeline, TEASRTransformer2DModel
from pipeline_teasr.distillation import (
    FlowMatchingObjective,
    add_common_training_args,
    load_training_pipeline,
    load_vae,
    run_training,
)
from pipeline_teasr.errors import training_error_message
from pipeline_teasr.transformer_teasr import SMALL_PIXEL_CONFIG


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TEASR flow-matching SR training (the s = t mode).")
    add_common_training_args(parser)
    parser.add_argument(
        "--model_config",
        type=str,
        default=None,
        help="Transformer config for training from scratch: a JSON file or an inline JSON object "
        "(TEASRTransformer2DModel arguments). Default: a small pixel-space model.",
    )
    parser.add_argument(
        "--zero_init_output",
        action="store_true",
        help="Training from scratch: start from a zero output projection (DiT's initialisation), so the model first "
        "predicts zero velocity instead of a random projection's noise. Off by default: teasr-mini's released base "
        "was trained without it, and the recipe reproduces it exactly.",
    )
    parser.add_argument(
        "--lq_bridge_prob",
        type=float,
        default=0.0,
        help="Share of rows on the LQ bridge z_t = (1 - t) z0 + t c (velocity c - z0; the sampler's start='lq') "
        "instead of the noise path.",
    )
    parser.add_argument(
        "--lq_bridge_start_prob",
        type=float,
        default=0.5,
        help="Share of the LQ-bridge rows at t = 1, on the LQ image itself.",
    )
    args = parser.parse_args(input_args)
    if args.zero_init_output and args.pretrained_model_name_or_path is not None:
        parser.error("--zero_init_output is for training from scratch; a pretrained base keeps its output layer.")
    if args.pretrained_model_name_or_path is None and not args.full_finetune:
        parser.error("Training from scratch (no --pretrained_model_name_or_path) needs --full_finetune.")
    if args.pretrained_model_name_or_path is not None and args.model_config is not None:
        parser.error("--model_config is for training from scratch; it cannot be combined with a pretrained base.")
    model_config(args.model_config)  # a wrong file or key is one error now, not a traceback after set-up
    return args


def model_config(value: str | None) -> dict:
    """--model_config as a dict: a JSON file, an inline JSON object, or the default small pixel-space model."""
    if value is None:
        return dict(SMALL_PIXEL_CONFIG)
    if os.path.isfile(value):
        text = open(value, encoding="utf-8").read()
    elif value.lstrip().startswith(("{", "[")):
        text = value
    else:
        raise ValueError(f"--model_config {value!r}: no such file, and not a JSON object either.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--model_config must be a JSON file or a JSON object: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"--model_config must be a JSON object of TEASRTransformer2DModel settings, got {text!r}.")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    known = set(inspect.signature(TEASRTransformer2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"--model_config: {', '.join(unknown)} is not a TEASRTransformer2DModel setting.")
    return config


def load_base(args: argparse.Namespace, torch_dtype: torch.dtype = torch.float32) -> TEASRPipeline:
    """The pretrained base, or a new pixel-space pipeline built from --model_config."""
    if args.pretrained_model_name_or_path is not None:
        return load_training_pipeline(
            args.pretrained_model_name_or_path,
            torch_dtype=torch_dtype,
            vae_path=args.pretrained_vae_model_name_or_path,
            cache_dir=args.cache_dir,
        )
    torch.manual_seed(args.seed)
    transformer = TEASRTransformer2DModel(**model_config(args.model_config))
    if args.zero_init_output:
        transformer.zero_output_layers()
    if transformer.out_channels != 3 and args.pretrained_vae_model_name_or_path is None:
        raise ValueError("A latent-space --model_config needs --pretrained_vae_model_name_or_path.")
    vae = None
    if args.pretrained_vae_model_name_or_path is not None:
        vae = load_vae(args.pretrained_vae_model_name_or_path)
    return TEASRPipeline(transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler(), vae=vae)


def build_objective(args: argparse.Namespace, transformer: torch.nn.Module) -> FlowMatchingObjective:
    return FlowMatchingObjective(
        args.timestep_sampling, args.logit_mean, args.logit_std, args.lq_bridge_prob, args.lq_bridge_start_prob
    )


def main(args: argparse.Namespace) -> None:
    run_training(args, load_base, build_objective)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FloatingPointError) as error:
        print(f"error: {training_error_message(error)}", file=sys.stderr)
        sys.exit(1)
