# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Memory of TEASR LoRA distillation at Qwen-Image size (20B) vs. a teacher-based (DMD2 / VSD style) baseline.

    python benchmarks/memory_20b.py                      # meta-device count + analytic budget + traced peaks, CPU
    python benchmarks/memory_20b.py --device cuda        # ... + real steps on random bf16 weights (H200 class)
    python benchmarks/memory_20b.py --device cpu --tiny  # the real-step path at tiny scale (CI)

Three figures, from cheapest to most real:
1. `params`: exact parameter count of the Qwen-Image-size `TEASRTransformer2DModel` built on the meta device.
2. `analytic`: a closed-form budget per component (frozen bf16 base, LoRA + grads + AdamW states, critic heads,
   checkpoint boundaries of every pass whose graph is alive at the peak, one block's backward working set) for
   TEASR and for the baseline. Every assumption is listed in the JSON's `assumptions`.
3. `traced`: the same training steps executed on fake tensors (`FakeTensorMode`: shapes and dtypes only, nothing is
   allocated) while a dispatcher-level counter adds up the bytes of every live tensor storage: the peak that an
   allocator without caching or fragmentation would reach. `--device cpu/cuda` runs the identical step code on real
   tensors and measures (CUDA: `torch.cuda.max_memory_allocated`; CPU: the same live-tensor counter and RSS).

Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    GIB,
    LiveTensorBytes,
    PeakRSSSampler,
    device_name,
    emit,
    machine_info,
    nonnegative_int_list,
    positive_int,
    positive_int_list,
)

# Qwen-Image's transformer (diffusers `QwenImageTransformer2DModel` defaults): 60 blocks, 24 heads x 128.
QWEN_IMAGE_CONFIG: dict[str, Any] = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
)
# Same latent layout (16 channels, 2x2 patches), tiny width and depth: CI and the CPU real-step path.
TINY_CONFIG: dict[str, Any] = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    axes_dims_rope=(4, 6, 6),
)
ATTENTION_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
MLP_LORA_TARGETS = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
LORA_TARGETS = {"attn": ATTENTION_LORA_TARGETS, "attn-mlp": ATTENTION_LORA_TARGETS + MLP_LORA_TARGETS}
BF16 = 2
FP32 = 4
ADAMW_STATE_BYTES = 2 * FP32  # exp_avg + exp_avg_sq, fp32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config at 128 px (CI, seconds)")
    parser.add_argument(
        "--device",
        type=device_name,
        default=None,
        help="also run real steps on this device (cpu, cuda); default: analytic + traced",
    )
    parser.add_argument(
        "--resolution", type=positive_int, default=None, help="output side in pixels (default 1024, tiny 128)"
    )
    parser.add_argument("--vae-factor", type=positive_int, default=8, help="pixels per latent (Qwen-Image VAE: 8)")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument(
        "--text-tokens", type=positive_int, default=1, help="text tokens per sample (1: learned null prompt)"
    )
    parser.add_argument("--rank", type=positive_int, default=64, help="LoRA rank")
    parser.add_argument("--lora-layers", default="attn", choices=sorted(LORA_TARGETS), help="LoRA target modules")
    parser.add_argument(
        "--critic-blocks",
        type=nonnegative_int_list,
        default=None,
        help="block indices read by the critic heads (default 3)",
    )
    parser.add_argument(
        "--real-steps",
        type=positive_int,
        default=2,
        help="measured steps with --device (after priming the AdamW states)",
    )
    parser.add_argument("--no-trace", action="store_true", help="skip the fake-tensor traces")
    parser.add_argument(
        "--trace-depths",
        type=positive_int_list,
        default=None,
        help="trace at these two depths and extrapolate linearly to the full depth (default 3,5; one depth >= "
        "num_layers: a direct trace)",
    )
    parser.add_argument("--no-baseline-real", action="store_true", help="with --device: skip the baseline's real step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = 128 if args.tiny else 1024
    if args.trace_depths is None:
        args.trace_depths = [2] if args.tiny else [3, 5]
    config = TINY_CONFIG if args.tiny else QWEN_IMAGE_CONFIG
    args.layers = config["num_layers"]
    if args.critic_blocks is None:
        args.critic_block_list = default_critic_blocks(args.layers)
    else:
        args.critic_block_list = tuple(args.critic_blocks)
        if max(args.critic_block_list) >= args.layers:
            parser.error(f"--critic-blocks: this config has blocks 0..{args.layers - 1}")
    args.trace_depth_list = args.trace_depths
    if args.resolution % (args.vae_factor * config["patch_size"]):
        parser.error(f"--resolution must be a multiple of {args.vae_factor * config['patch_size']}")
    return args


# ---------------------------------------------------------------------------------------------------------- building


@contextlib.contextmanager
def building(dtype: torch.dtype, device: str | torch.device | None) -> Iterator[None]:
    """Create modules directly in `dtype` (and on `device`), without a float32 detour."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


class CriticHeads(nn.Module):
    """The self-critic's only parameters: LayerNorm + Linear per read block, a real/fake logit per token (fp32)."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1)) for _ in range(count))

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([head(h.float()) for head, h in zip(self.heads, hidden_states)], dim=1)


def build_transformer(config: dict[str, Any], args: argparse.Namespace, lora: bool, target=None):
    """A frozen bf16 TEASR transformer, with a trainable fp32 LoRA when `lora` (diffusers-training convention).

    The module is always built on the meta device (instant, also at 20B; peft builds its layers there too), then
    given storage on `target`: a `FakeTensorMode` (shapes only), a real device (random weights), or None (meta)."""
    from peft import LoraConfig

    from pipeline_teasr import TEASRTransformer2DModel

    with building(torch.bfloat16, "meta"):
        model = TEASRTransformer2DModel(**config)
        model.requires_grad_(False)
        if lora:
            targets = LORA_TARGETS[args.lora_layers]
            model.add_adapter(
                LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=targets)
            )
    if target is not None:
        materialize(model, target)
    model.enable_gradient_checkpointing()
    return model


