# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Measured peak memory of ONE TEASR distillation step vs. ONE step of a teacher-based (DMD2 / VSD style) baseline.

    python benchmarks/train_memory.py                    # small pixel-space config, this machine (CPU: minutes)
    python benchmarks/train_memory.py --tiny             # seconds (CI)
    python benchmarks/train_memory.py --full             # full fine-tuning instead of LoRA, for every trained net
    python benchmarks/train_memory.py --device cuda --dtype bfloat16 --num_layers 24 --heads 16 --head_dim 64

TEASR: the project's own `self_adversarial_losses` (default `DistillationConfig`, critic heads on), backward, AdamW
step; one transformer (frozen base + peft LoRA, or fully trained) and its `CriticHeads`.
Baseline, implemented here only for this comparison: a generator (the same transformer, same LoRA/full setting), a
frozen teacher copy, a trainable fake-score copy (same LoRA/full setting) and a discriminator (`CriticHeads` on the
fake score's block states, DMD2 style); one generator step (DMD gradient + GAN term) and one fake-score step
(denoising loss on generated samples + discriminator loss), each with its own backward and AdamW step.

Each method runs in a FRESH subprocess per repetition (peaks never mix); medians over `--repeats`.
CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. CPU: the kernel's peak RSS (VmHWM, reset
through /proc/self/clear_refs right before the step), cross-checked by a 1 ms RSS sampling thread and by a count of
live tensor bytes at the dispatcher (`_common.LiveTensorBytes`).
Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import LiveTensorBytes, device_name, machine_info  # noqa: E402

# pipeline_teasr (diffusers, peft) is imported by the measuring subprocesses only: the parent stays light.

MIB = 1024**2
METHODS = ("teasr", "baseline")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Default: the small pixel-space model (pipeline_teasr.transformer_teasr.SMALL_PIXEL_CONFIG) at 64x64, batch 8.
DEFAULTS: dict[str, Any] = dict(
    num_layers=6, heads=4, head_dim=32, resolution=64, batch_size=8, patch_size=4, channels=3, text_dim=64, repeats=3
)
TINY: dict[str, Any] = dict(
    num_layers=2, heads=2, head_dim=16, resolution=16, batch_size=2, patch_size=4, channels=3, text_dim=16, repeats=1
)
# MALLOC_MMAP_THRESHOLD_ fixes glibc's threshold (no dynamic growth): large blocks are mmapped and returned to the
# OS when freed, so RSS follows the memory actually in use instead of what the allocator keeps cached.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}

TEASR_PASSES = [
    "1 call, B rows, LoRA/weights grad: flow rows u(z_t', c, t', t'), backpropagated at once (as run_training does)",
    "1 call, B rows, LoRA/weights grad: generator rows u(z_t, c, t, s)",
    "1 call, B rows, no grad: self-critic on real z_s re-noised to tau (block states for the heads)",
    "1 call, B rows, parameters frozen, grad to the input: self-critic on fake z_s_hat re-noised to tau",
]
BASELINE_PASSES = [
    "generator G(z_t, c, t, 0) -> z0_hat (grad to G)",
    "frozen teacher on z0_hat re-noised to tau (no grad): real score",
    "fake score on the same input (no grad): fake score; DMD gradient = (x0_fake - x0_real) / mean|z0_hat - x0_real|",
    "discriminator for G: fake-score trunk + heads on the re-noised z0_hat, parameters frozen, grad to the input",
    "fake-score step: fake score on detached z0_hat re-noised (denoising loss) + its block states -> D fake logits",
    "fake-score step: fake score on real z0 re-noised (block states -> D real logits); grads to fake score + heads",
]


