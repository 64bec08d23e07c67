# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Inference benchmark: pipeline overhead over the bare transformer, any-step scaling, tiled throughput and memory.

    python benchmarks/latency.py                 # embedded default model, else a small random-init config
    python benchmarks/latency.py --tiny          # CI: a tiny config, seconds
    python benchmarks/latency.py --model DIR --device cuda --sizes 1024,2048,4096

1. Per-image latency of `TEASRPipeline.__call__` (PIL in, PIL out) at 1, 2, 4, 8 steps, and of the bare transformer
   calls that this very call makes (recorded with a forward pre-hook during the warm-up call, then replayed: same
   latent shapes, same tiles, same batches, same timesteps), timed alternately in the same process.
   `overhead_ratio` = pipeline / bare at 1 step; `step_scaling[N]` = pipeline latency(N) / latency(1).
2. Tiled large-image throughput (output megapixels per second) and peak RSS at growing output sizes, each size in a
   fresh subprocess so that one size's peak cannot hide another's.

Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    MIB,
    PeakRSSSampler,
    device_name,
    emit,
    machine_info,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
    random_photo,
    ru_maxrss_bytes,
    summarize,
    synchronize,
)

# Without an embedded model: a random-init `SMALL_PIXEL_CONFIG` (the brief's measured small model, 3.67M parameters),
# trained on 64x64 crops and therefore run on 64-pixel tiles.
SMALL_TILE = 64
# The test-suite's tiny config: CI only, everything is overhead at this size.
TINY_CONFIG: dict[str, Any] = dict(
    patch_size=2,
    in_channels=12,
    out_channels=3,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=16,
    axes_dims_rope=(4, 6, 6),
)
TINY_TILE = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="pipeline folder or Hub id (default: embedded model, else random)"
    )
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--tiny", action="store_true", help="tiny random config and sizes (CI, a few seconds)")
    parser.add_argument(
        "--num-layers",
        type=positive_int,
        default=None,
        help="override the depth of the random config (Python overhead grows "
        "with the module count: 60 = Qwen-Image depth)",
    )
    parser.add_argument(
        "--steps", type=positive_int_list, default="1,2,4,8", help="step counts for the latency / scaling part"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=None, help="timed repeats per step count (default 5, tiny 2)"
    )
    parser.add_argument(
        "--latency-size", type=positive_int, default=None, help="output side in pixels of the latency image"
    )
    parser.add_argument(
        "--scale", type=positive_float, default=4.0, help="upscale factor (input side = output side / scale)"
    )
    parser.add_argument(
        "--sizes",
        type=positive_int_list,
        default=None,
        help="output sides for the tiled sweep (default 128,256,512,1024)",
    )
    parser.add_argument(
        "--tile", type=nonnegative_int, default=None, help="tile size in output pixels (default: the model's)"
    )
    parser.add_argument(
        "--tile-overlap",
        type=nonnegative_int,
        default=None,
        help="tile overlap in output pixels (default: the model's)",
    )
    parser.add_argument("--tile-batch-size", type=positive_int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice; --tiny: 1)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one 1-step pipeline call, top 25 to stderr")
    parser.add_argument(
        "--rss-mode",
        default=None,
        choices=["subprocess", "thread"],
        help="tiled sweep: each size in a fresh process (default) or all in this one (--tiny default: thread)",
    )
    parser.add_argument("--skip-tiled", action="store_true", help="only the latency / scaling part")
    parser.add_argument("--child-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny and args.model is not None:
        parser.error("--tiny benchmarks a random tiny model; leave out --model, or --tiny")
    if args.threads is None and args.tiny:
        args.threads = 1
    if args.rss_mode is None:
        args.rss_mode = "thread" if args.tiny else "subprocess"
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 5
    if args.latency_size is None:
        args.latency_size = 64 if args.tiny else 128
    if args.sizes is None:
        args.sizes = [64, 128] if args.tiny else [128, 256, 512, 1024]
    return args


def build_pipeline(args: argparse.Namespace):
    """The pipeline to benchmark and a description of where it came from."""
    from pipeline_teasr import TEASRPipeline, TEASRTransformer2DModel
    from pipeline_teasr.cli import load_pipeline, resolve_device_and_dtype
    from pipeline_teasr.transformer_teasr import SMALL_PIXEL_CONFIG

    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    if args.tiny:
        source, config, tile = "random-init tiny config (--tiny)", TINY_CONFIG, TINY_TILE
    else:
        model = args.model
        if model is None:
            from pipeline_teasr.hub import default_model_path

            try:
                model = default_model_path()
            except ValueError:
                model = None
        if model is not None:
            pipe = load_pipeline(model, args.device, args.dtype)
            return pipe, {"source": str(model), "random_init": False}
        source = "random-init small config: no embedded default model exists yet (model_card/ holds no pipeline)"
        config, tile = SMALL_PIXEL_CONFIG, SMALL_TILE

    from diffusers import FlowMapEulerDiscreteScheduler

    if args.num_layers is not None:
        config = {**config, "num_layers": args.num_layers}
    torch.manual_seed(args.seed)
    transformer = TEASRTransformer2DModel(**config).eval()
    pipe = TEASRPipeline(transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler(), default_tile_size=tile)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device, dtype)
    return pipe, {"source": source, "random_init": True, "config": config, "default_tile_size": tile}


