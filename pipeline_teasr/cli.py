# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""`teasr` command line: `teasr upscale INPUT... -o OUT`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import first_line
from .files import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")  # the output formats that hold 16-bit grayscale
EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1
CPU_FLOAT16 = "float16 on the CPU gives the same image at several times float32's time (5.5x on the README example)"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the embedded teasr-mini)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on a GPU that computes it natively (Ampere or newer), else float32",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Where sampling starts and how it tiles: shared by `upscale` and `eval` (defaults: the model's)."""
    parser.add_argument(
        "--start-timestep", type=float, default=None, help="start level T in (0, 1] (default: the model's)"
    )
    parser.add_argument(
        "--start",
        default=None,
        choices=["noise", "lq"],
        help="start from noise or the LQ image (default: the model's)",
    )
    parser.add_argument(
        "--tile", type=int, default=None, help="tile size in output pixels (0: no tiling; default: the model's)"
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        help="tile overlap in output pixels (default: the model's, else 1/8 of the tile at 1 step, 1/4 with more)",
    )


def add_upscale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=1, help="number of sampling steps (network calls), >= 1")
    parser.add_argument("--scale", type=float, default=4.0, help="output size / input size (any positive number)")
    add_sampling_arguments(parser)
    parser.add_argument("--color-fix", default=None, choices=["adain", "wavelet"], help="colour correction")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the noise (a noise start), default 0")
    parser.add_argument(
        "--max-output-pixels", type=positive_int, default=None, help="refuse larger outputs (default: 64 MP)"
    )
    parser.add_argument(
        "--quality", type=quality_value, default=95, metavar="1-100", help="JPEG / WebP quality of the outputs (95)"
    )


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def seed_value(text: str) -> int:
    """A seed torch accepts: 0 to 2**64 - 1 (larger ones failed with "Overflow when unpacking long long")."""
    value = _integer(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1, got {text}")
    return value


def quality_value(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teasr", description="TEASR any-step diffusion super-resolution.")
    commands = parser.add_subparsers(dest="command", required=True)
    upscale = commands.add_parser("upscale", help="upscale images or a folder of images")
    upscale.add_argument("inputs", nargs="+", help="image files or one folder")
    upscale.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several)")
    add_upscale_arguments(upscale)
    add_model_arguments(upscale)
    add_eval_parser(commands)
    add_export_parser(commands)
    return parser


DEFAULT_EVAL_STEPS = (1, 2, 4)


def add_eval_parser(commands) -> None:
    from .evaluation import BASELINES, DEGRADATIONS
    from .metrics import LEARNED_METRICS

    parser = commands.add_parser(
        "eval",
        help="score a model, baselines or a prediction folder against ground-truth images",
        description=(
            "Paired folders: --lr DIR --gt DIR. HR-only: --gt DIR --degradation bicubic|light|realesrgan --seed N. "
            "Existing predictions: --pred DIR --gt DIR --scale S. The model runs at --steps (default "
            f"{' '.join(map(str, DEFAULT_EVAL_STEPS))} when LR images exist, unless --pred or --no-model)."
        ),
    )
    parser.add_argument("--gt", required=True, help="folder of ground-truth (HR) images")
    parser.add_argument("--lr", default=None, help="folder of LR images, matched to --gt by file stem")
    parser.add_argument("--pred", default=None, help="folder of existing predictions to score")
    parser.add_argument("--degradation", default=None, choices=DEGRADATIONS, help="synthesise LR from --gt")
    parser.add_argument("--seed", type=seed_value, default=0, help="degradation and sampling seed")
    parser.add_argument("--scale", type=int, default=None, help="SR factor and border crop (inferred if paired)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="step counts to run the model at")
    parser.add_argument("--no-model", action="store_true", help="do not run a model (baselines / --pred only)")
    add_sampling_arguments(parser)
    parser.add_argument("--baseline", nargs="+", default=[], choices=list(BASELINES), help="PIL resize baselines")
    parser.add_argument(
        "--grid-period",
        type=int,
        default=None,
        metavar="PX",
        help="score the `grid` metric (token-grid pattern strength) at this period; default: the model's token "
        "period when a model runs; 0: off",
    )
    parser.add_argument(
        "--learned",
        nargs="*",
        default=list(LEARNED_METRICS),
        choices=list(LEARNED_METRICS),
        help="pyiqa metrics to try (default: all; `--learned` alone: none)",
    )
    parser.add_argument("--label", default=None, help="name of the --pred method in the table")
    parser.add_argument("--name", default=None, help="dataset name for the report (default: the --gt folder name)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--save-images", default=None, metavar="DIR", help="write predictions to DIR/<method>/")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the Markdown table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser)


def add_export_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="write a self-contained Hub model folder (weights, code, model card)",
        description="From a pipeline folder, or a base pipeline plus LoRA training output (fused or shipped next "
        "to it), write OUT with model_index.json, safetensors weights, the custom code and a README.md card.",
    )
    parser.add_argument("output", metavar="OUT", help="folder to create")
    parser.add_argument(
        "--model",
        default=None,
        help="pipeline folder (with --lora: its base; default: the base the LoRA's training_args.json names, else "
        "the embedded model)",
    )
    parser.add_argument("--lora", default=None, help="folder with pytorch_lora_weights.safetensors (or the file)")
    parser.add_argument("--fuse", action="store_true", help="merge the LoRA into the weights")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="LoRA scale when fusing")
    parser.add_argument("--card-json", nargs="+", default=[], metavar="JSON", help="`teasr eval` reports")
    parser.add_argument("--training-recipe", default=None, metavar="FILE", help="Markdown file for the card")
    parser.add_argument(
        "--card-image", nargs="+", default=[], metavar="IMAGE", help="PNG/JPEG figures for the card (into assets/)"
    )
    parser.add_argument("--model-name", default=None, help="card title (default: OUT's folder name)")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (card metadata)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an earlier export (with model_index.json) or empty",
    )
    parser.add_argument("--push", default=None, metavar="REPO_ID", help="upload OUT to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the pushed repo as private")