def materialize(model: nn.Module, target) -> None:
    """Replace the meta tensors of `model` by fake tensors (`target` a FakeTensorMode) or by random tensors on the
    device `target`. Trainable parameters become fp32, the rest keeps its dtype. Random values follow a plain
    scheme (weights N(0, 0.02), LoRA B zero, norms one, biases zero): values do not change memory or speed."""
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = isinstance(target, FakeTensorMode)
    device = torch.device("cpu") if fake else torch.device(target)
    context = target if fake else contextlib.nullcontext()
    generator = None if fake else torch.Generator(device).manual_seed(0)
    with context, torch.no_grad():
        for module_name, module in model.named_modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                dtype = torch.float32 if param.requires_grad else param.dtype
                value = torch.empty(param.shape, dtype=dtype, device=device)
                if not fake:
                    full = f"{module_name}.{name}"
                    if name == "bias" or "lora_B" in full:
                        value.zero_()
                    elif param.ndim == 1:
                        value.fill_(1.0)
                    else:
                        value.normal_(0.0, 0.02, generator=generator)
                module._parameters[name] = nn.Parameter(value, requires_grad=param.requires_grad)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
            if isinstance(module, QwenEmbedRope):  # its frequency tables are plain attributes, not buffers
                fresh = QwenEmbedRope(theta=module.theta, axes_dim=module.axes_dim, scale_rope=module.scale_rope)
                module.pos_freqs, module.neg_freqs = fresh.pos_freqs.to(device), fresh.neg_freqs.to(device)


def build_heads(dim: int, args: argparse.Namespace, target=None) -> CriticHeads:
    from torch._subclasses.fake_tensor import FakeTensorMode

    if isinstance(target, FakeTensorMode):
        with target:
            return CriticHeads(dim, len(args.critic_block_list))
    with torch.device(target if target is not None else "meta"):
        return CriticHeads(dim, len(args.critic_block_list))


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


@contextlib.contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Parameters that get no gradient inside the block (the graph records them as constants)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def make_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    # foreach=False: per-parameter updates, no multi-tensor temporaries (same on every device).
    return torch.optim.AdamW(params, lr=1e-5, foreach=False)


