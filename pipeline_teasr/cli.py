# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""`teasr` command line: `teasr upscale INPUT... -o OUT`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the embedded teasr-mini)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=1, help="number of sampling steps (network calls), >= 1")
    parser.add_argument("--scale", type=float, default=4.0, help="output size / input size (any positive number)")
    parser.add_argument(
        "--start-timestep", type=float, default=None, help="start level T in (0, 1] (default: the model's)"
    )
    parser.add_argument("--tile", type=int, default=None, help="tile size in output pixels (0: no tiling)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in output pixels")
    parser.add_argument("--color-fix", default=None, choices=["adain", "wavelet"], help="colour correction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-output-pixels", type=int, default=None, help="refuse larger outputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teasr", description="TEASR any-step diffusion super-resolution.")
    commands = parser.add_subparsers(dest="command", required=True)
    upscale = commands.add_parser("upscale", help="upscale images or a folder of images")
    upscale.add_argument("inputs", nargs="+", help="image files or one folder")
    upscale.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several)")
    add_upscale_arguments(upscale)
    add_model_arguments(upscale)
    return parser


def resolve_device_and_dtype(device: str | None, dtype: str):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise CLIError(f"--device {device!r} is not a valid device: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but no CUDA GPU is available")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if resolved.type == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    return resolved, torch_dtype


def load_pipeline(model: str | None, device: str | None, dtype: str):
    """Load the pipeline the CLI, the Space and the benchmarks share: `model` or the embedded default."""
    from .hub import default_model_path
    from .pipeline_teasr import TEASRPipeline

    torch_device, torch_dtype = resolve_device_and_dtype(device, dtype)
    path = model or default_model_path()
    try:
        pipe = TEASRPipeline.from_pretrained(path, torch_dtype=torch_dtype)
    except ValueError as error:
        raise CLIError(str(error)) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device)


def collect_jobs(inputs: Sequence[str], output: str) -> list[tuple[Path, Path]]:
    """Pair each input file with its output path: one input -> `output` is a file, else a folder."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        folder = Path(inputs[0])
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
        return [(path, Path(output) / f"{path.stem}.png") for path in files]
    for name in inputs:
        if Path(name).is_dir():
            raise CLIError(f"{name} is a folder: pass one folder alone, or image files")
    if len(inputs) == 1:
        target = Path(output)
        if target.is_dir():
            target = target / f"{Path(inputs[0]).stem}.png"
        return [(Path(inputs[0]), target)]
    stems = [Path(name).stem for name in inputs]
    if len(set(stems)) != len(stems):
        raise CLIError("several inputs share a file name stem; their outputs would overwrite each other")
    return [(Path(name), Path(output) / f"{Path(name).stem}.png") for name in inputs]


def save_atomically(image, path: Path) -> None:
    """Write `image` to `path` through a temporary file in the same folder, so no partial file is ever left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower() or ".png"
    if suffix in (".jpg", ".jpeg") and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    elif image.mode == "CMYK" and suffix not in (".tif", ".tiff"):
        image = image.convert("RGB")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(handle)
    try:
        image.save(temporary)
        os.replace(temporary, path)
    except (OSError, ValueError, KeyError) as error:
        raise CLIError(f"cannot write {path}: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def run_upscale(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .image_processing_teasr import load_image
    from .pipeline_teasr import DEFAULT_MAX_OUTPUT_PIXELS

    jobs = collect_jobs(args.inputs, args.output)
    pipe = load_pipeline(args.model, args.device, args.dtype)
    max_pixels = args.max_output_pixels or DEFAULT_MAX_OUTPUT_PIXELS
    failures: list[tuple[Path, str]] = []
    progress = tqdm(jobs, desc="upscaling", unit="img", disable=len(jobs) == 1 or not sys.stderr.isatty())
    for source, target in progress:
        started = time.perf_counter()
        try:
            image = load_image(source)
            result = pipe(
                image,
                upscale=args.scale,
                num_inference_steps=args.steps,
                start_timestep=args.start_timestep,
                tile_size=args.tile,
                tile_overlap=args.tile_overlap,
                color_fix=args.color_fix,
                max_output_pixels=max_pixels,
                generator=torch.Generator().manual_seed(args.seed),
            )
            save_atomically(result.images[0], target)
        except (ValueError, CLIError) as error:
            if len(jobs) == 1:
                raise CLIError(str(error)) from None
            failures.append((source, str(error)))
            continue
        seconds = time.perf_counter() - started
        print(
            f"{source} -> {target} ({result.images[0].width}x{result.images[0].height}, {result.nfe} NFE, "
            f"{seconds:.2f}s)"
        )
    if failures:
        print(f"{len(failures)} of {len(jobs)} inputs failed:", file=sys.stderr)
        for source, reason in failures:
            print(f"  {source}: {reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "upscale":
            return run_upscale(args)
    except CLIError as error:
        print(f"teasr: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("teasr: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