def resolve_device_and_dtype(device: str | None, dtype: str):
    import torch

    from .hardware import EMULATED_BFLOAT16, bfloat16_is_emulated

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise CLIError(f"--device {device!r} is not a valid device: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but no CUDA GPU is available")
    if resolved.type == "meta":
        raise CLIError("--device meta holds no data; pick cpu, cuda or mps")
    if resolved.type not in ("cpu", "cuda"):  # e.g. mps on a build or machine without it
        try:
            torch.empty(1, device=resolved)
        except (RuntimeError, AssertionError):
            raise CLIError(f"--device {device} is not available on this machine or torch build") from None
    if dtype == "auto":  # bfloat16 on GPUs that compute it natively (Ampere and newer), else float32
        torch_dtype = torch.bfloat16 if resolved.type == "cuda" and not bfloat16_is_emulated("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if torch_dtype == torch.bfloat16 and bfloat16_is_emulated(resolved.type):
        print(f"teasr: warning: {EMULATED_BFLOAT16}; use --dtype float32", file=sys.stderr)
    if torch_dtype == torch.float16 and resolved.type == "cpu":
        print(f"teasr: warning: {CPU_FLOAT16}; use --dtype float32", file=sys.stderr)
    return resolved, torch_dtype


def load_pipeline(model: str | None, device: str | None, dtype: str):
    """Load the pipeline the CLI, the Space and the benchmarks share: `model` or the embedded default."""
    import torch

    from .hub import default_model_path, shipped_lora_file
    from .pipeline_teasr import TEASRPipeline

    try:
        model = model or default_model_path()  # $TEASR_MODEL is checked like --model
    except ValueError as error:
        raise CLIError(str(error)) from None
    check_model_path(model)
    torch_device, torch_dtype = resolve_device_and_dtype(device, dtype)
    try:
        pipe = TEASRPipeline.from_pretrained(model, torch_dtype=torch_dtype)
    except ValueError as error:
        raise CLIError(str(error)) from None
    except OSError as error:
        if not Path(model).exists():
            raise CLIError(
                f"model {model!r} is not a local folder and could not be loaded from the Hugging Face Hub or its "
                "cache (offline, or no such repo): pass a folder with model_index.json or a repo id you can reach"
            ) from None
        raise CLIError(f"cannot load the model in {model}: {first_line(error)}") from None
    pipe.set_progress_bar_config(disable=True)
    lora_file = shipped_lora_file(model)  # an export with its LoRA shipped unfused, in a folder or a Hub repo
    if lora_file is not None:
        try:
            pipe.load_lora_weights(os.path.dirname(lora_file), weight_name=os.path.basename(lora_file))
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            raise CLIError(f"cannot load the LoRA shipped in {model}: {first_line(error)}") from None
    # diffusers' own multi-line warning says a float16 pipeline will fail on the CPU; it runs (slowly), as ours says.
    quiet = torch_dtype == torch.float16 and torch_device.type == "cpu"
    with _diffusers_errors_only() if quiet else contextlib.nullcontext():
        return pipe.to(torch_device)


@contextlib.contextmanager
def _diffusers_errors_only() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def check_model_path(model: str) -> None:
    """A local --model (or $TEASR_MODEL) that is missing or a file, reported as such rather than as a bad Hub id."""
    from .pipeline_teasr import looks_like_local_path

    path = Path(model).expanduser()
    if path.is_file():
        raise CLIError(f"--model {model} is a file; pass a pipeline folder (with model_index.json) or a Hub repo id")
    if not path.exists() and looks_like_local_path(model):
        raise CLIError(f"model folder not found: {model}")


def collect_jobs(inputs: Sequence[str], output: str) -> list[tuple[Path, Path]]:
    """Pair each input file with its output path: one input -> `output` is a file, else a folder. An output that
    would replace its own input is refused."""
    jobs = _pair_inputs_with_outputs(inputs, output)
    for source, target in jobs:
        if target.exists() and target.resolve() == source.resolve():
            raise CLIError(f"the output for {source} is the input itself; pass another -o so the photo is kept")
    for folder in sorted({target.parent for _, target in jobs}):
        check_writable_folder(folder)
    return jobs


def check_writable_folder(folder: Path) -> None:
    """Create `folder` if needed and write a probe file into it, so an output that cannot be written is reported
    before any upscaling rather than after each image."""
    blocking = next((parent for parent in (folder, *folder.parents) if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise CLIError(f"cannot write into {folder}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".teasr-write-check.")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise CLIError(f"cannot write into {folder}: {error.strerror or error}") from None


def check_output_path(path: Path, flag: str, is_folder: bool) -> None:
    """Refuse an output path that cannot be written (a file where a folder must be, or the reverse) up front,
    without creating anything: a command refused later leaves no empty folders behind."""
    if path.exists():
        if path.is_dir() != is_folder:
            wanted = "a folder" if is_folder else "a file name"
            raise CLIError(f"{flag}: {path} is {'a folder' if path.is_dir() else 'a file'}; {flag} takes {wanted}")
        if not os.access(path, os.W_OK):  # an existing file, stream or folder
            raise CLIError(f"{flag}: {path} is not writable")
        return
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise CLIError(f"{flag}: cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag}: cannot write {path}: {existing} is not writable")


def _pair_inputs_with_outputs(inputs: Sequence[str], output: str) -> list[tuple[Path, Path]]:
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        folder = Path(inputs[0])
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
        _refuse_shared_stems(files)
        return [(path, Path(output) / f"{path.stem}.png") for path in files]
    for name in inputs:
        if Path(name).is_dir():
            raise CLIError(f"{name} is a folder: pass one folder alone, or image files")
        if not Path(name).exists():
            raise CLIError(f"image file not found: {name}")
    if len(inputs) == 1:
        target = Path(output)
        if target.is_dir() or output.endswith(("/", os.sep)):  # "-o new_folder/" names a folder to create
            target = target / f"{Path(inputs[0]).stem}.png"
        check_output_suffix(target)
        return [(Path(inputs[0]), target)]
    _refuse_shared_stems([Path(name) for name in inputs])
    return [(Path(name), Path(output) / f"{Path(name).stem}.png") for name in inputs]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _refuse_shared_stems(paths: Sequence[Path]) -> None:
    """Outputs are named STEM.png: two inputs with one stem (photo.jpg, photo.png) would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise CLIError(
                f"{seen[path.stem]} and {path} share the file name stem {path.stem!r}, so their outputs "
                f"({path.stem}.png) would overwrite each other; rename one"
            )
        seen[path.stem] = path


def check_output_suffix(path: Path) -> None:
    """Refuse an output name Pillow cannot write before any work is done (no suffix means PNG)."""
    import PIL.Image

    suffix = path.suffix.lower()
    if suffix and PIL.Image.registered_extensions().get(suffix) not in PIL.Image.SAVE:
        raise CLIError(f"cannot write {path}: Pillow has no writer for {suffix!r} files; use .png, .jpg, .webp, .tif")


def save_atomically(image, path: Path, exif: bytes | None = None, quality: int = 95) -> None:
    """Write `image` (with `exif`, if given) to `path` through a temporary file in the same folder, so no partial
    file is ever left. JPEG and WebP are written at `quality`."""
    from .image_processing_teasr import convert_mode, to_8bit_gray

    suffix = path.suffix.lower() or ".png"
    if image.mode.startswith("I;16") and suffix not in SIXTEEN_BIT_SUFFIXES:
        image = to_8bit_gray(image)  # Pillow's own conversion clips 16-bit values at 255: a white image
    # CMYK is written only to TIFF; JPEG holds RGB and L.
    if (image.mode == "CMYK" and suffix not in (".tif", ".tiff")) or (
        suffix in (".jpg", ".jpeg") and image.mode not in ("RGB", "L")
    ):
        image = convert_mode(image, "RGB")
    # Passed explicitly: JPEG and PNG embed `info["icc_profile"]` on their own, WebP only when told.
    metadata = {"icc_profile": image.info["icc_profile"]} if image.info.get("icc_profile") else {}
    if exif:
        metadata["exif"] = exif
    if suffix in (".jpg", ".jpeg", ".webp"):
        metadata["quality"] = quality  # Pillow's default, 75, blurs away the detail an upscale adds
    try:
        with atomic_write(path, suffix=suffix) as temporary:
            image.save(temporary, **metadata)
    except (OSError, ValueError, KeyError) as error:
        raise CLIError(f"cannot write {path}: {error}") from None


def run_upscale(args: argparse.Namespace) -> int:
    jobs = collect_jobs(args.inputs, args.output)  # bad paths fail here, before seconds of importing torch

    if sys.stderr.isatty():
        print(f"teasr: loading {args.model or 'the embedded teasr-mini'} ...", file=sys.stderr, flush=True)
    import torch
    from tqdm.auto import tqdm

    from .image_processing_teasr import load_image, resized_exif
    from .pipeline_teasr import DEFAULT_MAX_OUTPUT_PIXELS

    pipe = load_pipeline(args.model, args.device, args.dtype)
    if len(jobs) == 1 and sys.stderr.isatty():  # one large photo can take minutes: show its tiles going by
        pipe.set_progress_bar_config(disable=False, leave=False, desc="upscaling", unit="tiles batch")
    max_pixels = args.max_output_pixels or DEFAULT_MAX_OUTPUT_PIXELS
    check_upscale_options(pipe, args, max_pixels)
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
                start=args.start,
                tile_size=args.tile,
                tile_overlap=args.tile_overlap,
                color_fix=args.color_fix,
                max_output_pixels=max_pixels,
                generator=torch.Generator().manual_seed(args.seed),
            )
            exif = resized_exif(image.info.get("exif"), result.images[0].size)
            save_atomically(result.images[0], target, exif, quality=args.quality)
        except (ValueError, CLIError) as error:
            if len(jobs) == 1:
                raise CLIError(in_cli_terms(str(error))) from None
            failures.append((source, in_cli_terms(str(error))))
            continue
        seconds = time.perf_counter() - started
        print(
            f"{source} -> {target} ({result.images[0].width}x{result.images[0].height}, "
            f"{_count(args.steps, 'step')}, {_count(result.nfe, 'network call')} over all tiles, {seconds:.2f}s)"
        )
    if failures:
        print(f"{len(failures)} of {len(jobs)} inputs failed:", file=sys.stderr)
        for source, reason in failures:
            print(f"  {source}: {reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


# The pipeline's argument names, as the user typed them here.
CLI_FLAGS = {
    "num_inference_steps": "--steps",
    "upscale": "--scale",
    "start_timestep": "--start-timestep",
    "start": "--start",
    "tile_size": "--tile",
    "tile_overlap": "--tile-overlap",
    "max_output_pixels": "--max-output-pixels",
    "color_fix": "--color-fix",
}


def in_cli_terms(message: str) -> str:
    """A pipeline error with its argument names (`num_inference_steps`) replaced by the CLI's flags (--steps)."""
    for name, flag in CLI_FLAGS.items():
        message = message.replace(f"`{name}`", flag)
    return message


def check_upscale_options(pipe, args: argparse.Namespace, max_pixels: int) -> None:
    """The options' own errors (not an image's), once before any photo is read, through the pipeline's checks."""
    import numpy as np

    try:
        tile_size, tile_overlap = pipe.resolve_tiling(args.tile, args.tile_overlap, args.steps)
        start, start_timestep = pipe.resolve_start(args.start, args.start_timestep)
        pipe.check_inputs(
            image=np.zeros((1, 1, 3), dtype=np.uint8),  # a stand-in: only the options are checked here
            upscale=args.scale,
            num_inference_steps=args.steps,
            start_timestep=start_timestep,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            output_type="pil",
            color_fix=args.color_fix,
            prompt=None,
            prompt_embeds=None,
            max_output_pixels=max_pixels,
            callback_on_step_end_tensor_inputs=None,
            start=start,
        )
    except ValueError as error:
        raise CLIError(in_cli_terms(str(error))) from None


def run_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import shlex

    from .evaluation import EvaluationError, collect_images, evaluate, render_markdown, write_json

    if args.steps is not None and args.no_model:
        raise CLIError("--steps and --no-model contradict each other")
    has_lr = args.lr is not None or args.degradation is not None
    if args.lr is None and args.degradation is None and args.pred is None:
        raise CLIError("pass --lr DIR (paired folders), --degradation NAME (HR-only folders) or --pred DIR")
    steps = args.steps
    if steps is None:
        steps = list(DEFAULT_EVAL_STEPS) if has_lr and args.pred is None and not args.no_model else []
    # Output paths are checked before the model runs, so that a typo does not cost the evaluation's results.
    for flag, name, is_folder in (("--json", args.json, False), ("--markdown", args.markdown, False),
                                  ("--save-images", args.save_images, True)):  # fmt: skip
        if name is not None:
            check_output_path(Path(name), flag, is_folder)
    try:  # a missing or empty folder is reported before seconds of loading the model
        for folder, what in ((args.gt, "GT"), (args.lr, "LR"), (args.pred, "prediction")):
            if folder is not None:
                collect_images(folder, what)
    except EvaluationError as error:
        raise CLIError(str(error)) from None
    try:
        pipe = load_pipeline(args.model, args.device, args.dtype) if steps else None
    except ValueError as error:  # e.g. no default model
        raise CLIError(first_line(error)) from None
    # The loaded pipeline's device; resolving the flags again would repeat their warnings.
    device = pipe.device if pipe is not None else resolve_device_and_dtype(args.device, args.dtype)[0]
    try:
        report = evaluate(
            args.gt,
            lr_dir=args.lr,
            pred_dir=args.pred,
            degradation=args.degradation,
            seed=args.seed,
            scale=args.scale,
            pipeline=pipe,
            model=args.model or (None if pipe is None else pipe.config.get("_name_or_path")),
            steps=steps,
            start_timestep=args.start_timestep,
            start=args.start,
            tile_size=args.tile,
            tile_overlap=args.tile_overlap,
            baselines=args.baseline,
            grid_period=args.grid_period,
            pred_label=args.label,
            learned=args.learned,
            device=str(device),
            save_dir=args.save_images,
            limit=args.limit,
            dataset_name=args.name,
            command=shlex.join(["teasr", *argv]),
            progress=False if args.quiet else None,
        )
    except EvaluationError as error:
        raise CLIError(str(error)) from None
    markdown = render_markdown(report)
    try:
        if args.json is not None:
            write_json(report, args.json)
        if args.markdown is not None:
            Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
            Path(args.markdown).write_text(markdown, encoding="utf-8")
    except OSError as error:
        raise CLIError(f"cannot write the report: {error}") from None
    print(markdown, end="")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import ExportError, export_pipeline, find_lora_file, push_folder
    from .hub import default_model_path
    from .pipeline_teasr import lora_training_base

    if args.model is not None:
        check_model_path(args.model)
    try:
        recorded_base = lora_training_base(find_lora_file(args.lora).parent) if args.lora else None
        model = args.model or recorded_base or default_model_path()
        folder = export_pipeline(
            args.output,
            model,
            lora=args.lora,
            fuse=args.fuse,
            lora_scale=args.lora_scale,
            card_jsons=args.card_json,
            training_recipe_file=args.training_recipe,
            card_images=args.card_image,
            model_name=args.model_name,
            repo_id=args.push,
            base_model=args.base_model,
            overwrite=args.overwrite,
        )
    except (ExportError, ValueError) as error:
        raise CLIError(first_line(error)) from None
    print(f"exported {model}{f' + LoRA {args.lora}' if args.lora else ''} -> {folder}")
    if args.push:
        try:
            url = push_folder(folder, args.push, private=args.private)
        except Exception as error:  # network, authentication, permissions: all reported the same way
            raise CLIError(f"exported {folder}, but pushing to {args.push} failed: {first_line(error)}") from None
        print(f"pushed {folder} -> {url}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "upscale":
            return run_upscale(args)
        if args.command == "eval":
            return run_eval(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "export":
            return run_export(args)
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
