"""Tests for pipeline_teasr.metrics (fast, CPU only, no network)."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from pipeline_teasr import metrics
from pipeline_teasr.metrics import (
    compute_metrics,
    gmsd,
    grid_pattern_strength,
    high_frequency_ratio,
    learned_metric,
    psnr_y,
    rgb_to_y,
    ssim_y,
)


def _natural_like(h: int = 64, w: int = 72, seed: int = 0) -> np.ndarray:
    """Smooth gradients + oriented sinusoids + a few hard edges + mild texture, float RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        base = 0.3 + 0.3 * (xx / w) + 0.1 * c * (yy / h)
        base += 0.12 * np.sin(2 * np.pi * (xx * (0.07 + 0.02 * c) + yy * 0.05))
        base += 0.15 * ((xx > w * 0.6) & (yy < h * 0.5))
        base += 0.03 * rng.standard_normal((h, w))
        chans.append(base)
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0)


def _box_blur(img: np.ndarray, k: int = 5) -> np.ndarray:
    pad = k // 2
    p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for i in range(k):
        for j in range(k):
            out += p[i : i + img.shape[0], j : j + img.shape[1]]
    return out / (k * k)


def _noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + sigma * rng.standard_normal(img.shape), 0.0, 1.0)


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return _natural_like()


# --------------------------------------------------------------------------------------------------------------------
# rgb_to_y
# --------------------------------------------------------------------------------------------------------------------
def test_rgb_to_y_matlab_values() -> None:
    img = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == (1, 5)
    np.testing.assert_allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-9)


def test_rgb_to_y_dtypes_agree(gt: np.ndarray) -> None:
    u8 = np.round(gt * 255).astype(np.uint8)
    y_f = rgb_to_y(u8.astype(np.float64) / 255.0)
    np.testing.assert_allclose(rgb_to_y(u8), y_f, atol=1e-10)
    np.testing.assert_allclose(rgb_to_y(u8.astype(np.uint16) * 257), y_f, atol=1e-10)
    with pytest.raises(TypeError):
        rgb_to_y(u8.astype(np.int32))
    with pytest.raises(ValueError):
        rgb_to_y(gt[..., 0])


# --------------------------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------------------------
def test_psnr_identical_is_inf(gt: np.ndarray) -> None:
    assert psnr_y(gt, gt.copy(), 4) == float("inf")


def test_psnr_constant_offset_one_level() -> None:
    gt = np.random.default_rng(3).uniform(0.1, 0.9, size=(32, 32, 3))
    # adding d to R, G and B shifts Y by d * (65.481 + 128.553 + 24.966) = 219 d -> Y shifted by exactly 1 level
    pred = gt + 1.0 / 219.0
    assert psnr_y(pred, gt, 0) == pytest.approx(20 * math.log10(255.0 / 1.0), abs=1e-9)
    # uint8: +1 on every channel -> Y shift of 219/255
    gt8 = np.round(gt * 255).astype(np.uint8)
    assert psnr_y(gt8 + np.uint8(1), gt8, 2) == pytest.approx(20 * math.log10(255.0 / (219.0 / 255.0)), abs=1e-9)


def test_psnr_matches_hand_formula(gt: np.ndarray) -> None:
    pred = _noisy(gt, 0.05)
    c = 4
    y1, y2 = rgb_to_y(pred)[c:-c, c:-c], rgb_to_y(gt)[c:-c, c:-c]
    expected = 10 * np.log10(255.0**2 / np.mean((y1 - y2) ** 2))
    assert psnr_y(pred, gt, c) == pytest.approx(float(expected), rel=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# SSIM vs scikit-image
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["noise", "blur", "shift"])
@pytest.mark.parametrize("crop", [0, 4])
def test_ssim_matches_skimage(gt: np.ndarray, kind: str, crop: int) -> None:
    skm = pytest.importorskip("skimage.metrics")
    if kind == "noise":
        pred = _noisy(gt, 0.08)
    elif kind == "blur":
        pred = _box_blur(gt)
    else:
        pred = np.clip(np.roll(gt, 1, axis=1) * 0.9 + 0.05, 0, 1)
    sl = slice(crop, -crop) if crop else slice(None)
    y1, y2 = rgb_to_y(pred)[sl, sl], rgb_to_y(gt)[sl, sl]
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    # skimage filters with reflect padding ('same' size), then averages the map only over the region at least
    # (win_size - 1) / 2 = 5 pixels from the border: exactly the 'valid' region BasicSR keeps. Its gaussian window is
    # 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 taps, so both implementations agree to float64 round-off.
    mean_ref, full_map = skm.structural_similarity(y1, y2, full=True, **kw)
    ours = ssim_y(pred, gt, crop)
    assert ours == pytest.approx(float(full_map[5:-5, 5:-5].mean()), abs=1e-10)
    assert ours == pytest.approx(float(mean_ref), abs=1e-10)
    assert 0.0 < ours < 1.0


