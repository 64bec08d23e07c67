# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Super-resolution evaluation harness behind `teasr eval`.

Three ways to get (prediction, ground truth) pairs, all scored the same way:

* **paired folders** (RealSR / DRealSR / DIV2K layout): `lr_dir` and `gt_dir` matched by file stem. Stems match
  exactly, or after dropping a trailing `_HR`, `_LR4`, `_x4`, `_GT` or DIV2K's `x4` (`0801x4.png` <-> `0801.png`);
* **HR-only folders**: the LR image is synthesised from the ground truth (cropped to a multiple of the scale) with a
  seeded degradation (`bicubic`, `light` or `realesrgan`); the per-image seed is `seed + crc32(stem)`, so a file's LR
  does not depend on which other files are in the folder;
* **existing predictions**: `pred_dir` against `gt_dir`, nothing is run.

Predictions come from a TEASR pipeline at one or more step counts (the PIL output, i.e. exactly what `teasr upscale`
writes), from PIL `bicubic` / `lanczos` resizes of the LR image (baselines), or from the prediction folder.
Metrics come from :mod:`pipeline_teasr.metrics`: PSNR / SSIM / GMSD on the BT.601 Y channel with a border crop equal
to the scale, the high-frequency ratio, and pyiqa's learned metrics when available offline (otherwise listed under
``skipped`` with the reason). The report is a JSON-friendly dict (see :func:`evaluate`), rendered as Markdown by
:func:`render_markdown`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .errors import first_line
from .files import atomic_write
from .metrics import FIDELITY_METRICS, LEARNED_METRICS, compute_metrics, grid_pattern_strength, learned_metric

__all__ = [
    "BASELINES",
    "DEGRADATIONS",
    "REPORT_FORMAT",
    "EvaluationError",
    "ImagePair",
    "collect_images",
    "evaluate",
    "load_rgb",
    "match_by_stem",
    "render_markdown",
    "synthesize_lr",
    "write_json",
]

REPORT_FORMAT = "teasr-eval/1"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
DEGRADATIONS: tuple[str, ...] = ("bicubic", "light", "realesrgan")
BASELINES: dict[str, int] = {"bicubic": PIL.Image.Resampling.BICUBIC, "lanczos": PIL.Image.Resampling.LANCZOS}

# Display names and directions, for the Markdown table and the model card.
METRIC_LABELS: dict[str, str] = {
    "psnr": "PSNR-Y",
    "ssim": "SSIM-Y",
    "gmsd": "GMSD",
    "hf_ratio": "HF ratio",
    "grid": "Grid",
    "lpips": "LPIPS",
    "dists": "DISTS",
    "musiq": "MUSIQ",
    "maniqa": "MANIQA",
    "clipiqa": "CLIPIQA",
    "niqe": "NIQE",
}
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "psnr": True,
    "ssim": True,
    "gmsd": False,
    "hf_ratio": None,  # best near 1
    "grid": False,  # the photos themselves sit near 0.01-0.03 at a 4-px period
    "lpips": False,
    "dists": False,
    "musiq": True,
    "maniqa": True,
    "clipiqa": True,
    "niqe": False,
}

_STEM_SUFFIX = re.compile(r"(?:[_\-.](?:hr|gt|lr\d*|x\d+)|(?<=\d)x\d+)$", re.IGNORECASE)


class EvaluationError(ValueError):
    """A problem with the inputs of an evaluation (empty or mismatched folders, sizes, options); one line."""


@dataclass(frozen=True)
class ImagePair:
    """One evaluation item: the ground truth and, depending on the mode, its LR input and/or prediction file."""

    name: str
    gt: Path
    lr: Path | None = None
    pred: Path | None = None


