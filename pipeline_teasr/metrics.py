"""Image-quality metrics for super-resolution evaluation.

The fidelity metrics follow the BasicSR / MATLAB conventions used throughout the SR literature:

* images are converted to the BT.601 luma channel ``Y`` in ``[16, 235]`` (``[0, 255]`` scale, float64, no rounding),
  exactly like MATLAB's ``rgb2ycbcr`` / BasicSR's ``to_y_channel``;
* ``crop_border`` pixels are removed on every side before measuring (usually the SR scale factor);
* PSNR and SSIM use a data range of 255; SSIM uses an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03 and
  only keeps the "valid" part of the filtered maps (BasicSR's ``_ssim``: ``cv2.filter2D`` then a 5-pixel crop).

Everything here is numpy only (no OpenCV / scipy). Optional learned metrics (LPIPS, DISTS, MUSIQ, MANIQA, CLIP-IQA,
NIQE) go through `pyiqa` when it is installed *and* its weights are already on disk; nothing is ever downloaded.

All image arguments are ``HxWx3`` RGB arrays: ``uint8`` (0..255), ``uint16`` (0..65535) or float in ``[0, 1]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .errors import first_line

__all__ = [
    "FIDELITY_METRICS",
    "LEARNED_METRICS",
    "compute_metrics",
    "gmsd",
    "high_frequency_ratio",
    "learned_metric",
    "psnr_y",
    "rgb_to_y",
    "ssim_y",
]

# BT.601 coefficients of MATLAB's rgb2ycbcr for R, G, B in [0, 1] -> Y in [16, 235].
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2

_GMSD_T = 170.0

FIDELITY_METRICS: tuple[str, ...] = ("psnr", "ssim", "gmsd", "hf_ratio")
# name -> needs a reference image
LEARNED_METRICS: dict[str, bool] = {
    "lpips": True,
    "dists": True,
    "musiq": False,
    "maniqa": False,
    "clipiqa": False,
    "niqe": False,
}


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _to_float01(img: np.ndarray) -> np.ndarray:
    """Return ``img`` as float64 in [0, 1] (uint8 / uint16 are normalised, floats are taken as is)."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64, copy=False)
    raise TypeError(f"unsupported image dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1]")


def _check_rgb(img: np.ndarray, what: str = "image") -> None:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{what} must be an HxWx3 RGB array, got shape {tuple(img.shape)}")


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    _check_rgb(pred, "pred")
    return pred, gt