def test_ssim_identical_is_one(gt: np.ndarray) -> None:
    assert ssim_y(gt, gt.copy(), 4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_too_small_after_crop_raises() -> None:
    img = np.zeros((20, 20, 3))
    with pytest.raises(ValueError):
        ssim_y(img, img, 5)


# --------------------------------------------------------------------------------------------------------------------
# shared behaviour: cropping, dtypes, shape checks
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [psnr_y, ssim_y, gmsd])
def test_crop_border_really_crops(gt: np.ndarray, fn) -> None:
    c = 4
    pred = _noisy(gt, 0.05)
    base = fn(pred, gt, c)
    changed = pred.copy()
    changed[:c] = 1.0 - changed[:c]
    changed[-c:] = 0.0
    changed[:, :c] = 0.5
    changed[:, -c:] = 1.0
    assert fn(changed, gt, c) == pytest.approx(base, abs=1e-12)
    inner = pred.copy()
    inner[c : c + 3, c : c + 3] = 1.0 - inner[c : c + 3, c : c + 3]
    assert fn(inner, gt, c) != pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("fn", [psnr_y, ssim_y, gmsd])
def test_uint8_uint16_float_agree(gt: np.ndarray, fn) -> None:
    a8 = np.round(gt * 255).astype(np.uint8)
    b8 = np.round(_noisy(gt, 0.05) * 255).astype(np.uint8)
    ref = fn(a8.astype(np.float32) / 255.0, b8.astype(np.float32) / 255.0, 4)
    assert fn(a8, b8, 4) == pytest.approx(ref, rel=1e-6)
    assert fn(a8.astype(np.uint16) * 257, b8.astype(np.uint16) * 257, 4) == pytest.approx(fn(a8, b8, 4), rel=1e-12)


@pytest.mark.parametrize("fn", [psnr_y, ssim_y, gmsd, high_frequency_ratio])
def test_shape_mismatch_raises(gt: np.ndarray, fn) -> None:
    other = gt[:-2]
    args = (other, gt, 0) if fn is not high_frequency_ratio else (other, gt)
    with pytest.raises(ValueError) as err:
        fn(*args)
    msg = str(err.value)
    assert str(other.shape) in msg and str(gt.shape) in msg


# --------------------------------------------------------------------------------------------------------------------
# GMSD
# --------------------------------------------------------------------------------------------------------------------
def test_gmsd_zero_for_identical_and_grows_with_noise(gt: np.ndarray) -> None:
    assert gmsd(gt, gt.copy()) == 0.0
    scores = [gmsd(_noisy(gt, s), gt) for s in (0.01, 0.03, 0.1, 0.2)]
    assert all(0.0 < s < 1.0 for s in scores)
    assert scores == sorted(scores) and scores[-1] > 2 * scores[0]


def test_gmsd_matches_scipy_reference(gt: np.ndarray) -> None:
    """Independent re-derivation of the paper's MATLAB code with scipy.ndimage (conv2 'same', zero padding)."""
    ndi = pytest.importorskip("scipy.ndimage")
    pred = _noisy(gt[:-1, :-3], 0.05)  # odd height to exercise the padding of the 2x2 average
    ref = gt[:-1, :-3]

    def y_of(img: np.ndarray) -> np.ndarray:
        return 16.0 + img[..., 0] * 65.481 + img[..., 1] * 128.553 + img[..., 2] * 24.966

    def grad(y: np.ndarray) -> np.ndarray:
        # MATLAB: aveY = conv2(Y, ones(2)/4, 'same'); Y = aveY(1:2:end, 1:2:end)
        full = np.zeros((y.shape[0] + 1, y.shape[1] + 1))
        for di in range(2):
            for dj in range(2):
                full[di : di + y.shape[0], dj : dj + y.shape[1]] += y / 4.0
        ave = full[1 : y.shape[0] + 1, 1 : y.shape[1] + 1]
        ys = ave[::2, ::2]
        dx = np.array([[1, 0, -1]] * 3, dtype=np.float64) / 3.0
        gx = ndi.convolve(ys, dx, mode="constant", cval=0.0)
        gy = ndi.convolve(ys, dx.T, mode="constant", cval=0.0)
        return np.sqrt(gx**2 + gy**2)

    g1, g2 = grad(y_of(pred)), grad(y_of(ref))
    gms = (2 * g1 * g2 + 170.0) / (g1**2 + g2**2 + 170.0)
    assert gmsd(pred, ref) == pytest.approx(float(np.std(gms, ddof=1)), rel=1e-10)