# ---------------------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_name, default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="frozen weights and autocast (auto: float32 on CPU, bfloat16 on CUDA); trained weights stay float32",
    )
    parser.add_argument("--num_layers", type=int, default=None, help=f"transformer blocks ({DEFAULTS['num_layers']})")
    parser.add_argument("--heads", type=int, default=None, help=f"attention heads ({DEFAULTS['heads']})")
    parser.add_argument("--head_dim", type=int, default=None, help=f"attention head dim ({DEFAULTS['head_dim']})")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help=f"side of the transformer input, pixels or latents ({DEFAULTS['resolution']})",
    )
    parser.add_argument("--batch_size", type=int, default=None, help=f"batch ({DEFAULTS['batch_size']})")
    parser.add_argument("--patch_size", type=int, default=None, help=f"patch side ({DEFAULTS['patch_size']})")
    parser.add_argument(
        "--channels", type=int, default=None, help="input channels: 3 pixel space, 16 Qwen-Image latents (3)"
    )
    parser.add_argument("--text_dim", type=int, default=None, help="joint_attention_dim (64)")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank (alpha = rank), as train_teasr_lora.py")
    parser.add_argument("--full", action="store_true", help="full fine-tuning of every trained transformer")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="on every transformer of both methods")
    parser.add_argument("--critic_blocks", default="auto", help='blocks read by critic / discriminator heads ("auto")')
    parser.add_argument(
        "--lambda_consistency", type=float, default=0.0, help="TEASR self-consistency weight (> 0 adds 2 passes)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per method; median (3, tiny 1)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, 1 repeat (CI, seconds)")
    parser.add_argument(
        "--no_tensor_count",
        action="store_true",
        help="CPU: skip the live-tensor-bytes cross-check (otherwise done in the first repetition only: it is slow)",
    )
    parser.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the two methods' processes at the same time (peaks are per process; default: only with --tiny)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    base = TINY if args.tiny else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        args.dtype = "bfloat16" if torch.device(args.device).type == "cuda" else "float32"
    if args.resolution % args.patch_size:
        parser.error(f"--resolution must be a multiple of --patch_size ({args.patch_size})")
    if args.head_dim % 2 or args.head_dim < 8:
        parser.error("--head_dim must be even and >= 8 (three even RoPE axes)")
    if min(args.num_layers, args.heads, args.batch_size, args.repeats, args.lora_rank) < 1:
        parser.error("sizes, --repeats and --lora_rank must be >= 1")
    if args.parallel is None:
        args.parallel = args.tiny
    return args


def transformer_config(args: argparse.Namespace, num_layers: int | None = None) -> dict[str, Any]:
    frame = args.head_dim // 4 // 2 * 2
    height = (args.head_dim - frame) // 2 // 2 * 2
    return dict(
        patch_size=args.patch_size,
        in_channels=args.channels * args.patch_size**2,
        out_channels=args.channels,
        num_layers=num_layers or args.num_layers,
        attention_head_dim=args.head_dim,
        num_attention_heads=args.heads,
        joint_attention_dim=args.text_dim,
        axes_dims_rope=(frame, height, args.head_dim - frame - height),
    )


# ------------------------------------------------------------------------------------------------------------- models