def model_params(pipe) -> int:
    return sum(p.numel() for p in pipe.transformer.parameters())


class CallRecorder:
    """Records the keyword arguments of every transformer call (tensors cloned) so they can be replayed bare."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict[str, Any]] = []
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if args:
            raise RuntimeError("the pipeline is expected to call the transformer with keyword arguments only")
        self.calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    def remove(self) -> None:
        self._handle.remove()


def replay(transformer: torch.nn.Module, calls: list[dict[str, Any]]) -> None:
    with torch.no_grad():
        for kwargs in calls:
            transformer(**kwargs)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CPU time is less sensitive to other processes' load."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def upscale_once(pipe, image, args: argparse.Namespace, steps: int = 1):
    """One pipeline call as the benchmark makes it: its scale, tiling (the model's unless given), batch and seed."""
    tile, overlap = pipe.resolve_tiling(args.tile, args.tile_overlap, steps)
    return pipe(
        image,
        upscale=args.scale,
        num_inference_steps=steps,
        tile_size=tile,
        tile_overlap=overlap,
        tile_batch_size=args.tile_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )


def latency_part(pipe, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    steps = args.steps
    lq_side = max(1, round(args.latency_size / args.scale))
    image = random_photo(lq_side, lq_side, seed=args.seed)

    recorded: dict[int, list[dict[str, Any]]] = {}
    nfe: dict[int, int] = {}
    for n in steps:
        recorder = CallRecorder(pipe.transformer)
        result = upscale_once(pipe, image, args, n)  # warm-up, and the record of the transformer calls it makes
        recorder.remove()
        if result.nfe != len(recorder.calls):
            raise RuntimeError(f"pipeline reported nfe={result.nfe} but made {len(recorder.calls)} transformer calls")
        recorded[n], nfe[n] = recorder.calls, result.nfe
        replay(pipe.transformer, recorder.calls)  # warm-up

    # Round robin: every repeat times every step count, pipeline and bare back to back, so that a change in the load
    # from other processes hits all of them alike.
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for n in steps:
            samples.setdefault((n, "pipe"), []).append(timed(lambda n=n: upscale_once(pipe, image, args, n), device))
            samples.setdefault((n, "bare"), []).append(
                timed(lambda n=n: replay(pipe.transformer, recorded[n]), device)
            )

    per_steps: dict[str, Any] = {}
    medians: dict[tuple[int, str, int], float] = {}
    for n in steps:
        row: dict[str, Any] = {"nfe": nfe[n], "tile_overlap": pipe.resolve_tiling(args.tile, args.tile_overlap, n)[1]}
        for clock, index in (("wall", 0), ("cpu", 1)):
            pipe_times = [s[index] for s in samples[(n, "pipe")]]
            bare_times = [s[index] for s in samples[(n, "bare")]]
            pipe_stats, bare_stats = summarize(pipe_times), summarize(bare_times)
            medians[(n, "pipe", index)], medians[(n, "bare", index)] = pipe_stats["median"], bare_stats["median"]
            row[f"pipeline_{clock}_s"] = pipe_stats
            row[f"bare_transformer_{clock}_s"] = bare_stats
            row[f"overhead_ratio_{clock}"] = round(pipe_stats["median"] / bare_stats["median"], 4)
            row[f"paired_ratio_{clock}"] = summarize([p / b for p, b in zip(pipe_times, bare_times)], digits=4)
        row["transformer_input_shapes"] = [
            list(s) for s in sorted({tuple(c["hidden_states"].shape) for c in recorded[n]})
        ]
        per_steps[str(n)] = row
    first = steps[0]
    return {
        "image": {
            "input": [lq_side, lq_side],
            "output": [round(lq_side * args.scale)] * 2,
            "tile_size": pipe.resolve_tiling(args.tile, args.tile_overlap, first)[0],
        },
        "per_steps": per_steps,
        "overhead_ratio": per_steps[str(first)]["overhead_ratio_wall"],
        "overhead_ratio_cpu_time": per_steps[str(first)]["overhead_ratio_cpu"],
        "overhead_ratio_paired": per_steps[str(first)]["paired_ratio_wall"]["median"],
        "overhead_goal": 1.05,
        "step_scaling": {str(n): round(medians[(n, "pipe", 0)] / medians[(first, "pipe", 0)], 3) for n in steps},
        "step_scaling_cpu_time": {
            str(n): round(medians[(n, "pipe", 1)] / medians[(first, "pipe", 1)], 3) for n in steps
        },
        "bare_step_scaling": {str(n): round(medians[(n, "bare", 0)] / medians[(first, "bare", 0)], 3) for n in steps},
    }


def profile_one(pipe, args: argparse.Namespace) -> None:
    lq_side = max(1, round(args.latency_size / args.scale))
    image = random_photo(lq_side, lq_side, seed=args.seed)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        upscale_once(pipe, image, args)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
    print(stream.getvalue(), file=sys.stderr)


def tiled_run(pipe, args: argparse.Namespace, device: torch.device, size: int) -> dict[str, Any]:
    """Time one 1-step call at output side `size`, sampling RSS meanwhile (after a warm-up call on one tile)."""
    tile, overlap = pipe.resolve_tiling(args.tile, args.tile_overlap, 1)
    lq_side = max(1, round(size / args.scale))
    warm = max(1, round((tile or 64) / args.scale))
    upscale_once(pipe, random_photo(warm, warm), args)
    image = random_photo(lq_side, lq_side, seed=args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSSSampler() as rss:
        seconds, cpu_seconds = timed(lambda: upscale_once(pipe, image, args), device)
    out_side = round(lq_side * args.scale)
    result = {
        "output_side": out_side,
        "tile_size": tile,
        "tile_overlap": overlap,
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu_seconds, 4),
        "output_mp_per_s": round(out_side * out_side / 1e6 / seconds, 4),
        "rss_before_mib": round(rss.start / MIB, 1),
        "rss_peak_mib": round(rss.peak / MIB, 1),
        "rss_increase_mib": round((rss.peak - rss.start) / MIB, 1),
        "ru_maxrss_mib": round(ru_maxrss_bytes() / MIB, 1),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
    return result


def tiled_part(pipe, args: argparse.Namespace, argv: list[str], device: torch.device) -> dict[str, Any]:
    rows = []
    for size in args.sizes:
        if args.rss_mode == "thread":
            rows.append(tiled_run(pipe, args, device, size))
            continue
        command = [sys.executable, os.path.abspath(__file__), *argv, "--child-size", str(size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tiled run at {size}px failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    peaks = [r["rss_peak_mib"] for r in rows]
    where = "each size in a fresh process" if args.rss_mode == "subprocess" else "all sizes in one process"
    return {
        "runs": rows,
        "rss_mode": args.rss_mode,
        "rss_peak_growth": round(max(peaks) / min(peaks), 3),
        "note": f"1 step per size, {where}, after a warm-up call; RSS sampled every 2 ms by a thread",
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pipeline_teasr.cli import CLIError

    try:
        pipe, model_info = build_pipeline(args)
    except (CLIError, ValueError, OSError) as error:  # a bad --model or --dtype for the device
        print(f"latency.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    device = pipe.transformer.device
    if args.child_size is not None:
        emit(tiled_run(pipe, args, device, args.child_size))
        return
    model_info["params"] = model_params(pipe)
    model_info["dtype"] = str(pipe.transformer.dtype).replace("torch.", "")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "latency",
        "model": model_info,
        "device": str(device),
        "machine": machine_info(device),
        "repeats": args.repeats,
    }
    result.update(latency_part(pipe, args, device))
    if args.profile:
        profile_one(pipe, args)
    if not args.skip_tiled:
        result["tiled"] = tiled_part(pipe, args, argv, device)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    emit(result)


if __name__ == "__main__":
    main()