# --------------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------------
def collect_images(folder: str | os.PathLike, what: str = "image") -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder`` (one-line errors when unusable)."""
    path = Path(folder)
    if not path.is_dir():
        raise EvaluationError(f"{what} folder not found: {path}")
    files: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        if not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES or entry.name.startswith("."):
            continue
        if entry.stem in files:
            raise EvaluationError(f"{what} folder {path} holds two images with the stem {entry.stem!r}")
        files[entry.stem] = entry
    if not files:
        raise EvaluationError(f"{what} folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _normalised_stems(files: dict[str, Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for stem, path in files.items():
        key = _STEM_SUFFIX.sub("", stem).lower() or stem.lower()
        if key in out:
            raise EvaluationError(f"{what} files {out[key].name} and {path.name} match the same name {key!r}")
        out[key] = path
    return out


def _examples(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_by_stem(gt: dict[str, Path], other: dict[str, Path], other_what: str = "LR") -> list[tuple[str, Path, Path]]:
    """Pair ground-truth files with ``other`` files by stem: ``[(gt stem, gt path, other path)]``, sorted.

    Exact stems first; otherwise stems with a trailing `_HR` / `_LR4` / `_x4` / `_GT` / DIV2K `x4` removed. Every
    file on either side must find its partner.
    """
    if set(gt) == set(other):
        return [(stem, gt[stem], other[stem]) for stem in sorted(gt)]
    gt_keys = _normalised_stems(gt, "GT")
    other_keys = _normalised_stems(other, other_what)
    unmatched_gt = sorted(gt_keys[k].name for k in set(gt_keys) - set(other_keys))
    unmatched_other = sorted(other_keys[k].name for k in set(other_keys) - set(gt_keys))
    if unmatched_gt or unmatched_other:
        parts = []
        if unmatched_gt:
            parts.append(f"{len(unmatched_gt)} GT image(s) without a {other_what} match ({_examples(unmatched_gt)})")
        if unmatched_other:
            parts.append(
                f"{len(unmatched_other)} {other_what} image(s) without a GT match ({_examples(unmatched_other)})"
            )
        raise EvaluationError("mismatched folders: " + "; ".join(parts))
    return sorted((gt_keys[k].stem, gt_keys[k], other_keys[k]) for k in gt_keys)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 RGB array (EXIF orientation applied, 16-bit scaled, alpha dropped)."""
    from .image_processing_teasr import load_image

    try:
        image = load_image(path)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    return to_rgb_uint8(image)


def to_rgb_uint8(image: PIL.Image.Image) -> np.ndarray:
    """PIL image in any mode -> ``HxWx3`` uint8 RGB (16-bit and float grey are scaled, not clipped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or gray.max() > 255 else 255.0
        gray8 = np.round(np.clip(gray / top, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray8[..., None], 3, axis=2)
    if image.mode == "F":
        gray8 = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray8[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_write(path) as temporary:
        PIL.Image.fromarray(array).save(temporary)


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as strict JSON through a temporary file. Strict JSON has no infinity: an infinite number (the
    PSNR of a prediction identical to its GT) is written as the string ``"inf"`` (``"-inf"``), which
    :func:`load_report` reads back as a float; NaN (not computed) becomes ``null``."""
    with atomic_write(path, suffix=".tmp") as temporary, open(temporary, "w", encoding="utf-8") as stream:
        json.dump(_json_safe(report), stream, indent=2, allow_nan=False)
        stream.write("\n")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# --------------------------------------------------------------------------------------------------------------------