def _crop(y: np.ndarray, crop_border: int) -> np.ndarray:
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return y
    if 2 * crop_border >= min(y.shape[:2]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {y.shape[0]}x{y.shape[1]} image")
    return y[crop_border:-crop_border, crop_border:-crop_border]


def _gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _correlate1d_valid(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    """'valid' 1-D correlation of a 2-D array along ``axis`` (sum of shifted slices, exact in float64)."""
    n = k.size
    length = x.shape[axis] - n + 1
    if length <= 0:
        raise ValueError(f"array of size {x.shape[axis]} along axis {axis} is smaller than the {n}-tap kernel")
    out = np.zeros(x.shape[:axis] + (length,) + x.shape[axis + 1 :], dtype=np.float64)
    for i, w in enumerate(k):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(i, i + length)
        out += w * x[tuple(sl)]
    return out


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2-D 'valid' filtering with the symmetric 1-D kernel ``k``."""
    return _correlate1d_valid(_correlate1d_valid(x, k, 0), k, 1)


def _gaussian_blur_same(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with 'same' output size, reflect-101 borders (OpenCV's default), radius = round(4 sigma)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, int(4.0 * sigma + 0.5))
    padded = np.pad(x, radius, mode="reflect")
    return _filter_valid(padded, _gaussian_kernel1d(sigma, radius))


# --------------------------------------------------------------------------------------------------------------------
# colour conversion
# --------------------------------------------------------------------------------------------------------------------
def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``HxWx3`` RGB image as MATLAB ``rgb2ycbcr`` / BasicSR compute it.

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1]; returned as float64 ``HxW`` on the
    [0, 255] scale (i.e. in [16, 235]), not rounded.
    """
    arr = np.asarray(img)
    _check_rgb(arr)
    return _to_float01(arr) @ _Y_COEFFS + _Y_OFFSET


# --------------------------------------------------------------------------------------------------------------------
# fidelity metrics
# --------------------------------------------------------------------------------------------------------------------
def psnr_y(pred: np.ndarray, gt: np.ndarray, crop_border: int) -> float:
    """PSNR (dB) on the Y channel, data range 255, after cropping ``crop_border`` pixels per side.

    Returns ``float('inf')`` for identical images.
    """
    pred, gt = _check_pair(pred, gt)
    y1 = _crop(rgb_to_y(pred), crop_border)
    y2 = _crop(rgb_to_y(gt), crop_border)
    mse = float(np.mean((y1 - y2) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0**2 / mse)


def _ssim_gray(y1: np.ndarray, y2: np.ndarray) -> float:
    """Mean SSIM of two float64 [0, 255] grayscale images, BasicSR style ('valid' 11x11 Gaussian window)."""
    if min(y1.shape) < _SSIM_WIN:
        raise ValueError(f"SSIM needs at least {_SSIM_WIN}x{_SSIM_WIN} pixels after cropping, got {y1.shape}")
    k = _gaussian_kernel1d(_SSIM_SIGMA, _SSIM_WIN // 2)
    mu1 = _filter_valid(y1, k)
    mu2 = _filter_valid(y2, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(y1 * y1, k) - mu1_sq
    sigma2_sq = _filter_valid(y2 * y2, k) - mu2_sq
    sigma12 = _filter_valid(y1 * y2, k) - mu1_mu2
    num = (2.0 * mu1_mu2 + _SSIM_C1) * (2.0 * sigma12 + _SSIM_C2)
    den = (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    return float(np.mean(num / den))


def ssim_y(pred: np.ndarray, gt: np.ndarray, crop_border: int) -> float:
    """SSIM on the Y channel (BasicSR ``calculate_ssim(test_y_channel=True)``), after cropping ``crop_border``."""
    pred, gt = _check_pair(pred, gt)
    y1 = _crop(rgb_to_y(pred), crop_border)
    y2 = _crop(rgb_to_y(gt), crop_border)
    return _ssim_gray(y1, y2)


def high_frequency_ratio(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.5) -> float:
    """Sharpness ratio ``std(Y - blur(Y))`` of ``pred`` over that of ``gt`` (whole image, Gaussian blur ``sigma``).

    About 1 when ``pred`` carries as much high-frequency energy as the reference; bicubic upscales sit near 0.25,
    over-sharpened or noisy outputs go above 1. Returns 1.0 when both are flat and ``inf`` when only ``gt`` is.
    """
    pred, gt = _check_pair(pred, gt)
    hf = []
    for img in (pred, gt):
        y = rgb_to_y(img)
        hf.append(float(np.std(y - _gaussian_blur_same(y, sigma))))
    hf_pred, hf_gt = hf
    if hf_gt == 0.0:
        return 1.0 if hf_pred == 0.0 else float("inf")
    return hf_pred / hf_gt


def grid_pattern_strength(img: np.ndarray, period: int, sigma: float = 1.5) -> float:
    """No-reference check for a pattern that repeats every ``period`` pixels from the image's corner, such as the
    token grid of a patch-based model.

    The high-pass luma ``Y - blur(Y)`` (the detail the HF ratio measures) is averaged separately over each of the
    ``period x period`` pixel phases; returns the spread (std) of those phase means over the std of the high-pass.
    Detail that does not follow the grid averages out (about ``period / sqrt(pixels)``: 0.008 for a 512 x 512
    image at period 4); a grid does not (a 1 % grid adds about 0.1 on scikit-image's photos). ``period`` must be at
    least 2 and at most a third of each side.
    """
    arr = np.asarray(img)
    _check_rgb(arr)
    height, width = arr.shape[:2]
    if period < 2 or min(height, width) < 3 * period:
        raise ValueError(
            f"period must be >= 2 and at most a third of the image's sides, got {period} for {width}x{height}"
        )
    y = rgb_to_y(arr)
    detail = y - _gaussian_blur_same(y, sigma)
    scale = float(np.std(detail))
    if scale == 0.0:
        return 0.0
    phase_means = [detail[dy::period, dx::period].mean() for dy in range(period) for dx in range(period)]
    return float(np.std(phase_means) / scale)


def _avg_pool2(y: np.ndarray) -> np.ndarray:
    """2x2 average then 2x subsampling, as MATLAB ``conv2(Y, ones(2)/4, 'same')`` followed by ``(1:2:end)``."""
    h, w = y.shape
    y = np.pad(y, ((0, h % 2), (0, w % 2)))  # zero padding, like conv2 'same' at the far border
    return 0.25 * (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2])


def _prewitt_magnitude(y: np.ndarray) -> np.ndarray:
    """Gradient magnitude with the 3x3 Prewitt filters (divided by 3), zero-padded 'same' output."""
    p = np.pad(y, 1)
    h, w = y.shape
    # column sums over the 3 rows around each pixel, and row sums over the 3 columns
    rows3 = p[0:h, :] + p[1 : h + 1, :] + p[2 : h + 2, :]  # (h, w+2)
    cols3 = p[:, 0:w] + p[:, 1 : w + 1] + p[:, 2 : w + 2]  # (h+2, w)
    gx = (rows3[:, 2 : w + 2] - rows3[:, 0:w]) / 3.0
    gy = (cols3[2 : h + 2, :] - cols3[0:h, :]) / 3.0
    return np.sqrt(gx * gx + gy * gy)


def gmsd(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> float:
    """Gradient Magnitude Similarity Deviation (Xue et al., TIP 2014); lower is better, 0 for identical images.

    Y channel in [0, 255], 2x2 average downsampling, 3x3 Prewitt gradients, ``c = 170``; the score is the standard
    deviation (N-1 normalised, MATLAB ``std2``) of the gradient-magnitude-similarity map.
    """
    pred, gt = _check_pair(pred, gt)
    y1 = _avg_pool2(_crop(rgb_to_y(pred), crop_border))
    y2 = _avg_pool2(_crop(rgb_to_y(gt), crop_border))
    g1 = _prewitt_magnitude(y1)
    g2 = _prewitt_magnitude(y2)
    gms = (2.0 * g1 * g2 + _GMSD_T) / (g1 * g1 + g2 * g2 + _GMSD_T)
    if gms.size < 2:
        return 0.0
    return float(np.std(gms, ddof=1))


# --------------------------------------------------------------------------------------------------------------------
# learned metrics (optional, pyiqa)
# --------------------------------------------------------------------------------------------------------------------
class _DownloadBlockedError(RuntimeError):
    pass


def _blocked_download(*args: Any, **kwargs: Any) -> None:
    target = args[0] if args else kwargs.get("url", kwargs.get("file_id", "?"))
    raise _DownloadBlockedError(f"weights not cached locally (would download {target})")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid any weight download while a pyiqa metric is being built.

    Sets the Hugging Face offline switches (env and, if already imported, ``huggingface_hub.constants``) and swaps
    the URL / Google-Drive downloaders used by torch.hub and pyiqa for functions that raise. Not thread-safe.
    """
    import importlib
    import sys

    env_keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    old_env = {k: os.environ.get(k) for k in env_keys}
    patches: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, value: Any) -> None:
        if obj is not None and hasattr(obj, attr):
            patches.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)

    try:
        for k in env_keys:
            os.environ[k] = "1"
        if "huggingface_hub" in sys.modules:
            patch(sys.modules.get("huggingface_hub.constants"), "HF_HUB_OFFLINE", True)
        import torch.hub

        patch(torch.hub, "download_url_to_file", _blocked_download)
        try:
            dl = importlib.import_module("pyiqa.utils.download_util")
        except Exception:  # noqa: BLE001 - layout differs between pyiqa versions
            dl = None
        patch(dl, "download_url_to_file", _blocked_download)
        patch(dl, "download_file_from_google_drive", _blocked_download)
        yield
    finally:
        for obj, attr, value in reversed(patches):
            setattr(obj, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_LEARNED_CACHE: dict[tuple[str, str], Any] = {}


def _to_tensor(img: np.ndarray, device: str) -> Any:
    import torch

    arr = np.asarray(img)
    _check_rgb(arr)
    x = np.clip(_to_float01(arr), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)


def learned_metric(
    name: str, pred: np.ndarray, gt: np.ndarray | None = None, device: str = "cpu"
) -> tuple[float | None, str | None]:
    """Evaluate a learned IQA metric through pyiqa, fully offline.

    ``name`` is one of :data:`LEARNED_METRICS` (``lpips``, ``dists`` need ``gt``; ``musiq``, ``maniqa``,
    ``clipiqa``, ``niqe`` are no-reference and ignore it). Returns ``(value, None)`` on success and
    ``(None, reason)`` when pyiqa is missing, the weights are not cached locally, or the metric fails to build.
    Weights are never downloaded.
    """
    key = name.lower()
    if key not in LEARNED_METRICS:
        raise ValueError(f"unknown learned metric {name!r}; choose from {sorted(LEARNED_METRICS)}")
    needs_ref = LEARNED_METRICS[key]
    if needs_ref:
        if gt is None:
            return None, f"{key}: full-reference metric needs gt"
        pred, gt = _check_pair(pred, gt)
    try:
        import pyiqa  # noqa: F401
    except ImportError:
        return None, f"{key}: pyiqa not installed"

    metric = _LEARNED_CACHE.get((key, device))
    if metric is None:
        try:
            with _offline():
                metric = pyiqa.create_metric(key, device=device, as_loss=False)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not available offline"
            return None, f"{key}: unavailable offline ({type(exc).__name__}: {first_line(exc)[:160]})"
        _LEARNED_CACHE[(key, device)] = metric

    import torch

    with torch.no_grad():
        x = _to_tensor(pred, device)
        score = metric(x, _to_tensor(gt, device)) if needs_ref else metric(x)
    return float(torch.as_tensor(score).float().mean().item()), None


# --------------------------------------------------------------------------------------------------------------------
# convenience
# --------------------------------------------------------------------------------------------------------------------
def compute_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    crop_border: int,
    names: Sequence[str] = FIDELITY_METRICS,
    device: str = "cpu",
) -> dict[str, float]:
    """Compute several metrics at once and return ``{name: value}`` as plain floats.

    Supported names: ``psnr``, ``ssim``, ``gmsd`` (all on cropped Y), ``hf_ratio`` (uncropped) and the learned ones
    of :data:`LEARNED_METRICS`; a learned metric that is unavailable yields ``nan`` and a ``RuntimeWarning`` with the
    reason.
    """
    pred, gt = _check_pair(pred, gt)
    out: dict[str, float] = {}
    for name in names:
        key = name.lower()
        if key == "psnr":
            out[name] = psnr_y(pred, gt, crop_border)
        elif key == "ssim":
            out[name] = ssim_y(pred, gt, crop_border)
        elif key == "gmsd":
            out[name] = gmsd(pred, gt, crop_border)
        elif key in ("hf_ratio", "high_frequency_ratio"):
            out[name] = high_frequency_ratio(pred, gt)
        elif key in LEARNED_METRICS:
            value, reason = learned_metric(key, pred, gt, device=device)
            if value is None:
                warnings.warn(f"skipping {reason}", RuntimeWarning, stacklevel=2)
                out[name] = float("nan")
            else:
                out[name] = value
        else:
            raise ValueError(
                f"unknown metric {name!r}; choose from {list(FIDELITY_METRICS) + sorted(LEARNED_METRICS)}"
            )
    return out
