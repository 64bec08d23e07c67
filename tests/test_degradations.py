import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline_teasr.degradations import (
    KERNEL_TYPES,
    DegradationConfig,
    DegradationStageConfig,
    RealWorldDegradation,
    anisotropic_gaussian_kernels,
    apply_blur,
    bicubic_degradation,
    generalized_gaussian_kernels,
    isotropic_gaussian_kernels,
    jpeg,
    plateau_kernels,
    pulse_kernels,
    random_kernels,
    sinc_kernels,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _textured_image(batch: int = 2, size: int = 128, seed: int = 0) -> torch.Tensor:
    """Deterministic textured RGB image: oriented sinusoids, a checkerboard, sharp discs and fine noise."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = []
    for _ in range(batch):
        img = torch.zeros(3, size, size)
        for _ in range(6):
            freq = 0.05 + 0.4 * torch.rand(1, generator=g)
            angle = math.pi * torch.rand(1, generator=g)
            phase = 2 * math.pi * torch.rand(1, generator=g)
            wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
            img += torch.rand(3, 1, 1, generator=g) * wave
        img += 0.8 * (((xx // 4 + yy // 4) % 2) - 0.5)
        for _ in range(5):
            cx, cy, r = (size * torch.rand(3, generator=g)).tolist()
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (r / 3) ** 2).float()
            img += (torch.rand(3, 1, 1, generator=g) - 0.5) * disc
        img += 0.1 * torch.rand(3, size, size, generator=g)
        img = (img - img.amin()) / (img.amax() - img.amin())
        images.append(img)
    return torch.stack(images)


def _high_freq_energy(img: torch.Tensor) -> float:
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    out = F.conv2d(img.reshape(-1, 1, *img.shape[-2:]), lap[None, None])
    return float(out.pow(2).mean())


def _clean_config(scale: int = 4) -> DegradationConfig:
    """No blur, noise, JPEG or random resize; only the final area downsampling."""
    stage = DegradationStageConfig(
        blur_prob=0.0, resize_probs=(0.0, 0.0, 1.0), resize_modes=("area",), noise_prob=0.0, jpeg_prob=0.0
    )
    return DegradationConfig(
        scale=scale, first=stage, second=replace(stage), final_sinc_prob=0.0, final_resize_modes=("area",)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Full pipeline
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [DegradationConfig(), DegradationConfig.light()], ids=["default", "light"])
@pytest.mark.parametrize("scale,shape", [(4, (64, 64)), (2, (32, 32)), (4, (48, 80)), (2, (40, 24))])
def test_output_shape_and_range(config: DegradationConfig, scale: int, shape: tuple[int, int]) -> None:
    config = replace(config, scale=scale)
    hq = torch.rand(3, 3, *shape, generator=_gen(1))
    for seed in range(3):
        lq = RealWorldDegradation(config)(hq, generator=_gen(seed))
        assert lq.shape == (3, 3, shape[0] // scale, shape[1] // scale)
        assert lq.dtype == hq.dtype and lq.device == hq.device
        assert torch.isfinite(lq).all()
        assert lq.min() >= 0 and lq.max() <= 1
        # rounded to 8-bit levels
        assert torch.allclose(lq * 255, (lq * 255).round(), atol=1e-4)


def test_same_seed_identical_different_seed_different() -> None:
    hq = _textured_image(batch=3, size=64)
    degrade = RealWorldDegradation()
    a = degrade(hq, generator=_gen(123))
    b = degrade(hq, generator=_gen(123))
    c = degrade(hq, generator=_gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_seed_used_without_generator() -> None:
    hq = torch.rand(2, 3, 32, 32, generator=_gen(0))
    degrade = RealWorldDegradation()
    torch.manual_seed(7)
    a = degrade(hq)
    torch.manual_seed(7)
    b = degrade(hq)
    assert torch.equal(a, b)


def test_batch_items_get_different_degradations() -> None:
    hq = _textured_image(batch=1, size=64).expand(4, -1, -1, -1).contiguous()
    lq = RealWorldDegradation()(hq, generator=_gen(5))
    assert not torch.equal(lq[0], lq[1])


def test_clean_config_is_plain_downsampling() -> None:
    hq = _textured_image(batch=2, size=64)
    for scale in (2, 4):
        lq = RealWorldDegradation(_clean_config(scale))(hq, generator=_gen(0))
        area = F.interpolate(hq, scale_factor=1 / scale, mode="area")
        assert (lq - area).abs().max() <= 0.5 / 255 + 1e-6


def test_degradation_is_blurrier_than_bicubic() -> None:
    hq = _textured_image(batch=8, size=128)
    bicubic = bicubic_degradation(hq, 4)
    noiseless = DegradationConfig()
    noiseless.first.noise_prob = 0.0
    noiseless.second.noise_prob = 0.0
    lq = RealWorldDegradation(noiseless)(hq, generator=_gen(0))
    assert _high_freq_energy(lq) < 0.7 * _high_freq_energy(bicubic)
    # and with noise, the default pipeline departs clearly from the bicubic LQ
    lq_default = RealWorldDegradation()(hq, generator=_gen(0))
    assert (lq_default - bicubic).pow(2).mean() > 1e-3


@pytest.mark.parametrize("bad_shape", [(3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32), (1, 3, 30, 32), (1, 3, 32, 18)])
def test_invalid_input_raises(bad_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        RealWorldDegradation()(torch.rand(*bad_shape))
    with pytest.raises(ValueError):
        bicubic_degradation(torch.rand(*bad_shape), 4)


def test_integer_input_raises() -> None:
    with pytest.raises(ValueError, match="floating"):
        RealWorldDegradation()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError):
        DegradationStageConfig(kernel_size_range=(6, 21))
    with pytest.raises(ValueError):
        DegradationStageConfig(kernel_probs={"box": 1.0})
    with pytest.raises(ValueError):
        DegradationStageConfig(resize_modes=("nearest",))
    with pytest.raises(ValueError):
        DegradationConfig(scale=0)


def test_config_dict_round_trip() -> None:
    for config in (DegradationConfig(), DegradationConfig.light(scale=2)):
        assert DegradationConfig.from_dict(config.to_dict()) == config


def test_bicubic_degradation() -> None:
    hq = torch.rand(2, 3, 40, 24, generator=_gen(0))
    lq = bicubic_degradation(hq, 4)
    assert lq.shape == (2, 3, 10, 6)
    assert lq.min() >= 0 and lq.max() <= 1
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(bicubic_degradation(flat, 2), torch.full((1, 3, 8, 8), 0.3), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------------


def _sigmas(*values: float) -> torch.Tensor:
    return torch.tensor(values)


@pytest.mark.parametrize("size", [7, 13, 21])
def test_kernel_functions_sum_to_one_and_have_size(size: int) -> None:
    s, t, beta = _sigmas(0.5, 2.0), _sigmas(0.3, -1.0), _sigmas(0.7, 3.0)
    kernels = [
        isotropic_gaussian_kernels(s, size),
        anisotropic_gaussian_kernels(s, s.flip(0), t, size),
        generalized_gaussian_kernels(s, s.flip(0), t, beta, size),
        plateau_kernels(s, s.flip(0), t, beta, size),
        sinc_kernels(_sigmas(math.pi / 4, math.pi / 2), size),
        pulse_kernels(2, size),
    ]
    for k in kernels:
        assert k.shape == (2, size, size)
        assert torch.isfinite(k).all()
        assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(2), atol=1e-5)


def test_isotropic_kernel_is_symmetric() -> None:
    k = isotropic_gaussian_kernels(_sigmas(1.7), 15)[0]
    assert torch.allclose(k, k.T, atol=1e-7)
    assert torch.allclose(k, k.flip(0), atol=1e-7)
    assert k.argmax() == 7 * 15 + 7


def test_anisotropic_kernel_with_rotation_is_not_symmetric() -> None:
    k = anisotropic_gaussian_kernels(_sigmas(1.0), _sigmas(3.0), _sigmas(0.6), 15)[0]
    assert not torch.allclose(k, k.T, atol=1e-4)
    assert not torch.allclose(k, k.flip(1), atol=1e-4)
    assert torch.allclose(k, k.flip(0).flip(1), atol=1e-7)  # point-symmetric all the same
    # no rotation: axis-aligned ellipse, wider along x than y
    k0 = anisotropic_gaussian_kernels(_sigmas(3.0), _sigmas(1.0), _sigmas(0.0), 15)[0]
    assert k0[7, 10] > k0[10, 7]


def test_generalized_and_plateau_differ_from_gaussian() -> None:
    s, t = _sigmas(2.0), _sigmas(0.0)
    gauss = isotropic_gaussian_kernels(s, 15)
    flat_top = generalized_gaussian_kernels(s, s, t, _sigmas(4.0), 15)
    peaky = generalized_gaussian_kernels(s, s, t, _sigmas(0.5), 15)
    plateau = plateau_kernels(s, s, t, _sigmas(2.0), 15)
    # beta = 1 reduces the generalised Gaussian to the Gaussian
    assert torch.allclose(generalized_gaussian_kernels(s, s, t, _sigmas(1.0), 15), gauss, atol=1e-7)
    # a large beta flattens the top, a small one sharpens the peak
    assert flat_top[0, 7, 8] / flat_top[0, 7, 7] > gauss[0, 7, 8] / gauss[0, 7, 7]
    assert peaky[0, 7, 8] / peaky[0, 7, 7] < gauss[0, 7, 8] / gauss[0, 7, 7]
    # plateau has heavier tails than the Gaussian
    assert plateau[0, 7, 0] / plateau[0, 7, 7] > gauss[0, 7, 0] / gauss[0, 7, 7]


def test_sinc_kernel_has_ringing() -> None:
    k = sinc_kernels(_sigmas(math.pi / 4), 21)[0]
    assert k.min() < 0  # negative side lobes produce ringing
    assert k.argmax() == 10 * 21 + 10
    assert torch.allclose(k, k.T, atol=1e-7)


@pytest.mark.parametrize("kernel_type", KERNEL_TYPES)
def test_random_kernels_each_type(kernel_type: str) -> None:
    stage = DegradationStageConfig(
        kernel_size_range=(7, 13), kernel_probs={kernel_type: 1.0}, sinc_prob=0.0, sigma_range=(1.0, 3.0)
    )
    k = random_kernels(16, stage, _gen(0))
    assert k.shape == (16, 13, 13)
    assert torch.isfinite(k).all() and (k >= 0).all()
    assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(16), atol=1e-5)
    assert (k.amax(dim=(-2, -1)) < 0.999).all()  # not a delta
    symmetric = torch.isclose(k, k.transpose(-2, -1), atol=1e-6).flatten(1).all(dim=1)
    if kernel_type.endswith("aniso"):
        assert not symmetric.all()
    else:
        assert symmetric.all()


def test_random_kernels_support_matches_sampled_size() -> None:
    stage = DegradationStageConfig(kernel_size_range=(7, 21), sigma_range=(3.0, 3.0), sinc_prob=0.0)
    k = random_kernels(32, stage, _gen(3))
    assert k.shape == (32, 21, 21)
    rows = (k.sum(dim=-1) > 0).sum(dim=-1)
    cols = (k.sum(dim=-2) > 0).sum(dim=-1)
    assert torch.equal(rows, cols)
    assert set(rows.tolist()) <= {7, 9, 11, 13, 15, 17, 19, 21}
    assert len(set(rows.tolist())) > 3
    fixed = random_kernels(4, replace(stage, kernel_size_range=(9, 9)), _gen(0))
    assert fixed.shape == (4, 9, 9) and (fixed > 0).all()


def test_random_kernels_with_sinc() -> None:
    stage = DegradationStageConfig(sinc_prob=1.0)
    k = random_kernels(8, stage, _gen(0))
    assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(8), atol=1e-5)
    assert (k.amin(dim=(-2, -1)) < 0).any()


def test_apply_blur_per_sample_kernels() -> None:
    img = torch.rand(2, 3, 24, 24, generator=_gen(0))
    kernels = torch.stack([pulse_kernels(1, 9)[0], isotropic_gaussian_kernels(_sigmas(2.0), 9)[0]])
    out = apply_blur(img, kernels)
    assert torch.allclose(out[0], img[0], atol=1e-6)
    assert _high_freq_energy(out[1:]) < 0.5 * _high_freq_energy(img[1:])
    # tiny images fall back to a border mode that works
    assert apply_blur(torch.rand(2, 3, 4, 4), kernels).shape == (2, 3, 4, 4)


def test_jpeg_per_sample_quality() -> None:
    img = _textured_image(batch=1, size=64).expand(2, -1, -1, -1)
    out = jpeg(img, torch.tensor([10.0, 95.0]))
    err = (out - img).abs().flatten(1).mean(dim=1)
    assert err[0] > err[1] > 0
