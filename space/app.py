# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""TEASR Gradio Space: any-step diffusion super-resolution in the browser.

Run locally with `python space/app.py` (http://127.0.0.1:7860). A thin layer over `pipeline_teasr`: the model is
loaded with the shared `load_pipeline` and every image goes through `TEASRPipeline.__call__`.

Environment:
    TEASR_MODEL                     pipeline folder or Hub id (default: the embedded teasr-mini)
    TEASR_SPACE_MAX_INPUT_PIXELS    largest accepted upload, in pixels (default 1024 * 1024)
    TEASR_SPACE_MAX_OUTPUT_PIXELS   largest output, in pixels (default 2048 * 2048)
    TEASR_SPACE_CONCURRENCY         requests worked on at once (default 2); the rest wait in the queue
    TEASR_SPACE_MAX_QUEUE           queue length before new requests are turned away (default 16)
    GRADIO_SERVER_NAME / _PORT      where to listen (gradio's defaults: 127.0.0.1:7860)
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

try:  # ZeroGPU wants `spaces` imported before torch; elsewhere `spaces.GPU` is a no-op and the package optional.
    import spaces
except ImportError:  # pragma: no cover - depends on the environment
    spaces = None

import gradio as gr
import numpy as np
import PIL.Image
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.cli import IMAGE_SUFFIXES, CLIError, load_pipeline
from pipeline_teasr.hub import embedded_model_path
from pipeline_teasr.image_processing_teasr import (
    convert_mode,
    decompose_image,
    load_image,
    recompose_image,
    resize,
    with_icc_profile,
)

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
EXAMPLES = sorted(str(path) for path in EXAMPLES_DIR.glob("*.png"))

MAX_STEPS = 8
COMPARE_STEPS = (1, 2, 4, 8)
MAX_SCALE = 8.0
FALLBACK_TILE_SIZE = 256
MAX_TILE_SIZE = 1024
MAX_SEED = 2**32 - 1  # exact in the browser's numbers (floats), unlike 2**63
MAX_UNTILED_OUTPUT_PIXELS = 512 * 512  # tile 0 runs one attention over the whole image and holds the model lock
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
OUTPUT_MAX_AGE_S = 3600.0
UPLOAD_ERROR = "Cannot use this image"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None
    if parsed < 1:
        raise ValueError(f"{name} must be positive, got {parsed}")
    return parsed


try:
    MAX_INPUT_PIXELS = env_int("TEASR_SPACE_MAX_INPUT_PIXELS", 1024 * 1024)
    MAX_OUTPUT_PIXELS = env_int("TEASR_SPACE_MAX_OUTPUT_PIXELS", 2048 * 2048)
    CONCURRENCY = env_int("TEASR_SPACE_CONCURRENCY", 2)
    MAX_QUEUE = env_int("TEASR_SPACE_MAX_QUEUE", 16)
except ValueError as setting_error:
    if __name__ != "__main__":
        raise
    print(f"teasr space: {setting_error}", file=sys.stderr)  # one line, as for a model that cannot be loaded
    sys.exit(2)

F = TypeVar("F", bound=Callable[..., Any])


def gpu(duration: int) -> Callable[[F], F]:
    """`@spaces.GPU(duration=...)` on ZeroGPU; the function unchanged anywhere else."""
    if spaces is None:
        return lambda function: function
    return spaces.GPU(duration=duration)


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Settings:
    steps: int
    scale: float
    start_timestep: float
    seed: int
    tile_size: int
    start: str = "noise"


# The start control: (label, value) pairs; the value is the pipeline's `start`.
START_CHOICES = [("LQ image", "lq"), ("noise", "noise")]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or value is None or value == "":
        raise gr.Error(f"{name} is missing.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise gr.Error(f"{name} must be a finite number, got {value!r}.")
    return number


def _integer(value: Any, name: str, low: int, high: int) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else _number(value, name)  # ints exact
    if number != int(number) or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def parse_settings(
    steps: Any, scale: Any, start_timestep: Any, seed: Any, tile_size: Any, start: Any = "noise"
) -> Settings:
    """Check the controls (the API accepts anything JSON) and turn them into one `Settings`, or raise `gr.Error`."""
    scale_value = _number(scale, "Upscale factor")
    if not 0 < scale_value <= MAX_SCALE:
        raise gr.Error(f"Upscale factor must be above 0 and at most {MAX_SCALE:g}, got {scale!r}.")
    start_value = _number(start_timestep, "Start timestep")
    if not 0 < start_value <= 1:
        raise gr.Error(f"Start timestep must lie in (0, 1], got {start_timestep!r}.")
    if start not in [value for _, value in START_CHOICES]:
        raise gr.Error(f"Start must be 'lq' (the LQ image) or 'noise', got {start!r}.")
    return Settings(
        steps=_integer(steps, "Steps", 1, MAX_STEPS),
        scale=scale_value,
        start_timestep=start_value,
        seed=_integer(seed, "Seed", 0, MAX_SEED),
        tile_size=_integer(tile_size, "Tile size", 0, MAX_TILE_SIZE),
        start=start,
    )


@dataclass
class Upload:
    image: PIL.Image.Image
    name: str  # the file name the user uploaded, without folders


def upload_path(payload: Any) -> str | None:
    """The server path of gradio's raw file payload (or a plain path); None when there is no image."""
    if isinstance(payload, dict):
        return payload.get("path")
    return None if payload is None else os.fspath(payload)


@dataclass(frozen=True)
class Finished:
    """A browser run's result, held until it is shown: only if the page still has the input it was made from."""

    source: str | None  # upload_path of the run's input
    outputs: tuple[Any, ...]


def read_upload(payload: Any) -> Upload:
    """Open an uploaded image (gradio's raw file payload or a path) with the library's loader, or raise a friendly
    `gr.Error` that names the user's file, never a server path."""
    if payload is None:
        raise gr.Error(
            "Upload an image first (PNG, JPEG, WebP, BMP, TIFF or GIF), or pick an example.", title=UPLOAD_ERROR
        )
    path, original = upload_path(payload), payload.get("orig_name") if isinstance(payload, dict) else None
    if not path:
        raise gr.Error("The upload did not arrive; please try again.", title=UPLOAD_ERROR)
    name = Path(original or path).name
    suffix = Path(name).suffix.lower()
    if suffix and suffix not in IMAGE_SUFFIXES:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise gr.Error(f"{name}: {suffix} files are not supported; upload an image ({kinds}).", title=UPLOAD_ERROR)
    try:
        image = load_image(path, max_pixels=MAX_INPUT_PIXELS)
    except ValueError as error:
        raise gr.Error(str(error).replace(str(path), name), title=UPLOAD_ERROR) from None
    return Upload(image=image, name=name)


def check_output_size(image: PIL.Image.Image, settings: Settings) -> tuple[int, int]:
    try:
        height, width = TEASRPipeline.output_size(image.height, image.width, settings.scale, MAX_OUTPUT_PIXELS)
    except ValueError:
        raise gr.Error(
            f"{image.width}x{image.height} at x{settings.scale:g} would be larger than this Space's limit of "
            f"{MAX_OUTPUT_PIXELS:,} output pixels; lower the upscale factor or use a smaller image."
        ) from None
    if settings.tile_size == 0 and height * width > MAX_UNTILED_OUTPUT_PIXELS:
        raise gr.Error(
            f"Tile size 0 (off) upscales the whole image at once: slow, and others wait meanwhile. Here it is "
            f"kept to outputs of up to {MAX_UNTILED_OUTPUT_PIXELS:,} pixels, and this one has {height * width:,}: "
            "set a tile size."
        )
    return height, width


# ---------------------------------------------------------------------------------------------------- model calls
@dataclass
class Sample:
    image: PIL.Image.Image
    steps: int
    nfe: int
    seconds: float


# The pipeline keeps per-call state (scheduler timesteps), so calls on one pipeline object run one at a time;
# decoding uploads and encoding PNGs still overlap across the queue's workers.
_PIPELINE_LOCK = threading.Lock()


def run_pipeline(pipe: TEASRPipeline, image: PIL.Image.Image, settings: Settings) -> Sample:
    """One `TEASRPipeline` call, timed; library `ValueError`s and CUDA out-of-memory become friendly errors."""
    with _PIPELINE_LOCK:
        started = time.perf_counter()
        try:
            result = pipe(
                image,
                upscale=settings.scale,
                num_inference_steps=settings.steps,
                start_timestep=settings.start_timestep,
                start=settings.start,
                tile_size=settings.tile_size,
                max_output_pixels=MAX_OUTPUT_PIXELS,
                generator=torch.Generator().manual_seed(settings.seed),
            )
        except ValueError as error:
            raise gr.Error(str(error)) from None
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise gr.Error("Out of GPU memory: lower the tile size or the upscale factor.") from None
        seconds = time.perf_counter() - started
    return Sample(image=result.images[0], steps=settings.steps, nfe=result.nfe, seconds=seconds)


# ---------------------------------------------------------------------------------------------------- outputs
class OutputStore:
    """Fresh folders for result files under one temporary root; folders older than `max_age_s` are removed."""

    def __init__(self, root: Path, max_age_s: float = OUTPUT_MAX_AGE_S) -> None:
        self.root = root
        self.max_age_s = max_age_s
        self.root.mkdir(parents=True, exist_ok=True)

    def new_folder(self) -> Path:
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(dir=self.root))


def png_ready(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image in a mode PNG can hold (alpha and 16-bit kept; float as 16-bit; CMYK and the like as RGB)."""
    if image.mode in PNG_MODES:
        return image
    if image.mode == "F":
        sixteen_bit = PIL.Image.fromarray(np.round(np.clip(np.asarray(image), 0.0, 1.0) * 65535.0).astype(np.uint16))
        return with_icc_profile(sixteen_bit, image.info.get("icc_profile"))
    return convert_mode(image, "RGBA" if image.mode.endswith("A") else "RGB")


def bicubic_preview(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """The input resized to the output size the way the pipeline resizes its condition: the slider's "before"."""
    parts = decompose_image(image)
    alpha = None if parts.alpha is None else resize(parts.alpha, size)
    return recompose_image(resize(parts.rgb, size), alpha, parts.mode, parts.icc_profile)


def file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem).strip("_")[:40]
    return stem or "image"


def save_png(image: PIL.Image.Image, folder: Path, name: str) -> str:
    path = folder / name
    png_ready(image).save(path, format="PNG")
    return str(path)


def start_label(start: str) -> str:
    return dict((value, label) for label, value in START_CHOICES)[start]


def describe(sample: Sample, source: PIL.Image.Image, settings: Settings, pipe: TEASRPipeline) -> str:
    steps = f"{sample.steps} step" + ("s" if sample.steps > 1 else "")
    seed = f"seed {settings.seed} · " if settings.start == "noise" else ""  # the LQ start has no noise
    return (
        f"**{sample.image.width}×{sample.image.height}** from {source.width}×{source.height} · {steps} · "
        f"**{sample.nfe} NFE** (network evaluations) · **{sample.seconds:.2f} s** on {pipe.device.type} "
        f"({str(pipe.transformer.dtype).removeprefix('torch.')}) · from {start_label(settings.start)}, "
        f"T = {settings.start_timestep:g} · {seed}tile {settings.tile_size or 'off'}"
    )


# ---------------------------------------------------------------------------------------------------- the app
HEADER = """
# TEASR: any-step diffusion super-resolution
One dual-branch diffusion transformer that upscales real-world photos in **any number of steps** from the same
weights. Upload a photo or pick an example, choose the steps, and compare the result with the input.
"""
START_HELP = {
    "lq": "*Start from the LQ image* runs the model on the input itself (deterministic; T below 1 stays closer to the "
    "input).",
    "noise": "*Start from noise* samples (the seed matters; a lower T stays closer to the input, 1 generates the "
    "most).",
}

API_DOC = """
**API.** `/upscale` takes `(image, steps, scale, start_timestep, seed, start)` (`start`: `"lq"` or `"noise"`, one
the model was trained for; optional, default: the model's) and returns the upscaled PNG:
`Client(URL).predict(handle_file("photo.png"), 1, 4, 1.0, 0, api_name="/upscale")` with `gradio_client`.
"""


def display_name(pipe: TEASRPipeline) -> str:
    """The model's name for the page: a Hub id as it is, a local folder by its name, never the server's path."""
    name = str(pipe.config.get("_name_or_path") or "")
    if not name:
        return "TEASR"
    path = Path(name)
    embedded = embedded_model_path()
    if embedded is not None and path.exists() and path.resolve() == embedded.resolve():
        return "teasr-mini (embedded)"
    return path.name if path.exists() else name


def build_demo(pipe: TEASRPipeline | None = None) -> gr.Blocks:
    """The Space's Blocks app around `pipe` (default: `load_pipeline` of `$TEASR_MODEL` or the embedded model)."""
    if pipe is None:
        pipe = load_pipeline(None, None, "auto")
    config_tile = pipe.config.get("default_tile_size")
    default_tile = min(MAX_TILE_SIZE, config_tile if config_tile is not None else FALLBACK_TILE_SIZE)
    default_start_from, default_start = pipe.resolve_start(None, None)
    store = OutputStore(Path(tempfile.gettempdir()) / "teasr-space")
    model_name = display_name(pipe)
    samples_noise = "noise" in pipe.supported_starts

    @gpu(duration=60)
    def sample_gpu(image: PIL.Image.Image, settings: Settings) -> Sample:
        return run_pipeline(pipe, image, settings)

    @gpu(duration=180)
    def compare_gpu(image: PIL.Image.Image, settings: Settings) -> list[Sample]:
        return [run_pipeline(pipe, image, dataclasses.replace(settings, steps=k)) for k in COMPARE_STEPS]

    def upscale_files(payload: Any, settings: Settings) -> tuple[Upload, Sample, str, str]:
        upload = read_upload(payload)
        size = check_output_size(upload.image, settings)
        sample = sample_gpu(upload.image, settings)
        folder = store.new_folder()
        stem = f"{file_stem(upload.name)}_teasr_x{settings.scale:g}_{settings.steps}step"
        after = save_png(sample.image, folder, f"{stem}.png")
        before = save_png(bicubic_preview(upload.image, size), folder, f"{file_stem(upload.name)}_bicubic.png")
        return upload, sample, before, after

    def upscale_api(image: Any, steps: Any, scale: Any, start_timestep: Any, seed: Any, start: Any) -> str:
        """Upscale one image; returns the path of the full-size PNG."""
        settings = parse_settings(steps, scale, start_timestep, seed, default_tile, start)
        return upscale_files(image, settings)[3]

    def upscale_ui(
        image: Any, steps: Any, scale: Any, start_timestep: Any, seed: Any, tile_size: Any, start: Any
    ) -> Finished:
        settings = parse_settings(steps, scale, start_timestep, seed, tile_size, start)
        upload, sample, before, after = upscale_files(image, settings)
        download = (f"Download full-size PNG ({sample.image.width}×{sample.image.height})", after)
        text = describe(sample, upload.image, settings, pipe)
        return Finished(upload_path(image), ((before, after), download, text))

    def show_upscale(pair: tuple[str, str], download: tuple[str, str], text: str) -> tuple[Any, ...]:
        label, path = download
        return pair, gr.DownloadButton(label, path, visible=True), text, gr.Tabs(selected="result")

    def compare_ui(image: Any, scale: Any, start_timestep: Any, seed: Any, tile_size: Any, start: Any) -> Finished:
        gallery, table, _ = compare_steps(image, scale, start_timestep, seed, tile_size, start)
        return Finished(upload_path(image), (gallery, table))

    def show_compare(gallery: list[tuple[str, str]], table: str) -> tuple[Any, ...]:
        return gallery, table, gr.Tabs(selected="compare")

    def compare_steps(
        image: Any, scale: Any, start_timestep: Any, seed: Any, tile_size: Any, start: Any
    ) -> tuple[list[tuple[str, str]], str, gr.Tabs]:
        """Upscale one image with 1, 2, 4 and 8 steps (same seed); returns the images and a timing table."""
        settings = parse_settings(1, scale, start_timestep, seed, tile_size, start)
        upload = read_upload(image)
        check_output_size(upload.image, settings)
        samples = compare_gpu(upload.image, settings)
        folder = store.new_folder()
        gallery, rows = [], ["| steps | NFE | time | output |", "|---:|---:|---:|---|"]
        for sample in samples:
            path = save_png(sample.image, folder, f"{file_stem(upload.name)}_{sample.steps}step.png")
            plural = "s" if sample.steps > 1 else ""
            gallery.append((path, f"{sample.steps} step{plural}"))  # times are in the table: captions stay short
            rows.append(
                f"| {sample.steps} | {sample.nfe} | {sample.seconds:.2f} s | "
                f"{sample.image.width}×{sample.image.height} |"
            )
        return gallery, "\n".join(rows), gr.Tabs(selected="compare")

    with gr.Blocks(
        title="TEASR any-step super-resolution", analytics_enabled=False, delete_cache=(1800, 3600)
    ) as demo:
        gr.Markdown(
            HEADER + " ".join(START_HELP[value] for _, value in START_CHOICES if value in pipe.supported_starts)
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                image = gr.Image(
                    label="Low-quality input",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=300,
                    elem_id="input-image",
                )
                if EXAMPLES:
                    gr.Examples(examples=[[path] for path in EXAMPLES], inputs=[image], label="Example photos")
                steps = gr.Slider(
                    1, MAX_STEPS, value=1, step=1, label="Steps", info="same weights at every step count"
                )
                scale = gr.Slider(1, MAX_SCALE, value=4, step=0.5, label="Upscale factor", elem_id="scale")
                start_from = gr.Radio(
                    [(label, value) for label, value in START_CHOICES if value in pipe.supported_starts],
                    value=default_start_from,
                    label="Start from",
                    info="LQ image: deterministic restoration · noise: sampling (the seed matters)",
                    elem_id="start-from",
                    visible=len(pipe.supported_starts) > 1,  # a single start needs no choice
                )
                start = gr.Slider(
                    0.01,
                    1.0,
                    value=default_start,
                    step=0.01,
                    label="Start timestep T",
                    info="lower: closer to the input (fidelity) · higher: more restoration or generation",
                )
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", visible=samples_noise)
                    tile = gr.Slider(
                        0, MAX_TILE_SIZE, value=default_tile, step=16, label="Tile size", info="output px; 0 = off"
                    )
                with gr.Row():
                    run = gr.Button("Upscale", variant="primary", elem_id="run")
                    compare = gr.Button("Compare steps", elem_id="compare")
            with gr.Column(scale=3):
                with gr.Tabs(selected="result") as tabs:
                    with gr.Tab("Before / after", id="result"):
                        slider = gr.ImageSlider(
                            label="Input (bicubic) | TEASR",
                            type="filepath",
                            format="png",
                            max_height=640,
                            elem_id="result-slider",
                        )
                        info = gr.Markdown(elem_id="result-info")
                        download = gr.DownloadButton("Download full-size PNG", elem_id="download", visible=False)
                    with gr.Tab("Compare steps", id="compare"):
                        gallery = gr.Gallery(
                            label="1 / 2 / 4 / 8 steps" + (", same seed" if samples_noise else ""),
                            columns=2,
                            rows=2,
                            format="png",
                            object_fit="contain",
                            height=660,  # two rows of two on a desktop; gradio would otherwise cut the second
                            elem_id="compare-gallery",
                        )
                        compare_info = gr.Markdown(elem_id="compare-info")
        largest_x4_input = min(MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS // 16)
        gr.Markdown(
            f"Model: `{model_name}`. Inputs up to {MAX_INPUT_PIXELS:,} pixels and outputs up to "
            f"{MAX_OUTPUT_PIXELS:,} pixels (so at x4, inputs up to {largest_x4_input:,} pixels; "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}). {API_DOC}"
        )

        common = dict(preprocess=False, concurrency_id="teasr")

        def browser_run(button, tab: str, run_fn, inputs: list, shown_on, api_name: str, show, outputs: list) -> None:
            """`button` brings `tab` to the front (so the run's progress shows where its result will appear), then
            `run_fn` works in the queue and its `Finished` waits in a State; `show` puts it on the page only if the
            page still has the photo it was made from (read as it is when the run ends, outside the queue)."""
            finished = gr.State()

            def show_if_current(result: Finished | None, image_now: Any) -> tuple[Any, ...]:
                if result is None or result.source != upload_path(image_now):
                    return (gr.skip(),) * len(outputs)  # a new photo arrived during the run: not beside it
                return show(*result.outputs)

            button.click(lambda: gr.Tabs(selected=tab), None, tabs, queue=False, api_visibility="private").then(
                run_fn,
                inputs,
                finished,
                show_progress_on=[shown_on],
                trigger_mode="always_last",  # a click during a run is run after it, not dropped
                api_name=api_name,
                api_visibility="undocumented",
                **common,
            ).success(
                show_if_current, [finished, image], outputs, preprocess=False, queue=False, api_visibility="private"
            )

        browser_run(
            run, "result", upscale_ui, [image, steps, scale, start, seed, tile, start_from], slider, "upscale_ui",
            show_upscale, [slider, download, info, tabs],
        )  # fmt: skip
        browser_run(
            compare, "compare", compare_ui, [image, scale, start, seed, tile, start_from], gallery, "compare_ui",
            show_compare, [gallery, compare_info, tabs],
        )  # fmt: skip
        # A new input makes the shown result stale: clear it and hide its download, never pair it with the new photo.
        # Outside the queue, so that a busy Space does not refuse it. A run still working goes on, and `browser_run`
        # drops its result. (Not `cancels=` for the runs: with it, a compare started right after an upload never
        # finished in a browser check.)
        image.change(
            lambda: (None, gr.DownloadButton(visible=False), "", None, ""),
            None,
            [slider, download, info, gallery, compare_info],
            api_visibility="private",
            queue=False,
        )
        # The public API: (image, steps, scale, start_timestep, seed, start) -> upscaled image file.
        api_result = gr.Image(label="Upscaled image", type="filepath", format="png", visible=False)
        api_trigger = gr.Button(visible=False)
        api_trigger.click(
            upscale_api, [image, steps, scale, start, seed, start_from], api_result, api_name="upscale", **common
        )
        # (image, scale, start_timestep, seed, tile_size, start) -> the 1 / 2 / 4 / 8-step images and a timing table.
        api_gallery = gr.Gallery(label="1 / 2 / 4 / 8 steps", visible=False, format="png")
        api_table = gr.Markdown(label="Timing table", visible=False)
        api_compare_trigger = gr.Button(visible=False)
        api_compare_trigger.click(
            compare_steps,
            [image, scale, start, seed, tile, start_from],
            [api_gallery, api_table, tabs],
            api_name="compare_steps",
            **common,
        )
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    return demo


THEME = gr.themes.Soft(
    primary_hue="orange",
    font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: nothing fetched from font servers
    font_mono=["ui-monospace", "monospace"],
)


def launch_kwargs() -> dict[str, Any]:
    """Options for `demo.launch()`: theme, file limits and the example folder."""
    return dict(theme=THEME, allowed_paths=[str(EXAMPLES_DIR)], max_file_size="25mb")


def main() -> int:
    try:
        demo = build_demo()
    except (ValueError, OSError, CLIError) as error:  # no model, a bad folder, an unreachable Hub id
        print(f"teasr space: cannot load the model: {error}", file=sys.stderr)
        return 2
    demo.launch(**launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