def make_batch(args: argparse.Namespace, config: dict[str, Any], device=None) -> dict[str, torch.Tensor]:
    side = args.resolution // args.vae_factor
    shape = (args.batch_size, config["out_channels"], side, side)
    gen = {name: torch.randn(shape, dtype=torch.bfloat16, device=device) for name in ("z0", "c", "eps", "eps2")}
    gen["t"] = torch.rand(args.batch_size, device=device) * 0.98 + 0.02
    gen["tau"] = gen["t"] * torch.rand(args.batch_size, device=device)
    if args.text_tokens > 1:
        gen["text"] = torch.randn(
            (args.batch_size, args.text_tokens, config["joint_attention_dim"]), dtype=torch.bfloat16, device=device
        )
    return gen


def _view(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def _renoise(x0: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return (1 - _view(level)) * x0 + _view(level) * noise


def _hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


# ------------------------------------------------------------------------------------------------------------ steps
TEASR_PASSES = [
    {"pass": "flow: u(z_t, c, t, t)", "grad": "LoRA (L_flow)"},
    {"pass": "generator: u(z_t, c, t, 0) -> z0_hat", "grad": "LoRA (L_rec + adversarial)"},
    {"pass": "self-critic on re-noised z0_hat, heads on block states", "grad": "input only (backbone frozen)"},
    {"pass": "self-critic on re-noised z0 (real)", "grad": "none (heads train on detached states)"},
]
BASELINE_PASSES = [
    {"pass": "generator G(z_t) -> z0_hat", "grad": "generator LoRA"},
    {"pass": "frozen teacher (real score) on re-noised z0_hat", "grad": "none"},
    {"pass": "fake score on re-noised z0_hat (DMD gradient)", "grad": "none"},
    {"pass": "discriminator (fake-score trunk + heads) on z0_hat for G", "grad": "input only"},
    {"pass": "fake score denoising loss on z0_hat (+ D fake logits)", "grad": "fake-score LoRA + heads"},
    {"pass": "discriminator on real z0", "grad": "fake-score LoRA + heads"},
]


def _text(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"encoder_hidden_states": batch.get("text")}


def _no_mark(label: str) -> None:
    pass


def teasr_step(model, heads, optimizer, batch, critic_blocks, mark=_no_mark) -> dict[str, float]:
    """One self-adversarial distillation step of ONE network (the brief's method, loss weights 1)."""
    z0, c, eps, eps2, t, tau = (batch[k] for k in ("z0", "c", "eps", "eps2", "t", "tau"))
    lora = [p for p in model.parameters() if p.requires_grad]
    z_t = _renoise(z0, t, eps)
    mark("teasr pass 1 (flow) forward")
    u_flow = model(z_t, c, t, t, **_text(batch)).sample
    loss_flow = F.mse_loss(u_flow.float(), (eps - z0).float())
    mark("teasr pass 1 backward (before the generator pass, as run_training does)")
    loss_flow.backward()
    del u_flow
    mark("teasr pass 2 (generator) forward")
    u_gen = model(z_t, c, t, torch.zeros_like(t), **_text(batch)).sample
    z0_hat = z_t - _view(t) * u_gen
    loss_rec = F.mse_loss(z0_hat.float(), z0.float())
    # Pass 3: the same network in flow mode judges the re-noised fake; its parameters are frozen for this pass, the
    # adversarial gradient reaches the generator through z0_hat only.
    with frozen(lora + list(heads.parameters())):
        fake_in = z0_hat.detach().requires_grad_(True)
        mark("teasr pass 3 (self-critic, fake) forward")
        out = model(_renoise(fake_in, tau, eps2), c, tau, tau, output_hidden_states_at=critic_blocks, **_text(batch))
        loss_adv = -heads(out.block_hidden_states).mean()
        mark("teasr pass 3 backward to its input (pass 2 graph alive)")
        (grad_adv,) = torch.autograd.grad(loss_adv, fake_in)
    fake_states = tuple(h.detach() for h in out.block_hidden_states)
    del out
    mark("teasr pass 4 (self-critic, real, no grad) forward")
    with torch.no_grad():
        real_states = model(
            _renoise(z0, tau, eps2), c, tau, tau, output_hidden_states_at=critic_blocks, **_text(batch)
        ).block_hidden_states
    loss_critic = _hinge(heads(real_states), heads(fake_states))
    loss = loss_rec + (z0_hat.float() * grad_adv.float()).sum() + loss_critic
    mark("teasr backward (pass 2)")
    loss.backward()
    mark("teasr optimizer step")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(loss.detach() + loss_flow.detach())} if not _is_fake(loss) else {}


def baseline_step(
    generator, teacher, fake_score, heads, opt_g, opt_f, batch, critic_blocks, mark=_no_mark
) -> dict[str, float]:
    """DMD2-style step: generator update (DMD gradient from teacher vs fake score + GAN term), then the fake-score /
    discriminator update. The discriminator is DMD2's: heads on the fake-score network's block states."""
    z0, c, eps, eps2, t, tau = (batch[k] for k in ("z0", "c", "eps", "eps2", "t", "tau"))
    fake_lora = [p for p in fake_score.parameters() if p.requires_grad]
    z_t = _renoise(z0, t, eps)
    mark("baseline pass 1 (generator) forward")
    z0_hat = z_t - _view(t) * generator(z_t, c, t, torch.zeros_like(t), **_text(batch)).sample
    x = _renoise(z0_hat.detach(), tau, eps2)
    with torch.no_grad():
        mark("baseline pass 2 (teacher, no grad) forward")
        x0_real = x - _view(tau) * teacher(x, c, tau, tau, **_text(batch)).sample
        mark("baseline pass 3 (fake score, no grad) forward")
        x0_fake = x - _view(tau) * fake_score(x, c, tau, tau, **_text(batch)).sample
        weight = (z0_hat.detach().float() - x0_real.float()).abs().mean().clamp_min(1e-3)
        grad_dmd = (x0_fake.float() - x0_real.float()) / weight
    del x0_real, x0_fake
    with frozen(fake_lora + list(heads.parameters())):  # GAN term for G, through the input only
        fake_in = z0_hat.detach().requires_grad_(True)
        mark("baseline pass 4 (discriminator for G) forward")
        out = fake_score(
            _renoise(fake_in, tau, eps2), c, tau, tau, output_hidden_states_at=critic_blocks, **_text(batch)
        )
        mark("baseline pass 4 backward to its input (pass 1 graph alive)")
        (grad_gan,) = torch.autograd.grad(-heads(out.block_hidden_states).mean(), fake_in)
    del out
    loss_g = (z0_hat.float() * (grad_dmd + grad_gan.float())).sum()
    mark("baseline generator backward")
    loss_g.backward()
    mark("baseline generator optimizer step")
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    z0_hat = z0_hat.detach()
    del grad_dmd, grad_gan, loss_g, z_t, x

    x_fake = _renoise(z0_hat, tau, eps2)
    mark("baseline pass 5 (fake-score denoising + D fake) forward")
    out = fake_score(x_fake, c, tau, tau, output_hidden_states_at=critic_blocks, **_text(batch))
    loss_fake = F.mse_loss(out.sample.float(), (eps2 - z0_hat).float())
    mark("baseline pass 6 (D real) forward")
    real = fake_score(_renoise(z0, tau, eps2), c, tau, tau, output_hidden_states_at=critic_blocks, **_text(batch))
    loss = loss_fake + _hinge(heads(real.block_hidden_states), heads(out.block_hidden_states))
    mark("baseline fake-score / discriminator backward (passes 5-6)")
    loss.backward()
    mark("baseline fake-score optimizer step")
    opt_f.step()
    opt_f.zero_grad(set_to_none=True)
    return {"loss_fake_score": float(loss.detach())} if not _is_fake(loss) else {}


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


# -------------------------------------------------------------------------------------------------- counting on meta


def count_parameters(config: dict[str, Any], args: argparse.Namespace) -> dict[str, int]:
    """Exact counts on the meta device: nothing is allocated, peft builds the LoRA layers on meta too."""
    model = build_transformer(config, args, lora=True)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    per_block = sum(p.numel() for n, p in model.transformer_blocks[0].named_parameters() if "lora_" not in n)
    heads = sum(p.numel() for p in build_heads(model.inner_dim, args).parameters())
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        reference = QwenImageTransformer2DModel(**config)
    return {
        "params": base,
        "params_diffusers_qwenimage_same_config": sum(p.numel() for p in reference.parameters()),
        "params_per_block": per_block,
        "lora_params": lora,
        "critic_head_params": heads,
    }


# ------------------------------------------------------------------------------------------------- traced / measured


def default_critic_blocks(layers: int) -> tuple[int, ...]:
    return tuple(sorted({max(0, layers // 3 - 1), max(0, 2 * layers // 3 - 1), layers - 1}))


def _models_for(method: str, config: dict[str, Any], args: argparse.Namespace, target) -> dict[str, Any]:
    if method == "teasr":
        model = build_transformer(config, args, lora=True, target=target)
        heads = build_heads(model.inner_dim, args, target)
        parts = {"model": model, "heads": heads, "optimizer": make_optimizer(trainable(model, heads))}
    else:
        generator = build_transformer(config, args, lora=True, target=target)
        teacher = build_transformer(config, args, lora=False, target=target)
        fake_score = build_transformer(config, args, lora=True, target=target)
        heads = build_heads(generator.inner_dim, args, target)
        parts = {
            "generator": generator,
            "teacher": teacher,
            "fake_score": fake_score,
            "heads": heads,
            "opt_g": make_optimizer(trainable(generator)),
            "opt_f": make_optimizer(trainable(fake_score, heads)),
        }
    return parts


def prime_optimizers(parts: dict[str, Any]) -> None:
    """Create the AdamW states up front (one update with zero gradients), so that ONE measured step is a
    steady-state step: weights, states and the step's activations all present, as from the second step on."""
    for optimizer in (v for v in parts.values() if isinstance(v, torch.optim.Optimizer)):
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _run_step(method: str, parts: dict[str, Any], batch, critic_blocks, mark=_no_mark) -> dict[str, float]:
    if method == "teasr":
        return teasr_step(parts["model"], parts["heads"], parts["optimizer"], batch, critic_blocks, mark)
    names = ("generator", "teacher", "fake_score", "heads", "opt_g", "opt_f")
    return baseline_step(*(parts[n] for n in names), batch, critic_blocks, mark)


def _track_all(counter: LiveTensorBytes, parts: dict[str, Any], batch: dict[str, torch.Tensor]) -> None:
    for value in parts.values():
        if isinstance(value, nn.Module):
            for p in value.parameters():
                counter.track(p)
        elif isinstance(value, torch.optim.Optimizer):
            for state in value.state.values():
                for tensor in state.values():
                    if torch.is_tensor(tensor):
                        counter.track(tensor)
    for tensor in batch.values():
        counter.track(tensor)


def trace_at_depth(method: str, config: dict[str, Any], args: argparse.Namespace, layers: int) -> dict[str, Any]:
    """One steady-state training step on fake tensors at `layers` blocks, counting live storage bytes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = {**config, "num_layers": layers}
    critic_blocks = args.critic_block_list if layers == args.layers else default_critic_blocks(layers)
    mode = FakeTensorMode()
    parts = _models_for(method, config, args, target=mode)
    with mode:
        batch = make_batch(args, config)
        prime_optimizers(parts)
        counter = LiveTensorBytes()
        _track_all(counter, parts, batch)
        static = counter.current
        with counter:
            counter.reset_peak()
            _run_step(method, parts, batch, critic_blocks, counter.mark)
        attention = sorted(op for op in counter.ops if "scaled_dot_product" in op or "attention" in op)
        del parts, batch
    return {
        "layers": layers,
        "peak_bytes": counter.peak,
        "static_bytes": static,
        "peak_at": counter.peak_label,
        "phase_peaks": dict(counter.label_peaks),
        "attention_kernels": attention,
    }


def trace(method: str, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Traced peak at full depth: directly when the model is shallow, else from two shallower traces of the same
    width and resolution. The peak of every phase of the step is extrapolated linearly in depth (weights, optimizer
    states and checkpoint boundaries grow by a fixed amount per block, a block's working set does not) and the
    largest is taken."""
    started = time.perf_counter()
    depths = sorted({min(d, args.layers) for d in args.trace_depth_list})
    if args.layers <= depths[-1]:
        depths = [args.layers]
    rows = [trace_at_depth(method, config, args, d) for d in depths]
    if len(rows) == 1:
        phases = rows[0]["phase_peaks"]
        static = rows[0]["static_bytes"]
        how = "direct"
    else:
        # Each phase of the step (a pass, a backward, an optimizer step) is extrapolated on its own: phases whose
        # memory grows faster with depth can overtake the one that peaks in the shallow traces.
        (d0, r0), (d1, r1) = ((r["layers"], r) for r in rows[:2])

        def extrapolate(v0: int, v1: int) -> int:
            return v0 + (v1 - v0) * (args.layers - d0) // (d1 - d0)

        phases = {k: extrapolate(r0["phase_peaks"][k], r1["phase_peaks"][k]) for k in r1["phase_peaks"]}
        static = extrapolate(r0["static_bytes"], r1["static_bytes"])
        how = f"each phase's peak extrapolated linearly in depth from {d0} and {d1} blocks"
    peak_at = max(phases, key=phases.get)
    peak = phases[peak_at]
    return {
        "peak_gib": round(peak / GIB, 3),
        "peak_bytes": int(peak),
        "weights_states_batch_gib": round(static / GIB, 3),
        "peak_at": peak_at,
        "how": how,
        "phase_peaks_gib": {k: round(v / GIB, 3) for k, v in phases.items() if k},
        "depth_traces": [
            {"layers": r["layers"], "peak_bytes": r["peak_bytes"], "peak_at": r["peak_at"]} for r in rows
        ],
        "attention_kernels": rows[-1]["attention_kernels"],
        "trace_s": round(time.perf_counter() - started, 1),
    }


def block_working_set(config: dict[str, Any], args: argparse.Namespace) -> int:
    """Bytes above the checkpoint boundaries during one LoRA-trained pass of a ONE-block model (fake tensors):
    the recomputed block's saved activations, its backward temporaries and the pass's own inputs/outputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    one_block = {**config, "num_layers": 1}
    mode = FakeTensorMode()
    model = build_transformer(one_block, args, lora=True, target=mode)
    with mode:
        counter = LiveTensorBytes()
        batch = make_batch(args, one_block)
        with counter:
            base = counter.current
            z_t = _renoise(batch["z0"], batch["t"], batch["eps"])
            u = model(z_t, batch["c"], batch["t"], batch["t"], **_text(batch)).sample
            F.mse_loss(u.float(), (batch["eps"] - batch["z0"]).float()).backward()
        peak = counter.peak - base
    return peak - 2 * boundary_bytes_per_block(config, args)


def boundary_bytes_per_block(config: dict[str, Any], args: argparse.Namespace) -> int:
    """bf16 block input kept by gradient checkpointing: image tokens (both branches) + text tokens."""
    tokens = 2 * (args.resolution // args.vae_factor // config["patch_size"]) ** 2 + args.text_tokens
    return args.batch_size * tokens * config["num_attention_heads"] * config["attention_head_dim"] * BF16


def real_run(method: str, config: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Random bf16 weights on `device`, optimizer states primed, then `args.real_steps` real steps, measured."""
    torch.manual_seed(args.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
    started = time.perf_counter()
    parts = _models_for(method, config, args, target=device)
    batch = make_batch(args, config, device=device)
    prime_optimizers(parts)
    if cuda:
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - started
    counter = None if cuda else LiveTensorBytes()
    if counter is not None:
        _track_all(counter, parts, batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    static = torch.cuda.memory_allocated(device) if cuda else counter.current
    times, losses = [], []
    with PeakRSSSampler() as rss, counter if counter is not None else contextlib.nullcontext():
        for _ in range(args.real_steps):
            if cuda:
                torch.cuda.synchronize(device)
            step_start = time.perf_counter()
            mark = counter.mark if counter is not None else _no_mark
            losses.append(_run_step(method, parts, batch, args.critic_block_list, mark))
            if cuda:
                torch.cuda.synchronize(device)
            times.append(round(time.perf_counter() - step_start, 3))
    result: dict[str, Any] = {
        "device": str(device),
        "build_and_prime_s": round(build_s, 1),
        "step_s": times,
        "losses": losses,
        "weights_states_batch_gib": round(static / GIB, 4),
    }
    if cuda:
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        result["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 3)
    else:
        result["live_tensor_peak_gib"] = round(counter.peak / GIB, 4)
        result["live_tensor_peak_bytes"] = counter.peak
        result["peak_at"] = counter.peak_label
        result["rss_increase_during_steps_mib"] = round((rss.peak - rss.start) / 2**20, 1)
    del parts, batch
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------------------- analytic


def analytic(config: dict[str, Any], args: argparse.Namespace, counts: dict[str, int], block_ws: int) -> dict:
    """Closed-form budget (bytes, then GiB) of one steady-state step of each method; see `assumptions`."""
    layers = config["num_layers"]
    boundary = boundary_bytes_per_block(config, args)
    per_pass = (layers + 1) * boundary  # every block input + the last block's output
    base = counts["params"] * BF16
    lora = counts["lora_params"] * (FP32 + FP32 + ADAMW_STATE_BYTES)  # fp32 weights + grads + AdamW states
    heads = counts["critic_head_params"] * (FP32 + FP32 + ADAMW_STATE_BYTES)
    teasr_alive = 2  # generator + critic graphs while the critic pass backpropagates (the flow pass already did)
    teasr = {
        "frozen_base_bf16": base,
        "lora_weights_grads_adamw_fp32": lora,
        "critic_heads_weights_grads_adamw_fp32": heads,
        "checkpoint_boundaries": teasr_alive * per_pass,
        "one_block_working_set": block_ws,
    }
    baseline_alive = 2  # phase G: generator + discriminator-for-G graphs; phase D: fake-score + real-D graphs
    baseline = {
        "generator_base_bf16": base,
        "teacher_copy_bf16": base,
        "fake_score_copy_bf16": base,
        "generator_lora_fp32_states": lora,
        "fake_score_lora_fp32_states": lora,
        "discriminator_heads_fp32_states": heads,
        "checkpoint_boundaries": baseline_alive * per_pass,
        "one_block_working_set": block_ws,
    }
    teasr_total, baseline_total = sum(teasr.values()), sum(baseline.values())
    full_fake_score = counts["params"] * (FP32 + FP32 + ADAMW_STATE_BYTES)  # fp32 master + grads + states
    shared_base = baseline_total - 2 * base

    def gib(table: dict[str, int]) -> dict[str, float]:
        return {key: round(value / GIB, 3) for key, value in table.items()}

    tokens = (args.resolution // args.vae_factor // config["patch_size"]) ** 2
    return {
        "tokens_per_sample": {"noisy": tokens, "lq": tokens, "text": args.text_tokens},
        "boundary_bytes_per_block_per_pass": boundary,
        "teasr_gib": {**gib(teasr), "total": round(teasr_total / GIB, 3)},
        "baseline_gib": {**gib(baseline), "total": round(baseline_total / GIB, 3)},
        "teasr_total_bytes": teasr_total,
        "baseline_total_bytes": baseline_total,
        "ratio": round(teasr_total / baseline_total, 3),
        "baseline_variants_gib": {
            "fake_score_full_finetune_total": round((baseline_total - lora + full_fake_score) / GIB, 3),
            "shared_base_multi_lora_total": round(shared_base / GIB, 3),
        },
        "ratio_vs_shared_base_baseline": round(teasr_total / shared_base, 3),
    }


def assumptions(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    side = args.resolution // args.vae_factor
    return [
        f"output {args.resolution}^2 px, VAE factor {args.vae_factor} -> latents {side}x{side}x"
        f"{config['out_channels']}, patch {config['patch_size']} -> {(side // config['patch_size']) ** 2} noisy + "
        f"{(side // config['patch_size']) ** 2} LQ tokens; {args.text_tokens} text token(s) (1 = learned null "
        "prompt); batch "
        f"{args.batch_size}",
        "latents and text embeddings precomputed: VAE and text encoder not resident during the step",
        "frozen base weights bf16; trainable parameters (LoRA, heads) fp32 (diffusers cast_training_params), "
        "fp32 grads, torch AdamW (foreach=False) with two fp32 states; no 8-bit optimizer, no CPU offload",
        f"LoRA rank {args.rank} on {', '.join(LORA_TARGETS[args.lora_layers])} of every block (peft, no bias, "
        "dropout 0)",
        f"critic heads: LayerNorm + Linear(dim, 1) in fp32 on blocks {list(args.critic_block_list)}; the baseline's "
        "discriminator uses identical heads on its fake-score network (DMD2 style: no separate discriminator "
        "backbone, the cheapest baseline)",
        "gradient checkpointing on every block (diffusers, non-reentrant): each pass with a live graph keeps each "
        "block's bf16 input (image + text tokens) plus the last block's output; one block is recomputed at a time",
        "one_block_working_set: live bytes above the boundaries during a LoRA-trained forward+backward of a 1-block "
        "model of the same width, traced on fake tensors (recomputed activations, LoRA fp32 input casts, backward "
        "temporaries, the pass's inputs/outputs); attention as the traced kernel (flash-style, no N^2 matrix)",
        "TEASR step (one network): 4 forward passes — flow (LoRA grad, backpropagated at once as run_training "
        "does), generator (LoRA grad), self-critic on re-noised fake (grad to its input only; its backward runs "
        "while the generator graph is alive: 2 graphs at the peak), self-critic on real (no grad); then one backward "
        "on the generator's losses",
        "baseline step (DMD2/VSD style, separate networks): generator (LoRA) + frozen teacher copy + fake-score copy "
        "(LoRA) + discriminator heads on the fake score; 6 forward passes — G (grad), teacher (no grad), fake score "
        "(no grad), D on fake for G (grad to input), fake-score denoising (+D fake logits) (grad), D on real (grad); "
        "two phases with their own backward, 2 graphs alive at the peak of either",
        "bytes are tensor storage bytes: no allocator caching/fragmentation, no CUDA context, cuBLAS or attention "
        "workspaces (not counted here; on a GPU max_memory_allocated includes the workspaces it allocates)",
        "variants: full fine-tune of the fake score counts fp32 weights + grads + AdamW states for all its "
        "parameters instead of LoRA; shared-base multi-LoRA keeps ONE base in memory for generator, teacher "
        "(adapters off) and fake score (second adapter)",
    ]


# -------------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = TINY_CONFIG if args.tiny else QWEN_IMAGE_CONFIG
    started = time.perf_counter()
    device = torch.device(args.device) if args.device else None
    result: dict[str, Any] = {
        "benchmark": "memory_20b",
        "config_name": "tiny" if args.tiny else "qwen-image (20B)",
        "config": config,
        "machine": machine_info(device),
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "lora_layers": args.lora_layers,
        "critic_blocks": list(args.critic_block_list),
    }
    counts = count_parameters(config, args)
    result.update(counts)
    block_ws = block_working_set(config, args)
    budget = analytic(config, args, counts, block_ws)
    result["analytic"] = budget
    result["teasr_total_gib"] = budget["teasr_gib"]["total"]
    result["baseline_total_gib"] = budget["baseline_gib"]["total"]
    result["ratio"] = budget["ratio"]
    result["forward_passes_per_step"] = {"teasr": len(TEASR_PASSES), "baseline": len(BASELINE_PASSES)}
    result["networks_in_memory"] = {"teasr": 1, "baseline": 3}
    result["passes"] = {"teasr": TEASR_PASSES, "baseline": BASELINE_PASSES}
    if not args.no_trace:
        traced: dict[str, Any] = {method: trace(method, config, args) for method in ("teasr", "baseline")}
        traced["ratio"] = round(traced["teasr"]["peak_bytes"] / traced["baseline"]["peak_bytes"], 3)
        result["traced"] = traced
    if device is not None:
        measured: dict[str, Any] = {}
        capacity = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        for method, need in (("teasr", budget["teasr_gib"]["total"]), ("baseline", budget["baseline_gib"]["total"])):
            if method == "baseline" and args.no_baseline_real:
                measured[method] = {"skipped": "--no-baseline-real"}
            elif capacity is not None and need * GIB > 0.92 * capacity:
                measured[method] = {"skipped": f"needs ~{need:.0f} GiB, device has {capacity / GIB:.0f} GiB"}
            else:
                out_of_memory = None
                try:
                    measured[method] = real_run(method, config, args, device)
                except torch.cuda.OutOfMemoryError as error:  # a result too: this method does not fit this device
                    out_of_memory = str(error).splitlines()[0][:300]
                if out_of_memory is not None:
                    gc.collect()
                    torch.cuda.empty_cache()
                    measured[method] = {"out_of_memory": out_of_memory}
            peak = measured[method].get("max_memory_allocated_bytes", measured[method].get("live_tensor_peak_bytes"))
            if peak is not None and "traced" in result:
                measured[method]["measured_over_traced"] = round(peak / result["traced"][method]["peak_bytes"], 4)
        result["measured"] = measured
    result["assumptions"] = assumptions(config, args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    emit(result)


if __name__ == "__main__":
    main()