def setup_trained(model: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """As `run_training`: LoRA -> frozen base in --dtype + fp32 peft LoRA; full -> every weight fp32 and trained."""
    if args.full:
        model.requires_grad_(True)
        model.to(device, torch.float32)
    else:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        from pipeline_teasr.distillation import DEFAULT_LORA_LAYERS

        model.requires_grad_(False)
        model.to(device, DTYPES[args.dtype])
        model.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_rank,
                init_lora_weights="gaussian",
                target_modules=list(DEFAULT_LORA_LAYERS),
            )
        )
        cast_training_params(model, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def make_optimizer(*modules: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(trainable(*modules), lr=1e-5)


def prime(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's two fp32 states per trained tensor now: the measured step is a steady-state step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def build(method: str, args: argparse.Namespace, device: torch.device, num_layers: int | None = None) -> dict:
    """The networks, optimisers and block indices of one method (all optimiser states primed)."""
    from pipeline_teasr.distillation import parse_critic_blocks
    from pipeline_teasr.losses import CriticHeads
    from pipeline_teasr.transformer_teasr import TEASRTransformer2DModel

    torch.manual_seed(args.seed)
    config = transformer_config(args, num_layers)
    blocks = parse_critic_blocks(args.critic_blocks, args.num_layers) if num_layers is None else (0,)
    base = TEASRTransformer2DModel(**config)
    if method == "teasr":
        setup_trained(base, args, device)
        heads = CriticHeads(base.inner_dim, blocks).to(device)
        parts = {"networks": {"transformer": base}, "heads": heads, "optimizers": [make_optimizer(base, heads)]}
    else:
        teacher = copy.deepcopy(base).requires_grad_(False).to(device, DTYPES[args.dtype])
        if args.gradient_checkpointing:
            teacher.enable_gradient_checkpointing()
        fake_score = copy.deepcopy(base)
        setup_trained(base, args, device)
        setup_trained(fake_score, args, device)
        disc = CriticHeads(base.inner_dim, blocks).to(device)
        parts = {
            "networks": {"generator": base, "teacher": teacher, "fake_score": fake_score},
            "heads": disc,
            "optimizers": [make_optimizer(base), make_optimizer(fake_score, disc)],
        }
    for optimizer in parts["optimizers"]:
        prime(optimizer)
    parts["blocks"] = blocks
    return parts


# -------------------------------------------------------------------------------------------------------------- steps


def distillation_config(args: argparse.Namespace):  # -> pipeline_teasr.distillation.DistillationConfig
    from pipeline_teasr.distillation import DistillationConfig

    return DistillationConfig(lambda_consistency=args.lambda_consistency)


def teasr_step(parts: dict, z0: torch.Tensor, c: torch.Tensor, args: argparse.Namespace, rng: torch.Generator) -> dict:
    """The project's own objective, its early flow-row backward and the final backward, then the optimiser step, as
    `run_training` does."""
    from pipeline_teasr.distillation import self_adversarial_losses

    (optimizer,) = parts["optimizers"]
    model, config = parts["networks"]["transformer"], distillation_config(args)
    losses = self_adversarial_losses(model, z0, c, config, rng, parts["heads"], backward=torch.Tensor.backward)
    losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(losses["total"])}


def baseline_step(
    parts: dict, z0: torch.Tensor, c: torch.Tensor, args: argparse.Namespace, rng: torch.Generator
) -> dict:
    """DMD2-style: generator step (DMD gradient from teacher vs fake score + non-saturating GAN term through the
    discriminator), then fake-score step (denoising loss on generated samples + discriminator logistic loss)."""
    from pipeline_teasr.distillation import sample_critic_timesteps, sample_generator_timesteps
    from pipeline_teasr.losses import call_with_frozen_parameters, flow_matching_loss, interpolate, renoise

    nets, disc, blocks = parts["networks"], parts["heads"], parts["blocks"]
    generator, teacher, fake_score = nets["generator"], nets["teacher"], nets["fake_score"]
    opt_g, opt_d = parts["optimizers"]
    batch = z0.shape[0]

    def randn() -> torch.Tensor:
        return torch.randn(z0.shape, generator=rng, device=rng.device).to(z0)

    def level(x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *([1] * (z0.ndim - 1))).to(z0)

    # ---- generator step: one jump t -> 0 (DMD2's one-step generator), same start-level sampling as TEASR.
    eps = randn()
    t, _, _ = sample_generator_timesteps(batch, rng, distillation_config(args))
    t = t.to(z0.device)
    zero = torch.zeros_like(t)
    z_t = interpolate(z0, eps, t)
    z0_hat = z_t - level(t) * generator(z_t, c, timestep=t, target_timestep=zero).sample
    tau = sample_critic_timesteps(t, zero, rng).clamp(0.02, 0.98).to(z0.device)
    noise = randn()
    x = renoise(z0_hat, zero, tau, noise)
    with torch.no_grad():
        x_in = x.detach()
        x0_real = x_in - level(tau) * teacher(x_in, c, timestep=tau, target_timestep=tau).sample
        x0_fake = x_in - level(tau) * fake_score(x_in, c, timestep=tau, target_timestep=tau).sample
        weight = (z0_hat.detach() - x0_real).abs().flatten(1).float().mean(1).clamp_min(1e-4)
        grad = (x0_fake - x0_real).float() / level(weight).float()
    del x0_real, x0_fake
    loss_dmd = 0.5 * F.mse_loss(z0_hat.float(), (z0_hat.float() - grad).detach())
    states = call_with_frozen_parameters(
        fake_score, x, c, timestep=tau, target_timestep=tau, output_hidden_states_at=blocks
    ).block_hidden_states
    loss_gan = F.softplus(-call_with_frozen_parameters(disc, list(states))).mean()
    loss_g = loss_dmd + 0.01 * loss_gan
    loss_g.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    del states, x, z_t, grad, loss_dmd, loss_gan
    z0_hat = z0_hat.detach()

    # ---- fake-score + discriminator step on the generated batch and the real batch.
    tau2 = (0.02 + 0.96 * torch.rand(batch, generator=rng, device=rng.device)).to(z0.device)
    noise2 = randn()
    out = fake_score(
        interpolate(z0_hat, noise2, tau2), c, timestep=tau2, target_timestep=tau2, output_hidden_states_at=blocks
    )
    loss_fake = flow_matching_loss(out.sample, z0_hat, noise2)
    real_states = fake_score(
        interpolate(z0, noise2, tau2), c, timestep=tau2, target_timestep=tau2, output_hidden_states_at=blocks
    ).block_hidden_states
    logits_real, logits_fake = disc([torch.cat([r, f]) for r, f in zip(real_states, out.block_hidden_states)]).chunk(2)
    loss_d = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
    loss = loss_fake + loss_d
    loss.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return {"loss_generator": float(loss_g.detach()), "loss_fake_score": float(loss.detach())}


STEPS: dict[str, Callable[..., dict]] = {"teasr": teasr_step, "baseline": baseline_step}


# ------------------------------------------------------------------------------------------------------------ probing


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def rss_bytes() -> int:
    return _status_kib("VmRSS")


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RSSSampler:
    """Peak RSS seen by a thread that reads /proc/self/status about every millisecond (psutil-free, same number)."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s, self.peak, self.samples = interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1
            time.sleep(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@contextlib.contextmanager
def counting_forwards(networks: dict[str, nn.Module]) -> Iterator[dict[str, list[int]]]:
    """Rows (batch entries) of every transformer call, per network."""
    calls: dict[str, list[int]] = {name: [] for name in networks}
    handles = []
    for name, net in networks.items():

        def hook(module: nn.Module, hook_args: tuple, kwargs: dict, name: str = name) -> None:
            hidden = hook_args[0] if hook_args else kwargs["hidden_states"]
            calls[name].append(int(hidden.shape[0]))

        handles.append(net.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def param_stats(parts: dict) -> dict[str, int]:
    modules = [*parts["networks"].values(), parts["heads"]]
    unique = {id(p): p for m in modules for p in m.parameters()}
    return {
        "trainable_params": sum(p.numel() for p in unique.values() if p.requires_grad),
        "total_params_in_memory": sum(p.numel() for p in unique.values()),
        "param_bytes": sum(p.numel() * p.element_size() for p in unique.values()),
    }


def all_tensors(parts: dict, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Every tensor that exists before the step: weights, buffers, optimiser states, the batch."""
    tensors = list(batch)
    for module in [*parts["networks"].values(), parts["heads"]]:
        tensors += list(module.parameters()) + list(module.buffers())
        for sub in module.modules():  # QwenEmbedRope keeps its frequency tables as plain attributes
            tensors += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
    for optimizer in parts["optimizers"]:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def autocast(args: argparse.Namespace, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = DTYPES[args.dtype]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def make_batch(args: argparse.Namespace, device: torch.device, resolution: int, batch: int) -> tuple:
    shape = (batch, args.channels, resolution, resolution)
    gen = torch.Generator().manual_seed(args.seed)
    return tuple(torch.randn(shape, generator=gen).to(device) for _ in range(2))


def run_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measured step of `method` in this (fresh) process."""
    from pipeline_teasr.distillation import DEFAULT_LORA_LAYERS

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    step = STEPS[method]

    # Warm-up on a 1-block model at one patch: loads every kernel and code page, creates thread pools, so the floor
    # below already holds them and the measured step's delta is tensors only.
    parts = build(method, args, device, num_layers=1)
    z0, c = make_batch(args, device, args.patch_size * 2, 1)
    with autocast(args, device):
        step(parts, z0, c, args, torch.Generator(device).manual_seed(args.seed))
    del parts, z0, c
    trim()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()

    z0, c = make_batch(args, device, args.resolution, args.batch_size)
    trim()
    floor = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    parts = build(method, args, device)
    rng = torch.Generator(device).manual_seed(args.seed + 1)
    trim()
    before = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    counter = None
    if not cuda and not args.no_tensor_count:
        counter = LiveTensorBytes()
        for tensor in all_tensors(parts, (z0, c)):
            counter.track(tensor)
        counter.reset_peak()
    tensors_before = counter.current if counter is not None else None

    result: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    hwm = False if cuda else reset_hwm()
    with (
        counting_forwards(parts["networks"]) as calls,
        RSSSampler() if not cuda else contextlib.nullcontext() as sampler,
        counter if counter is not None else contextlib.nullcontext(),
        autocast(args, device),
    ):
        started = time.perf_counter()
        losses = step(parts, z0, c, args, rng)
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        result["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        result["peak_source"] = "torch.cuda.max_memory_allocated"
    else:
        sampled = sampler.peak
        peak = max(_status_kib("VmHWM"), sampled) if hwm else sampled
        result["peak_source"] = "VmHWM after clear_refs (kernel peak RSS)" if hwm else "1 ms RSS sampler"
        result["sampled_peak_bytes"] = sampled
        result["sampler_samples"] = sampler.samples
        if counter is not None:
            result["live_tensor_peak_bytes"] = counter.peak
            result["live_tensor_before_step_bytes"] = tensors_before
    rows = sum(sum(v) for v in calls.values())
    result.update(
        {
            "method": method,
            "critic_blocks": list(parts["blocks"]),
            "lora_targets": list(DEFAULT_LORA_LAYERS),
            "peak_bytes": int(peak),
            "floor_bytes": int(floor),
            "before_step_bytes": int(before),
            "delta_bytes": int(peak - floor),
            "step_delta_bytes": int(peak - before),
            "forward_passes_per_step": rows / args.batch_size,
            "network_calls_per_step": sum(len(v) for v in calls.values()),
            "calls": calls,
            "networks_in_memory": len(parts["networks"]),
            "step_s": round(elapsed, 3),
            "tensor_counted": counter is not None,
            "losses": {k: round(v, 6) for k, v in losses.items()},
            **param_stats(parts),
        }
    )
    return result


# ------------------------------------------------------------------------------------------------------------- parent


def child_command(method: str, argv: list[str]) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *argv, "--child", method]


def spawn(methods: tuple[str, ...], argv: list[str], parallel: bool) -> list[dict[str, Any]]:
    """One fresh process per method (all at once with `parallel`); each prints its measurement as JSON."""
    env = {**os.environ, **CHILD_ENV}

    def start(method: str) -> subprocess.Popen:
        return subprocess.Popen(
            child_command(method, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    def finish(method: str, process: subprocess.Popen) -> dict[str, Any]:
        stdout, stderr = process.communicate()
        lines = stdout.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"{method} measurement failed (exit {process.returncode}):\n{stderr[-4000:]}")
        return json.loads(lines[-1])

    if parallel:
        processes = [start(m) for m in methods]
        return [finish(m, p) for m, p in zip(methods, processes)]
    return [finish(m, start(m)) for m in methods]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> int:
        return int(statistics.median(r[key] for r in runs))

    first = runs[0]
    summary: dict[str, Any] = {
        "peak_bytes": median("peak_bytes"),
        "delta_bytes": median("delta_bytes"),
        "step_delta_bytes": median("step_delta_bytes"),
        "peak_mib": round(median("peak_bytes") / MIB, 1),
        "delta_mib": round(median("delta_bytes") / MIB, 1),
        "delta_bytes_runs": [r["delta_bytes"] for r in runs],
        "forward_passes_per_step": first["forward_passes_per_step"],
        "network_calls_per_step": first["network_calls_per_step"],
        "networks_in_memory": first["networks_in_memory"],
        "trainable_params": first["trainable_params"],
        "total_params_in_memory": first["total_params_in_memory"],
        "param_bytes": first["param_bytes"],
        "peak_source": first["peak_source"],
        # Wall time of the step, from the runs without the (slow) live-tensor counter when there are any.
        "step_s": round(
            statistics.median(r["step_s"] for r in ([r for r in runs if not r["tensor_counted"]] or runs)), 3
        ),
        "losses": first["losses"],
        "critic_blocks": first["critic_blocks"],
        "lora_targets": first["lora_targets"],
    }
    if "sampled_peak_bytes" in first:
        summary["sampled_peak_bytes"] = median("sampled_peak_bytes")
    if "live_tensor_peak_bytes" in first:  # first repetition only
        summary["live_tensor_peak_bytes"] = first["live_tensor_peak_bytes"]
        summary["live_tensor_peak_mib"] = round(first["live_tensor_peak_bytes"] / MIB, 1)
    if "max_memory_reserved_bytes" in first:
        summary["max_memory_reserved_bytes"] = median("max_memory_reserved_bytes")
    return summary


def assumptions(args: argparse.Namespace, blocks: list[int], lora_targets: list[str]) -> list[str]:
    tokens = (args.resolution // args.patch_size) ** 2
    trained = (
        "full fine-tuning (fp32 weights, grads, AdamW states)"
        if args.full
        else (
            f"peft LoRA rank {args.lora_rank} (alpha = rank, fp32) on {', '.join(lora_targets)}, frozen base in "
            f"{args.dtype}"
        )
    )
    cpu = torch.device(args.device).type == "cpu"
    checkpointing = "on" if args.gradient_checkpointing else "off"
    amp = args.dtype if args.dtype != "float32" else "off"
    return [
        f"same transformer config, batch {args.batch_size} and input {args.resolution}x{args.resolution}x"
        f"{args.channels} for both ({tokens} noisy + {tokens} LQ tokens + 1 learned null-prompt token); random "
        "weights and inputs (values do not change memory)",
        f"trained transformers: {trained}; torch AdamW (default settings), its states created before the measured "
        f"step (steady state, not a first step); gradient checkpointing {checkpointing}; autocast {amp}",
        "TEASR: pipeline_teasr.distillation.self_adversarial_losses with DistillationConfig(lambda_consistency="
        f"{args.lambda_consistency}) and CriticHeads on blocks {blocks}, flow rows backpropagated before the "
        "generator rows run (as run_training does), one AdamW step; "
        "one transformer in memory",
        "baseline (this script only, DMD2 style): generator = the same transformer (same LoRA/full setting), frozen "
        "teacher copy (in --dtype), trainable fake-score copy (same LoRA/full setting), discriminator = CriticHeads "
        f"(LayerNorm + Linear(dim, 1) per token) on the fake score's states of blocks {blocks} "
        "(DMD2's discriminator also sits on the fake-score network; this is its cheapest head); generator step "
        "(DMD gradient + 0.01 * non-saturating GAN term, backward, AdamW) then fake-score step (flow-matching loss on "
        "generated samples + logistic D loss on real/fake, D real pass separate from the fake pass, backward, AdamW); "
        "three transformers in memory (no shared-base multi-adapter trick)",
        "forward_passes_per_step: transformer rows processed / batch; heads are not counted",
        "each method and repetition in a fresh subprocess; medians over repetitions; a warm-up step of the same "
        "method on a 1-block model runs first so kernels and code pages are resident before the floor",
        "delta_bytes = peak - floor, floor measured after imports, warm-up and batch creation but before the "
        "method's networks are built: it counts every network's weights, trained states, activations and grads; "
        "step_delta_bytes = peak - memory right before the step (networks and optimiser states already resident); "
        "ratio = teasr delta_bytes / baseline delta_bytes",
        (
            "CPU: peak = kernel peak RSS (VmHWM reset via /proc/self/clear_refs right before the step), children run "
            f"with {' '.join(f'{k}={v}' for k, v in CHILD_ENV.items())} so freed blocks return to the OS; "
            "cross-checks: a 1 ms RSS sampling thread, and live_tensor_peak_bytes, the peak of live tensor storage "
            "bytes counted at the dispatcher (no allocator overhead; first repetition only, its mode slows the step)"
            if cpu
            else "CUDA: peak = torch.cuda.max_memory_allocated after reset_peak_memory_stats (includes every "
            "resident tensor); floor = memory_allocated before the networks are built"
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(args.child, args)), flush=True)
        return
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for index in range(args.repeats):  # interleaved, so slow drifts of the machine hit both methods alike
        child_argv = argv if index == 0 else [*argv, "--no_tensor_count"]
        for method, run in zip(METHODS, spawn(METHODS, child_argv, args.parallel)):
            runs[method].append(run)
    summary = {m: summarize(runs[m]) for m in METHODS}
    teasr, baseline = summary["teasr"], summary["baseline"]
    result: dict[str, Any] = {
        "benchmark": "train_memory",
        "config": {
            **transformer_config(args),
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "training": "full" if args.full else f"lora-r{args.lora_rank}",
            "dtype": args.dtype,
            "gradient_checkpointing": args.gradient_checkpointing,
            "critic_blocks": teasr["critic_blocks"],
            "lambda_consistency": args.lambda_consistency,
            "repeats": args.repeats,
            "tiny": args.tiny,
        },
        "device": args.device,
        "machine": machine_info(args.device),
        "teasr": teasr,
        "baseline": baseline,
        "ratio": round(teasr["delta_bytes"] / baseline["delta_bytes"], 3),
        "ratio_step_delta": round(teasr["step_delta_bytes"] / max(1, baseline["step_delta_bytes"]), 3),
        "ratio_peak": round(teasr["peak_bytes"] / baseline["peak_bytes"], 3),
        "goal": "ratio <= 0.5 (reported, not asserted)",
        "passes": {"teasr": TEASR_PASSES, "baseline": BASELINE_PASSES},
        "assumptions": assumptions(args, teasr["critic_blocks"], teasr["lora_targets"]),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if "live_tensor_peak_bytes" in teasr:
        result["ratio_live_tensors"] = round(teasr["live_tensor_peak_bytes"] / baseline["live_tensor_peak_bytes"], 3)
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