# LR synthesis and baselines
# --------------------------------------------------------------------------------------------------------------------
def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom / right so that height and width are multiples of ``scale`` (BasicSR ``mod_crop``)."""
    h, w = image.shape[:2]
    h, w = h - h % scale, w - w % scale
    if h == 0 or w == 0:
        raise EvaluationError(f"a {image.shape[1]}x{image.shape[0]} image is smaller than the scale {scale}")
    return image[:h, :w]


def image_seed(seed: int, name: str) -> int:
    """Per-image seed of the synthetic degradation: ``seed + crc32(name)`` (independent of the other files)."""
    return (int(seed) + zlib.crc32(name.encode("utf-8"))) % (2**63)


def synthesize_lr(hr: np.ndarray, scale: int, degradation: str, seed: int) -> np.ndarray:
    """Degrade an ``HxWx3`` uint8 HR image (height and width multiples of ``scale``) into its uint8 LR image.

    ``bicubic``: antialiased bicubic downsampling (deterministic); ``light`` / ``realesrgan``: the second-order
    Real-ESRGAN model with :meth:`DegradationConfig.light` or the default x4plus ranges, drawn from
    ``torch.Generator().manual_seed(seed)``.
    """
    if degradation not in DEGRADATIONS:
        raise EvaluationError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")
    import torch

    try:
        from .degradations import DegradationConfig, RealWorldDegradation, bicubic_degradation
    except ImportError as error:
        raise EvaluationError(
            f"synthetic degradations need the training extras ({error}); pip install 'pipeline-teasr[train]'"
        ) from None
    hq = torch.from_numpy(np.array(hr, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    if degradation == "bicubic":
        lq = bicubic_degradation(hq, scale)
    else:
        config = DegradationConfig.light(scale) if degradation == "light" else DegradationConfig(scale=scale)
        lq = RealWorldDegradation(config)(hq, generator=torch.Generator().manual_seed(seed))
    return (lq[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def baseline_upscale(lr: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """PIL resize of the uint8 LR image to ``size`` = (height, width) with ``bicubic`` or ``lanczos``."""
    if method not in BASELINES:
        raise EvaluationError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    out = PIL.Image.fromarray(lr).resize((size[1], size[0]), resample=BASELINES[method])
    return np.asarray(out, dtype=np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class _Method:
    key: str  # unique id, also the sub-folder name when saving predictions
    kind: str  # "teasr", "baseline" or "pred"
    label: str
    steps: int | None = None
    tiling: tuple[int | None, int | None] = (None, None)  # (tile_size, tile_overlap) of a model's calls
    images: list[dict[str, Any]] = field(default_factory=list)


def _infer_scale(lr_shape: tuple[int, ...], gt_shape: tuple[int, ...], name: str) -> int:
    scale = round(gt_shape[0] / lr_shape[0])
    if scale < 1 or gt_shape[0] // scale != lr_shape[0] or gt_shape[1] // scale != lr_shape[1]:
        raise EvaluationError(
            f"{name}: cannot infer an integer scale from LR {lr_shape[1]}x{lr_shape[0]} and GT "
            f"{gt_shape[1]}x{gt_shape[0]}; pass --scale"
        )
    return scale


def _fit_gt(gt: np.ndarray, size: tuple[int, int], name: str, scale: int, what: str) -> np.ndarray:
    """Crop the GT's bottom / right to ``size`` when it is larger by less than ``scale`` (un-mod-cropped GT)."""
    h, w = size
    if gt.shape[0] == h and gt.shape[1] == w:
        return gt
    if 0 <= gt.shape[0] - h < scale and 0 <= gt.shape[1] - w < scale:
        return gt[:h, :w]
    if what == "LR":  # `size` is the LR's size times the scale
        raise EvaluationError(
            f"{name}: GT is {gt.shape[1]}x{gt.shape[0]} but the LR is {w // scale}x{h // scale}, which is {w}x{h} at "
            f"x{scale}"
        )
    raise EvaluationError(f"{name}: GT is {gt.shape[1]}x{gt.shape[0]} but the {what} is {w}x{h}")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _environment(device: str) -> dict[str, Any]:
    import platform

    env: dict[str, Any] = {"python": platform.python_version(), "device": device}
    for module in ("torch", "diffusers", "pyiqa"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    from . import __version__

    env["pipeline_teasr"] = __version__
    if device.startswith("cuda"):
        import torch

        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def evaluate(
    gt_dir: str | os.PathLike,
    *,
    lr_dir: str | os.PathLike | None = None,
    pred_dir: str | os.PathLike | None = None,
    degradation: str | None = None,
    seed: int = 0,
    scale: int | None = None,
    pipeline: Any = None,
    model: str | None = None,
    steps: Sequence[int] = (),
    start_timestep: float | None = None,
    start: str | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    baselines: Sequence[str] = (),
    grid_period: int | None = None,
    pred_label: str | None = None,
    learned: Sequence[str] = tuple(LEARNED_METRICS),
    device: str = "cpu",
    save_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    dataset_name: str | None = None,
    command: str | None = None,
    progress: bool | None = None,
    on_image: Callable[[str, str, dict[str, float], float], None] | None = None,
) -> dict[str, Any]:
    """Score super-resolution predictions against ``gt_dir`` and return the report.

    Args:
        gt_dir: folder of ground-truth (HR) images.
        lr_dir: paired LR folder (matched by stem). Without it and with ``degradation``, LR images are synthesised.
        pred_dir: folder of existing predictions to score (matched by stem); combinable with LR-based methods.
        degradation: ``bicubic``, ``light`` or ``realesrgan`` for HR-only folders (GT cropped to a multiple of the
            scale first); ``seed`` makes it reproducible (per image ``seed + crc32(stem)``).
        scale: integer SR factor, also the border crop of PSNR / SSIM / GMSD. Inferred from paired folders when
            ``None``; defaults to 4 for synthetic LR; required with ``pred_dir`` alone.
        pipeline: a loaded :class:`TEASRPipeline` to run at each of ``steps`` (with ``start`` and
            ``start_timestep``, `None`: the pipeline's defaults, ``tile_size``, ``tile_overlap`` and a
            ``torch.Generator`` seeded with ``seed``); ``model`` names it.
        baselines: any of ``bicubic``, ``lanczos`` (PIL resize of the LR image).
        grid_period: also score every prediction with the no-reference ``grid`` metric
            (:func:`~pipeline_teasr.metrics.grid_pattern_strength` at this period in output pixels): how much of its
            detail repeats a patch-based model's token grid. ``None``: the model's token period (VAE factor x patch
            size) when a model runs, else off; 0: off. ``nan`` for images under three periods on a side.
        learned: pyiqa metrics to try (see :data:`LEARNED_METRICS`); unavailable ones go to ``skipped``.
        device: where learned metrics run.
        save_dir: if given, predictions are written to ``save_dir/<method>/<stem>.png`` (and synthetic LR images
            to ``save_dir/lr/``).
        limit: only the first ``limit`` images (sorted by name).
        command: the command line to record.
        progress: show a tqdm progress bar (``None``: only on a terminal).
        on_image: called as ``on_image(method_key, name, metrics, seconds)`` after each prediction.

    Returns:
        A JSON-friendly dict: ``format``, ``command``, ``created``, ``mode``, ``dataset``, ``scale``,
        ``crop_border``, ``model``, ``settings``, ``metrics`` (names evaluated), ``skipped`` ({metric: reason}),
        ``higher_is_better``, ``environment`` and ``results``: one entry per method with ``key``, ``kind``,
        ``label``, ``steps``, ``tile_size`` and ``tile_overlap`` (model rows: the values its calls used),
        ``num_images``, ``mean`` ({metric: value}), ``mean_seconds``, ``total_seconds``,
        ``mean_nfe`` and ``images`` ([{``name``, ``gt``, ``lr``, ``pred``, ``height``, ``width``, ``seconds``,
        ``nfe``, ``metrics``}]).
    """
    from tqdm.auto import tqdm

    steps = [int(k) for k in steps]
    if any(k < 1 for k in steps):
        raise EvaluationError(f"--steps must be >= 1, got {steps}")
    if steps and pipeline is None:
        raise EvaluationError("steps were given but no pipeline to run")
    if scale is not None and (int(scale) != scale or scale < 1):
        raise EvaluationError(f"--scale must be a positive integer, got {scale}")
    for name in baselines:
        if name not in BASELINES:
            raise EvaluationError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    learned = [m.lower() for m in learned]
    for name in learned:
        if name not in LEARNED_METRICS:
            raise EvaluationError(f"unknown learned metric {name!r}; choose from {', '.join(LEARNED_METRICS)}")
    if lr_dir is not None and degradation is not None:
        raise EvaluationError("pass either an LR folder or a degradation to synthesise LR images, not both")
    if degradation is not None and degradation not in DEGRADATIONS:
        raise EvaluationError(f"unknown degradation {degradation!r}; choose from {', '.join(DEGRADATIONS)}")
    has_lr = lr_dir is not None or degradation is not None
    if (steps or baselines) and not has_lr:
        raise EvaluationError(
            "running a model or a baseline needs LR images: pass an LR folder, or a degradation for HR-only folders"
        )
    if not steps and not baselines and pred_dir is None:
        raise EvaluationError("nothing to evaluate: give step counts with a model, baselines, or a prediction folder")
    if pred_dir is not None and not has_lr and scale is None:
        raise EvaluationError("scoring a prediction folder without LR images needs --scale (the border crop)")
    if degradation is not None and scale is None:
        scale = 4
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be >= 1, got {limit}")
    if grid_period is None:
        grid_period = pipeline.grid_multiple if pipeline is not None and steps else 0
    if grid_period == 1 or grid_period < 0:
        raise EvaluationError(f"--grid-period must be 0 (off) or at least 2 pixels, got {grid_period}")
    if steps:
        try:
            start, start_timestep = pipeline.resolve_start(start, start_timestep)
        except ValueError as error:
            raise EvaluationError(str(error)) from None

    # ---- pair the files
    gt_files = collect_images(gt_dir, "GT")
    lr_map: dict[str, Path] = {}
    pred_map: dict[str, Path] = {}
    if lr_dir is not None:
        lr_map = {stem: path for stem, _, path in match_by_stem(gt_files, collect_images(lr_dir, "LR"), "LR")}
    if pred_dir is not None:
        pred_map = {
            stem: path
            for stem, _, path in match_by_stem(gt_files, collect_images(pred_dir, "prediction"), "prediction")
        }
    pairs = [ImagePair(stem, gt_files[stem], lr_map.get(stem), pred_map.get(stem)) for stem in sorted(gt_files)]
    if limit is not None:
        pairs = pairs[:limit]

    # ---- methods
    methods: list[_Method] = []
    for k in steps:
        tiling = pipeline.resolve_tiling(tile_size, tile_overlap, k)
        methods.append(_Method(f"teasr-{k}step", "teasr", f"TEASR ({k} step{'s' if k > 1 else ''})", k, tiling))
    for name in baselines:
        methods.append(_Method(name, "baseline", f"{name.capitalize()} (PIL)"))
    if pred_dir is not None:
        methods.append(_Method("pred", "pred", pred_label or Path(pred_dir).resolve().name))
    if len({m.key for m in methods}) != len(methods):
        raise EvaluationError("duplicate step counts or baselines")

    names = list(FIDELITY_METRICS)
    no_reference = ["grid"] if grid_period else []
    skipped: dict[str, str] = {}
    save_root = Path(save_dir) if save_dir is not None else None
    mode = "pred" if not has_lr else "paired" if lr_dir is not None else "synthetic"

    bar = tqdm(
        total=len(pairs) * len(methods),
        desc="evaluating",
        unit="img",
        disable=None if progress is None else not progress,
    )
    try:
        for pair in pairs:
            gt = load_rgb(pair.gt)
            lr: np.ndarray | None = None
            if lr_dir is not None:
                lr = load_rgb(pair.lr)
                if scale is None:  # inferred from the first pair, then required of all
                    scale = _infer_scale(lr.shape, gt.shape, pair.name)
                gt = _fit_gt(gt, (lr.shape[0] * scale, lr.shape[1] * scale), pair.name, scale, "LR")
            elif degradation is not None:
                gt = mod_crop(gt, scale)
                lr = synthesize_lr(gt, scale, degradation, image_seed(seed, pair.name))
                if save_root is not None:
                    _save_png(lr, save_root / "lr" / f"{pair.name}.png")
            assert scale is not None
            pair_scale = int(scale)
            for method in methods:
                pred, seconds, nfe = _predict(method, pair, lr, gt, pair_scale, pipeline, start_timestep, start, seed)
                target = gt
                if method.kind == "pred":
                    target = _fit_gt(gt, pred.shape[:2], pair.name, pair_scale, "prediction")
                try:
                    values = compute_metrics(pred, target, crop_border=pair_scale, names=names)
                except ValueError as error:  # e.g. too small for SSIM after the border crop
                    raise EvaluationError(f"{pair.name}: {error}") from None
                if grid_period:
                    values["grid"] = _grid_strength(pred, grid_period)
                for metric in learned:
                    if metric in skipped:
                        continue
                    value, reason = learned_metric(metric, pred, target, device=device)
                    if value is None:
                        skipped[metric] = reason or f"{metric}: unavailable"
                    else:
                        values[metric] = value
                if save_root is not None and method.kind != "pred":
                    _save_png(pred, save_root / method.key / f"{pair.name}.png")
                method.images.append(
                    {
                        "name": pair.name,
                        "gt": str(pair.gt),
                        "lr": str(pair.lr) if pair.lr is not None else None,
                        "pred": str(pair.pred) if method.kind == "pred" else None,
                        "height": int(target.shape[0]),
                        "width": int(target.shape[1]),
                        "seconds": seconds,
                        "nfe": nfe,
                        "metrics": values,
                    }
                )
                if on_image is not None:
                    on_image(method.key, pair.name, values, seconds)
                bar.update(1)
    finally:
        bar.close()

    evaluated = names + no_reference + [m for m in learned if m not in skipped]
    # A learned metric that failed on a later image after succeeding earlier is dropped everywhere for consistency.
    results = []
    for method in methods:
        for item in method.images:
            item["metrics"] = {k: v for k, v in item["metrics"].items() if k in evaluated}
        seconds = [item["seconds"] for item in method.images]
        nfes = [item["nfe"] for item in method.images if item["nfe"] is not None]
        results.append(
            {
                "key": method.key,
                "kind": method.kind,
                "label": method.label,
                "steps": method.steps,
                "tile_size": method.tiling[0] if method.kind == "teasr" else None,
                "tile_overlap": method.tiling[1] if method.kind == "teasr" else None,
                "num_images": len(method.images),
                "mean": {m: _mean([item["metrics"][m] for item in method.images]) for m in evaluated},
                "mean_seconds": _mean(seconds) if method.kind != "pred" else None,
                "total_seconds": math.fsum(seconds) if method.kind != "pred" else None,
                "mean_nfe": _mean(nfes) if nfes else None,
                "images": method.images,
            }
        )

    gt_path = Path(gt_dir).resolve()
    return {
        "format": REPORT_FORMAT,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "dataset": {
            "name": dataset_name or gt_path.name,
            "gt_dir": str(gt_path),
            "lr_dir": str(Path(lr_dir).resolve()) if lr_dir is not None else None,
            "pred_dir": str(Path(pred_dir).resolve()) if pred_dir is not None else None,
            "degradation": degradation if degradation is not None else ("paired" if lr_dir is not None else None),
            "seed": seed if degradation is not None else None,
            "seed_rule": "seed + crc32(stem)" if degradation not in (None, "bicubic") else None,
            "num_images": len(pairs),
        },
        "scale": scale,
        "crop_border": scale,
        "model": (
            {"path": model, "class": type(pipeline).__name__, "name_or_path": pipeline.config.get("_name_or_path")}
            if pipeline is not None and steps
            else None
        ),
        "settings": {
            "steps": steps,
            "start": start if steps else None,
            "start_timestep": start_timestep if steps else None,
            "tile_size": tile_size if steps else None,  # as requested (None: the model's); each result has its own
            "tile_overlap": tile_overlap if steps else None,
            "seed": seed,
            "baselines": list(baselines),
            "grid_period": grid_period or None,
            "device": device,
            "y_channel": "BT.601 (MATLAB rgb2ycbcr), [16, 235]",
            "predictions": "8-bit RGB, as saved by `teasr upscale`",
        },
        "metrics": evaluated,
        "skipped": skipped,
        "higher_is_better": {m: HIGHER_IS_BETTER.get(m) for m in evaluated},
        "environment": _environment(device),
        "results": results,
    }


def _grid_strength(pred: np.ndarray, period: int) -> float:
    """``grid_pattern_strength`` of one prediction; ``nan`` when the image is too small for the period."""
    if min(pred.shape[:2]) < 3 * period:
        return float("nan")
    return grid_pattern_strength(pred, period)


def _predict(
    method: _Method,
    pair: ImagePair,
    lr: np.ndarray | None,
    gt: np.ndarray,
    scale: int,
    pipeline: Any,
    start_timestep: float,
    start: str,
    seed: int,
) -> tuple[np.ndarray, float | None, int | None]:
    """Return (uint8 prediction, seconds, NFE) for one method on one image."""
    if method.kind == "pred":
        return load_rgb(pair.pred), None, None
    assert lr is not None
    size = (lr.shape[0] * scale, lr.shape[1] * scale)
    if method.kind == "baseline":
        started = time.perf_counter()
        out = baseline_upscale(lr, size, method.key)
        return out, time.perf_counter() - started, None
    import torch

    started = time.perf_counter()
    try:
        result = pipeline(
            PIL.Image.fromarray(lr),
            upscale=float(scale),
            num_inference_steps=method.steps,
            start_timestep=start_timestep,
            start=start,
            tile_size=method.tiling[0],
            tile_overlap=method.tiling[1],
            generator=torch.Generator().manual_seed(seed),
            max_output_pixels=None,
            output_type="pil",
        )
    except ValueError as error:
        raise EvaluationError(f"{pair.name}: {first_line(error)}") from None
    out = to_rgb_uint8(result.images[0])
    seconds = time.perf_counter() - started
    if out.shape[:2] != size:
        raise EvaluationError(
            f"{pair.name}: the model returned {out.shape[1]}x{out.shape[0]}, expected {size[1]}x{size[0]}"
        )
    return out, seconds, int(result.nfe)


# --------------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------------
def _metric_header(metric: str) -> str:
    label = METRIC_LABELS.get(metric, metric)
    direction = HIGHER_IS_BETTER.get(metric)
    return f"{label} {'↑' if direction else '↓' if direction is False else '(→1)'}"


def _format(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}" if metric in ("psnr", "musiq", "niqe") else f"{value:.4f}"


def describe_dataset(report: dict[str, Any]) -> str:
    """One line naming the dataset, image count, scale and how the LR images were made."""
    data = report["dataset"]
    scale = report["scale"]
    if report["mode"] == "synthetic":
        how = f"LR synthesised from HR with the `{data['degradation']}` degradation, seed {data['seed']}"
    elif report["mode"] == "paired":
        how = "paired LR / HR folders"
    else:
        how = "existing predictions"
    return (
        f"{data['name']}: {data['num_images']} image(s), x{scale}, {how}; PSNR / SSIM / GMSD on Y, "
        f"border crop {report['crop_border']}"
    )


def results_table(report: dict[str, Any], with_time: bool = True) -> str:
    """The Markdown table of ``report``'s mean metrics, one row per method."""
    metrics = report["metrics"]
    header = ["Method", "Steps", "NFE / img", *(_metric_header(m) for m in metrics)]
    if with_time:
        header.append("s / img")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for result in report["results"]:
        nfe = result.get("mean_nfe")
        row = [
            result["label"],
            str(result["steps"]) if result["steps"] is not None else "–",
            f"{nfe:g}" if nfe is not None else "–",
            *(_format(m, result["mean"].get(m)) for m in metrics),
        ]
        if with_time:
            seconds = result.get("mean_seconds")
            row.append(f"{seconds:.3g}" if seconds is not None else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """Markdown summary of a report: a description line, the table and the skipped metrics."""
    parts = [f"**{describe_dataset(report)}**", "", results_table(report)]
    env = report.get("environment") or {}
    if any(r.get("mean_seconds") is not None for r in report["results"]):
        parts += ["", f"Timing: seconds per image on {env.get('device', '?')} ({env.get('device_name') or '?'})."]
    if report["skipped"]:
        parts += ["", "Skipped metrics: " + "; ".join(report["skipped"][m] for m in sorted(report["skipped"]))]
    return "\n".join(parts) + "\n"


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read an evaluation JSON written by :func:`write_json`, checking its format."""
    try:
        with open(path, encoding="utf-8") as stream:
            report = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationError(f"cannot read evaluation JSON {path}: {error}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise EvaluationError(f"{path} is not a TEASR evaluation report (format {REPORT_FORMAT!r})")
    for result in report.get("results", []):
        for values in (result.get("mean", {}), *(image.get("metrics", {}) for image in result.get("images", []))):
            for metric, value in values.items():
                if value in ("inf", "-inf"):
                    values[metric] = float(value)
    return report