# --------------------------------------------------------------------------------------------------------------------
# high-frequency ratio
# --------------------------------------------------------------------------------------------------------------------
def test_hf_ratio(gt: np.ndarray) -> None:
    assert high_frequency_ratio(gt, gt.copy()) == pytest.approx(1.0)
    blurred = high_frequency_ratio(_box_blur(gt), gt)
    noisy = high_frequency_ratio(_noisy(gt, 0.1), gt)
    assert 0.0 < blurred < 1.0
    assert noisy > 1.0
    flat = np.full_like(gt, 0.5)
    assert high_frequency_ratio(flat, flat) == 1.0
    assert high_frequency_ratio(gt, flat) == float("inf")


# --------------------------------------------------------------------------------------------------------------------
# learned metrics (pyiqa optional)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_pyiqa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # makes `import pyiqa` raise ImportError
    monkeypatch.setattr(metrics, "_LEARNED_CACHE", {})


@pytest.mark.parametrize("name", sorted(metrics.LEARNED_METRICS))
def test_learned_metric_reports_missing_pyiqa(gt: np.ndarray, name: str, no_pyiqa: None) -> None:
    value, reason = learned_metric(name, gt, gt)
    assert value is None
    assert isinstance(reason, str) and "pyiqa" in reason and name in reason


def test_learned_metric_validation(gt: np.ndarray, no_pyiqa: None) -> None:
    with pytest.raises(ValueError):
        learned_metric("not_a_metric", gt, gt)
    value, reason = learned_metric("lpips", gt, None)
    assert value is None and "gt" in reason


def test_learned_metric_blocks_downloads(gt: np.ndarray, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A (fake) pyiqa whose metric would download weights gets a skip reason; nothing is fetched."""
    import os

    import torch.hub

    original = torch.hub.download_url_to_file
    seen: dict[str, str | None] = {}

    def create_metric(name: str, device: str = "cpu", as_loss: bool = False):
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        torch.hub.download_url_to_file("https://example.invalid/weights.pth", str(tmp_path / "w.pth"))
        raise AssertionError("download was not blocked")

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    monkeypatch.setattr(metrics, "_LEARNED_CACHE", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    value, reason = learned_metric("musiq", gt)
    assert value is None and "musiq" in reason and "not cached" in reason
    assert seen["offline"] == "1"
    assert not (tmp_path / "w.pth").exists()
    assert torch.hub.download_url_to_file is original  # patch undone
    assert "HF_HUB_OFFLINE" not in os.environ


def test_learned_metric_with_fake_metric(gt: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def create_metric(name: str, device: str = "cpu", as_loss: bool = False):
        def fr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            assert x.shape == (1, 3, *gt.shape[:2]) and x.dtype == torch.float32
            return (x - y).abs().mean(dim=(1, 2, 3))

        return fr

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    monkeypatch.setattr(metrics, "_LEARNED_CACHE", {})
    value, reason = learned_metric("lpips", gt, _noisy(gt, 0.05))
    assert reason is None and isinstance(value, float) and value > 0


# --------------------------------------------------------------------------------------------------------------------
# compute_metrics
# --------------------------------------------------------------------------------------------------------------------
def test_compute_metrics(gt: np.ndarray, no_pyiqa: None) -> None:
    pred = _noisy(gt, 0.05)
    out = compute_metrics(pred, gt, crop_border=4)
    assert set(out) == {"psnr", "ssim", "gmsd", "hf_ratio"}
    assert all(type(v) is float for v in out.values())
    assert out["psnr"] == psnr_y(pred, gt, 4)
    assert out["ssim"] == ssim_y(pred, gt, 4)
    assert out["gmsd"] == gmsd(pred, gt, 4)
    assert out["hf_ratio"] == high_frequency_ratio(pred, gt)
    with pytest.warns(RuntimeWarning, match="pyiqa"):
        out2 = compute_metrics(pred, gt, 4, names=("psnr", "lpips"))
    assert math.isnan(out2["lpips"])
    with pytest.raises(ValueError):
        compute_metrics(pred, gt, 4, names=("fid",))


def test_grid_pattern_strength_flags_a_faint_pattern_at_the_token_period():
    photo = _natural_like(192, 240)
    yy, xx = np.mgrid[0:192, 0:240]
    grid = lambda period: 0.01 * (((yy % period) == 0) | ((xx % period) == 0))[..., None]  # noqa: E731
    clean = grid_pattern_strength(photo, 4)
    assert clean < 0.04
    assert grid_pattern_strength(np.clip(photo + grid(4), 0, 1), 4) > 4 * clean
    # A pattern of another period averages out, and contrast does not matter.
    assert grid_pattern_strength(np.clip(photo + grid(5), 0, 1), 4) < 1.5 * clean
    assert grid_pattern_strength(0.5 * photo, 4) == pytest.approx(clean)
    assert grid_pattern_strength(np.full((16, 16, 3), 0.5), 4) == 0.0
    with pytest.raises(ValueError, match="period"):
        grid_pattern_strength(photo, 100)
