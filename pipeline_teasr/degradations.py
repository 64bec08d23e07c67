"""Real-ESRGAN-style second-order real-world degradation model, batched on the training device.

The pipeline follows Real-ESRGAN (Wang et al., 2021): blur -> random resize -> noise -> JPEG, applied twice, and a
final step that resizes to the low-resolution size and applies a sinc (ringing) filter, either before or after the
last JPEG. Blur kernels, noise and JPEG quality are drawn per batch item; resize scale and interpolation mode are drawn
per batch, because the batch must keep one spatial size.

All randomness comes from one ``torch.Generator``: the same seed and input give bit-identical output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d

__all__ = [
    "KERNEL_TYPES",
    "RESIZE_MODES",
    "DegradationConfig",
    "DegradationStageConfig",
    "RealWorldDegradation",
    "add_noise",
    "anisotropic_gaussian_kernels",
    "apply_blur",
    "bicubic_degradation",
    "generalized_gaussian_kernels",
    "isotropic_gaussian_kernels",
    "jpeg",
    "plateau_kernels",
    "pulse_kernels",
    "random_jpeg",
    "random_kernels",
    "random_resize",
    "random_sinc_kernels",
    "resize",
    "sinc_kernels",
]

KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")


def _default_kernel_probs() -> dict[str, float]:
    return {
        "iso": 0.45,
        "aniso": 0.25,
        "generalized_iso": 0.12,
        "generalized_aniso": 0.03,
        "plateau_iso": 0.12,
        "plateau_aniso": 0.03,
    }


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DegradationStageConfig:
    """Settings of one degradation order (blur -> resize -> noise -> JPEG).

    Sigma ranges are in HQ pixels, noise sigma in 8-bit levels (0-255). ``resize_probs`` is (up, down, keep). For the
    second order, resize scales are relative to the final LQ size, and its JPEG is the final JPEG.
    """

    blur_prob: float = 1.0
    kernel_size_range: tuple[int, int] = (7, 21)
    kernel_probs: dict[str, float] = field(default_factory=_default_kernel_probs)
    sinc_prob: float = 0.1
    sinc_cutoff_range: tuple[float, float] = (math.pi / 5, math.pi)
    sinc_cutoff_range_small_kernel: tuple[float, float] = (math.pi / 3, math.pi)  # for kernel size < 13
    sigma_range: tuple[float, float] = (0.2, 3.0)
    beta_gaussian_range: tuple[float, float] = (0.5, 4.0)
    beta_plateau_range: tuple[float, float] = (1.0, 2.0)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    noise_prob: float = 1.0
    gaussian_noise_prob: float = 0.5
    noise_sigma_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        _check_kernel_size_range(self.kernel_size_range, "kernel_size_range")
        unknown = set(self.kernel_probs) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"Unknown kernel types {sorted(unknown)}; expected a subset of {KERNEL_TYPES}.")
        if sum(self.kernel_probs.values()) <= 0:
            raise ValueError("kernel_probs must have a positive sum.")
        if len(self.resize_probs) != 3 or sum(self.resize_probs) <= 0:
            raise ValueError("resize_probs must be three non-negative weights (up, down, keep) with a positive sum.")
        if not self.resize_modes or set(self.resize_modes) - set(RESIZE_MODES):
            raise ValueError(f"resize_modes must be a non-empty subset of {RESIZE_MODES}.")
        for name in ("blur_prob", "sinc_prob", "noise_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if self.resize_range[0] <= 0 or self.resize_range[0] > 1 or self.resize_range[1] < 1:
            raise ValueError(f"resize_range must satisfy 0 < low <= 1 <= high, got {self.resize_range}.")


def _second_stage_defaults() -> DegradationStageConfig:
    return DegradationStageConfig(
        blur_prob=0.8,
        sigma_range=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    """Full second-order degradation settings; defaults follow Real-ESRGAN x4plus.

    ``second.blur_prob`` is Real-ESRGAN's second-order blur probability. ``resize_then_jpeg_prob`` is the chance that
    the final step is (resize + sinc, then JPEG) rather than (JPEG, then resize + sinc).
    """

    scale: int = 4
    first: DegradationStageConfig = field(default_factory=DegradationStageConfig)
    second: DegradationStageConfig = field(default_factory=_second_stage_defaults)
    final_sinc_prob: float = 0.8
    final_sinc_kernel_size_range: tuple[int, int] = (7, 21)
    final_sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    final_resize_modes: tuple[str, ...] = RESIZE_MODES
    resize_then_jpeg_prob: float = 0.5

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}.")
        _check_kernel_size_range(self.final_sinc_kernel_size_range, "final_sinc_kernel_size_range")
        if not self.final_resize_modes or set(self.final_resize_modes) - set(RESIZE_MODES):
            raise ValueError(f"final_resize_modes must be a non-empty subset of {RESIZE_MODES}.")
        for name in ("final_sinc_prob", "resize_then_jpeg_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")

    @classmethod
    def light(cls, scale: int = 4) -> DegradationConfig:
        """Milder ranges (less blur, noise and compression), suited to small models."""
        first = DegradationStageConfig(
            kernel_size_range=(7, 15),
            sinc_prob=0.05,
            sigma_range=(0.2, 1.5),
            beta_gaussian_range=(0.5, 2.0),
            resize_probs=(0.2, 0.5, 0.3),
            resize_range=(0.5, 1.5),
            noise_sigma_range=(1.0, 10.0),
            poisson_scale_range=(0.05, 1.0),
            gray_noise_prob=0.4,
            jpeg_range=(60.0, 95.0),
        )
        second = DegradationStageConfig(
            blur_prob=0.5,
            kernel_size_range=(7, 15),
            sinc_prob=0.05,
            sigma_range=(0.2, 1.0),
            beta_gaussian_range=(0.5, 2.0),
            resize_probs=(0.3, 0.3, 0.4),
            resize_range=(0.6, 1.2),
            noise_prob=0.7,
            noise_sigma_range=(1.0, 8.0),
            poisson_scale_range=(0.05, 0.8),
            jpeg_range=(70.0, 95.0),
        )
        return cls(
            scale=scale,
            first=first,
            second=second,
            final_sinc_prob=0.5,
            final_sinc_kernel_size_range=(7, 15),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict (JSON-friendly) view of the config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationConfig:
        """Inverse of :meth:`to_dict`; lists are turned back into tuples."""
        stage_names = {f.name for f in fields(DegradationStageConfig)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("first", "second") and isinstance(value, dict):
                stage = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items() if k in stage_names}
                base = DegradationStageConfig() if key == "first" else _second_stage_defaults()
                kwargs[key] = replace(base, **stage)
            else:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


def _check_kernel_size_range(size_range: tuple[int, int], name: str) -> None:
    low, high = size_range
    if low < 1 or high < low or low % 2 == 0 or high % 2 == 0:
        raise ValueError(f"{name} must be odd sizes with 1 <= low <= high, got {size_range}.")


# --------------------------------------------------------------------------------------------------------------------
# Random draws (always from the generator's device, then moved)
# --------------------------------------------------------------------------------------------------------------------


def _rand(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).cpu()


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * _rand(n, generator)


def _choice(weights: list[float] | tuple[float, ...], n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices drawn with the given (unnormalised) weights, via inverse CDF so each draw costs one uniform."""
    w = torch.tensor(weights, dtype=torch.float64)
    cdf = torch.cumsum(w / w.sum(), 0)
    index = torch.searchsorted(cdf, _rand(n, generator).double(), right=True)
    return index.clamp_max(len(weights) - 1)


def _random_odd_sizes(size_range: tuple[int, int], n: int, generator: torch.Generator) -> torch.Tensor:
    low, high = size_range
    count = (high - low) // 2 + 1
    index = torch.randint(0, count, (n,), generator=generator, device=generator.device).cpu()
    return low + 2 * index


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------


def _grid(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """x^T Sigma^-1 x on a (size, size) grid, Sigma = R diag(sx^2, sy^2) R^T; shape (B, size, size)."""
    xx, yy = _grid(size, sigma_x.device, sigma_x.dtype)
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    return (u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2


def _normalise(kernels: torch.Tensor) -> torch.Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def anisotropic_gaussian_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, size: int
) -> torch.Tensor:
    """Rotated anisotropic Gaussian kernels, (B,) parameters -> (B, size, size), each summing to 1."""
    return _normalise(torch.exp(-0.5 * _quadratic_form(sigma_x, sigma_y, theta, size)))


def isotropic_gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropic Gaussian kernels, (B,) sigmas -> (B, size, size)."""
    return anisotropic_gaussian_kernels(sigma, sigma, torch.zeros_like(sigma), size)


def generalized_gaussian_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor, size: int
) -> torch.Tensor:
    """Generalised Gaussian kernels exp(-0.5 * q^beta), q the Mahalanobis form; (B, size, size)."""
    q = _quadratic_form(sigma_x, sigma_y, theta, size)
    return _normalise(torch.exp(-0.5 * q.pow(beta[:, None, None])))


def plateau_kernels(
    sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor, size: int
) -> torch.Tensor:
    """Plateau-shaped kernels 1 / (1 + q^beta); (B, size, size)."""
    q = _quadratic_form(sigma_x, sigma_y, theta, size)
    return _normalise(1.0 / (1.0 + q.pow(beta[:, None, None])))


def sinc_kernels(cutoff: torch.Tensor, size: int) -> torch.Tensor:
    """Circular low-pass (2-D sinc / Airy) kernels with angular cutoff in (0, pi]; (B, size, size)."""
    xx, yy = _grid(size, cutoff.device, cutoff.dtype)
    r = torch.sqrt(xx**2 + yy**2)
    wc = cutoff[:, None, None]
    r_safe = torch.where(r == 0, torch.ones_like(r), r)
    kernel = wc * torch.special.bessel_j1(wc * r_safe) / (2 * math.pi * r_safe)
    kernel = torch.where(r == 0, wc**2 / (4 * math.pi), kernel)
    return _normalise(kernel)


def pulse_kernels(batch: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identity (delta) kernels, (batch, size, size)."""
    kernels = torch.zeros(batch, size, size, device=device)
    kernels[:, size // 2, size // 2] = 1.0
    return kernels


def _crop_support(kernels: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Zero each kernel outside its centred (size_i, size_i) window and renormalise (zero-padding to the grid)."""
    grid = kernels.shape[-1]
    xx, yy = _grid(grid, kernels.device, kernels.dtype)
    half = ((sizes.to(kernels) - 1) / 2)[:, None, None]
    inside = (xx.abs() <= half) & (yy.abs() <= half)
    return _normalise(kernels * inside)


def _random_beta(beta_range: tuple[float, float], n: int, generator: torch.Generator) -> torch.Tensor:
    """Beta below or above 1 with equal chance, as in Real-ESRGAN."""
    low, high = beta_range
    below = _uniform(min(low, 1.0), 1.0, n, generator)
    above = _uniform(1.0, max(high, 1.0), n, generator)
    return torch.where(_rand(n, generator) < 0.5, below, above)


def random_sinc_kernels(
    batch: int,
    size_range: tuple[int, int],
    cutoff_range: tuple[float, float],
    generator: torch.Generator,
    cutoff_range_small_kernel: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Random sinc kernels with per-sample odd size, zero-padded to (batch, max_size, max_size)."""
    sizes = _random_odd_sizes(size_range, batch, generator)
    cutoff = _uniform(*cutoff_range, batch, generator)
    if cutoff_range_small_kernel is not None:
        cutoff = torch.where(sizes < 13, _uniform(*cutoff_range_small_kernel, batch, generator), cutoff)
    return _crop_support(sinc_kernels(cutoff, size_range[1]), sizes)


def random_kernels(batch: int, stage: DegradationStageConfig, generator: torch.Generator) -> torch.Tensor:
    """One random blur kernel per sample, (batch, K, K) with K = stage.kernel_size_range[1], on CPU.

    Each kernel has its own odd support size drawn from ``kernel_size_range`` (zero-padded to K) and type drawn from
    ``kernel_probs``; with probability ``sinc_prob`` it is a sinc kernel instead.
    """
    size = stage.kernel_size_range[1]
    sizes = _random_odd_sizes(stage.kernel_size_range, batch, generator)
    probs = [stage.kernel_probs.get(name, 0.0) for name in KERNEL_TYPES]
    kind = _choice(probs, batch, generator)
    names = [KERNEL_TYPES[i] for i in kind.tolist()]
    iso = torch.tensor([name.endswith("iso") and not name.endswith("aniso") for name in names])

    sigma_x = _uniform(*stage.sigma_range, batch, generator)
    sigma_y = torch.where(iso, sigma_x, _uniform(*stage.sigma_range, batch, generator))
    theta = torch.where(iso, torch.zeros(batch), _uniform(-math.pi, math.pi, batch, generator))
    beta_g = _random_beta(stage.beta_gaussian_range, batch, generator)
    beta_p = _random_beta(stage.beta_plateau_range, batch, generator)

    gaussian = anisotropic_gaussian_kernels(sigma_x, sigma_y, theta, size)
    generalized = generalized_gaussian_kernels(sigma_x, sigma_y, theta, beta_g, size)
    plateau = plateau_kernels(sigma_x, sigma_y, theta, beta_p, size)
    is_generalized = torch.tensor([name.startswith("generalized") for name in names])[:, None, None]
    is_plateau = torch.tensor([name.startswith("plateau") for name in names])[:, None, None]
    kernels = torch.where(is_generalized, generalized, torch.where(is_plateau, plateau, gaussian))
    kernels = _crop_support(kernels, sizes)

    use_sinc = (_rand(batch, generator) < stage.sinc_prob)[:, None, None]
    sinc = random_sinc_kernels(
        batch, stage.kernel_size_range, stage.sinc_cutoff_range, generator, stage.sinc_cutoff_range_small_kernel
    )
    return torch.where(use_sinc, sinc, kernels)


# --------------------------------------------------------------------------------------------------------------------
# Image operations
# --------------------------------------------------------------------------------------------------------------------


def apply_blur(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each sample with its own kernel, (B, C, H, W) x (B, k, k); reflect border (replicate if tiny)."""
    k = kernels.shape[-1]
    border = "reflect" if min(img.shape[-2:]) > k // 2 else "replicate"
    return filter2d(img, kernels.to(img), border_type=border)


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to ``size`` with area / bilinear / bicubic interpolation (no antialias, as in Real-ESRGAN)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}.")
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def random_resize(
    img: torch.Tensor,
    stage: DegradationStageConfig,
    generator: torch.Generator,
    base_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize the batch by a random up/down/keep scale relative to ``base_size`` (default: the input size)."""
    base_h, base_w = base_size if base_size is not None else img.shape[-2:]
    direction = int(_choice(stage.resize_probs, 1, generator))
    low, high = stage.resize_range
    up, down = float(_uniform(1.0, high, 1, generator)), float(_uniform(low, 1.0, 1, generator))
    scale = (up, down, 1.0)[direction]
    mode = stage.resize_modes[int(_choice([1.0] * len(stage.resize_modes), 1, generator))]
    size = (max(1, int(base_h * scale)), max(1, int(base_w * scale)))
    return resize(img, size, mode)


def _to_gray(img: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype)
    return (img * weights[None, :, None, None]).sum(dim=1, keepdim=True)


def _poisson_noise(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Unit-scale Poisson noise; intensity levels follow the image's number of distinct 8-bit values."""
    quantised = (img * 255).round().clamp(0, 255) / 255
    levels = torch.tensor(
        [2 ** math.ceil(math.log2(max(2, torch.unique(sample).numel()))) for sample in quantised],
        device=img.device,
        dtype=img.dtype,
    )[:, None, None, None]
    rate = (quantised * levels).to(generator.device)
    sampled = torch.poisson(rate, generator=generator).to(img.device)
    return sampled / levels - quantised


def add_noise(img: torch.Tensor, stage: DegradationStageConfig, generator: torch.Generator) -> torch.Tensor:
    """Per sample: Gaussian or Poisson noise, colour or gray, with probability ``stage.noise_prob``; clamped."""
    b, c, h, w = img.shape
    device = img.device
    apply = (_rand(b, generator) < stage.noise_prob).to(device)[:, None, None, None]
    gaussian = (_rand(b, generator) < stage.gaussian_noise_prob).to(device)[:, None, None, None]
    gray = (_rand(b, generator) < stage.gray_noise_prob).to(device)[:, None, None, None]
    sigma = (_uniform(*stage.noise_sigma_range, b, generator) / 255).to(img)[:, None, None, None]
    poisson_scale = _uniform(*stage.poisson_scale_range, b, generator).to(img)[:, None, None, None]

    color_randn = torch.randn(b, c, h, w, generator=generator, device=generator.device).to(img)
    gray_randn = torch.randn(b, 1, h, w, generator=generator, device=generator.device).to(img)
    noise = sigma * torch.where(gray, gray_randn.expand_as(img), color_randn)

    need_poisson = (apply & ~gaussian).flatten()
    if bool(need_poisson.any()):
        idx = need_poisson.nonzero().flatten()
        sub = img[idx]
        color_p = _poisson_noise(sub, generator)
        gray_p = _poisson_noise(_to_gray(sub), generator).expand_as(sub)
        noise_p = poisson_scale[idx] * torch.where(gray[idx], gray_p, color_p)
        noise = noise.index_copy(0, idx, noise_p)
    return torch.where(apply, img + noise, img).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Batched JPEG encode-decode with per-sample quality (B,) via kornia's differentiable codec."""
    return jpeg_codec_differentiable(img.clamp(0, 1), quality.to(img)).clamp(0, 1)


def random_jpeg(img: torch.Tensor, stage: DegradationStageConfig, generator: torch.Generator) -> torch.Tensor:
    """JPEG with per-sample quality from ``stage.jpeg_range``, applied with probability ``stage.jpeg_prob``."""
    b = img.shape[0]
    apply = _rand(b, generator) < stage.jpeg_prob
    quality = _uniform(*stage.jpeg_range, b, generator)
    if not bool(apply.any()):
        return img
    compressed = jpeg(img, quality.to(img.device))
    return torch.where(apply.to(img.device)[:, None, None, None], compressed, img.clamp(0, 1))


def _random_blur(img: torch.Tensor, stage: DegradationStageConfig, generator: torch.Generator) -> torch.Tensor:
    b = img.shape[0]
    apply = (_rand(b, generator) < stage.blur_prob)[:, None, None]
    kernels = random_kernels(b, stage, generator)
    if not bool(apply.any()):
        return img
    kernels = torch.where(apply, kernels, pulse_kernels(b, kernels.shape[-1]))
    return apply_blur(img, kernels.to(img.device))


def _check_hq(hq: torch.Tensor, scale: int) -> None:
    if not isinstance(hq, torch.Tensor) or hq.ndim != 4 or hq.shape[1] != 3:
        shape = tuple(hq.shape) if isinstance(hq, torch.Tensor) else type(hq).__name__
        raise ValueError(f"hq must be a (B, 3, H, W) tensor, got {shape}.")
    if not hq.is_floating_point():
        raise ValueError(f"hq must be a floating-point tensor in [0, 1], got dtype {hq.dtype}.")
    h, w = hq.shape[-2:]
    if h == 0 or w == 0 or h % scale or w % scale:
        raise ValueError(f"hq height and width must be positive multiples of scale={scale}, got {h}x{w}.")


def bicubic_degradation(hq: torch.Tensor, scale: int) -> torch.Tensor:
    """Plain bicubic x``scale`` downsampling with antialias, clamped to [0, 1]."""
    _check_hq(hq, scale)
    h, w = hq.shape[-2:]
    lq = F.interpolate(hq, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return lq.clamp(0, 1)


# --------------------------------------------------------------------------------------------------------------------
# Full pipeline
# --------------------------------------------------------------------------------------------------------------------


class RealWorldDegradation:
    """Real-ESRGAN second-order degradation: (B, 3, H, W) HQ in [0, 1] -> (B, 3, H/scale, W/scale) LQ.

    Example::

        degrade = RealWorldDegradation(DegradationConfig.light())
        lq = degrade(hq, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config if config is not None else DegradationConfig()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @torch.no_grad()
    def __call__(self, hq: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.config
        _check_hq(hq, cfg.scale)
        if generator is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator().manual_seed(seed)
        b, _, h, w = hq.shape
        lq_size = (h // cfg.scale, w // cfg.scale)
        out = hq.float()

        # First order.
        out = _random_blur(out, cfg.first, generator)
        out = random_resize(out, cfg.first, generator)
        out = add_noise(out, cfg.first, generator)
        out = random_jpeg(out, cfg.first, generator)

        # Second order.
        out = _random_blur(out, cfg.second, generator)
        out = random_resize(out, cfg.second, generator, base_size=lq_size)
        out = add_noise(out, cfg.second, generator)

        # Final step: resize to the LQ size + sinc, and JPEG, in random order.
        use_sinc = (_rand(b, generator) < cfg.final_sinc_prob)[:, None, None]
        sinc = random_sinc_kernels(b, cfg.final_sinc_kernel_size_range, cfg.final_sinc_cutoff_range, generator)
        mode = cfg.final_resize_modes[int(_choice([1.0] * len(cfg.final_resize_modes), 1, generator))]
        resize_first = bool(_rand(1, generator) < cfg.resize_then_jpeg_prob)

        def resize_and_sinc(x: torch.Tensor) -> torch.Tensor:
            x = resize(x, lq_size, mode)
            if bool(use_sinc.any()):
                kernels = torch.where(use_sinc, sinc, pulse_kernels(b, sinc.shape[-1]))
                x = apply_blur(x, kernels.to(x.device))
            return x

        if resize_first:
            out = random_jpeg(resize_and_sinc(out), cfg.second, generator)
        else:
            out = resize_and_sinc(random_jpeg(out, cfg.second, generator))

        out = (out.clamp(0, 1) * 255).round() / 255
        return out.to(hq.dtype)
