# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Image input/output for TEASR: modes, alpha, 16-bit, ICC colour profiles, EXIF, colour fix.

A leaf module: exported Hub folders carry a copy."""

from __future__ import annotations

import math
import os
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.ExifTags
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor
FLOAT_RANGE_SLACK = 0.1  # float inputs may stray this far outside [0, 1] and are clipped; further is an error


@dataclass
class DecomposedImage:
    """An input image split into what the model sees (RGB) and what it does not (alpha, original mode)."""

    rgb: torch.Tensor  # (1, 3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None  # (1, 1, H, W) float32 in [0, 1]
    mode: str | None  # PIL mode to restore on output, None for array inputs
    icc_profile: bytes | None = None  # the input's ICC profile: the model keeps the pixel values' colour space

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[-2], self.rgb.shape[-1]


_CORRUPT_EXIF_WARNING = r"(Possibly c|C)orrupt EXIF"


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> PIL.Image.Image:
    """Open an image file fully (EXIF orientation applied, first frame of animations), or raise a one-line
    `ValueError` naming the file."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"image file not found: {name}")
    if os.path.getsize(name) == 0:
        raise ValueError(f"image file is empty: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", _CORRUPT_EXIF_WARNING, UserWarning)  # metadata; resized_exif drops it
            with PIL.Image.open(name) as opened:
                width, height = opened.size
                if max_pixels is not None and width * height > max_pixels:
                    fit = math.sqrt(max_pixels / (width * height))
                    raise ValueError(
                        f"image {name} is {width}x{height}, above the input limit of {max_pixels:,} pixels: downscale "
                        f"it first, e.g. to {max(1, int(width * fit))}x{max(1, int(height * fit))}"
                    )
                opened.seek(0)
                image = PIL.ImageOps.exif_transpose(opened)
                image.load()
    except ValueError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        # Pillow refuses before the size can be read: it is above its own limit, so above any input limit too.
        limit = PIL.Image.MAX_IMAGE_PIXELS
        within = f"above the input limit of {max_pixels:,}" if max_pixels and max_pixels < limit else "too many"
        raise ValueError(f"image {name} has more than {limit:,} pixels, {within}: downscale it first") from None
    except (OSError, SyntaxError, PIL.UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {name}: {error}") from None
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {name} has zero size")
    return image


# The ICC colour space (header bytes 16-20) that describes each PIL mode's pixel values.
_MODE_COLOR_SPACES = {
    "RGB": "RGB", "RGBA": "RGB", "P": "RGB", "PA": "RGB",
    "L": "GRAY", "LA": "GRAY", "1": "GRAY", "I": "GRAY", "I;16": "GRAY", "F": "GRAY",
    "CMYK": "CMYK",
}  # fmt: skip


def icc_color_space(profile: bytes) -> str | None:
    """The colour space an ICC profile describes ("RGB", "GRAY", "CMYK", ...), or None if it is not a profile."""
    if len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return profile[16:20].decode("latin-1").strip()


def with_icc_profile(image: PIL.Image.Image, profile: bytes | None) -> PIL.Image.Image:
    """Attach `profile` to `image.info` when it describes the colour space of the image's mode; drop it otherwise.

    Savers embed `info["icc_profile"]`, so an upscaled Display P3 or Adobe RGB photo keeps its colours instead of
    being read as sRGB; a profile of another colour space (a CMYK profile on an RGB image) would be wrong, not kept.
    """
    image.info.pop("icc_profile", None)
    if profile and icc_color_space(profile) == _MODE_COLOR_SPACES.get(image.mode):
        image.info["icc_profile"] = profile
    return image


def to_8bit_gray(image: PIL.Image.Image) -> PIL.Image.Image:
    """A 16-bit grayscale image as 8-bit "L", values scaled (Pillow's own conversion clips them at 255)."""
    eight_bit = PIL.Image.fromarray(np.round(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8))
    return with_icc_profile(eight_bit, image.info.get("icc_profile"))


def convert_mode(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """`image.convert(mode)`, keeping the ICC profile only where it still describes the converted pixels."""
    return with_icc_profile(image.convert(mode), image.info.get("icc_profile"))


def resized_exif(exif: bytes | None, size: tuple[int, int]) -> bytes | None:
    """A photo's EXIF block (camera, date taken, ...) for its upscaled copy, its pixel-size tags set to `size`
    (width, height); None when there is none or it cannot be parsed: metadata never fails an upscale.

    `load_image` has already removed the orientation tag it applied, so the copy is not rotated a second time."""
    if not exif:
        return None
    try:
        parsed = PIL.Image.Exif()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _CORRUPT_EXIF_WARNING, UserWarning)
            parsed.load(exif)
            details = parsed.get_ifd(PIL.ExifTags.IFD.Exif)
        width_tag, height_tag = PIL.ExifTags.Base.ExifImageWidth, PIL.ExifTags.Base.ExifImageHeight
        if width_tag in details or height_tag in details:
            details[width_tag], details[height_tag] = size
        return parsed.tobytes()
    except (ValueError, TypeError, KeyError, OSError, SyntaxError, struct.error):
        return None


# The modes an upscale comes back in. Palette and 1-bit inputs come back in full tone: the upscale has in-between
# values that re-quantising to 256 colours or dithering to black and white would throw away. Other colour spaces
# (YCbCr, HSV, LAB) come back as RGB. An alpha channel, where there is one, makes RGB into RGBA.
_KEPT_MODES = ("RGB", "RGBA", "L", "LA", "CMYK")


def _pil_to_arrays(image: PIL.Image.Image) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Return (HxWx3 float RGB in [0, 1], HxW float alpha or None, mode to restore)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        gray = np.asarray(image, dtype=np.float64) / 65535.0
        return np.repeat(gray[..., None], 3, axis=2), None, "I;16"
    if mode == "I":
        # 32-bit integers with no fixed range: guessing 8- or 16-bit data from the values would brighten dark
        # 16-bit images 257 times. Pillow opens 16-bit files as "I;16"; "I" comes from code.
        raise ValueError(
            "PIL mode 'I' images hold 32-bit integers with no fixed range: convert 16-bit data with "
            "image.convert('I;16') or 8-bit data with image.convert('L') first"
        )
    if mode == "F":
        gray = check_float_range(torch.from_numpy(np.array(image, dtype=np.float32))).double().numpy()
        return np.repeat(gray[..., None], 3, axis=2), None, "F"
    if mode == "La":  # premultiplied luminance, which Pillow cannot convert: divide the alpha out here
        luminance, alpha = np.moveaxis(np.asarray(image, dtype=np.float64), -1, 0)
        straight = np.where(alpha > 0, luminance * 255.0 / np.maximum(alpha, 1.0), 0.0).clip(0.0, 255.0)
        return np.repeat(straight[..., None] / 255.0, 3, axis=2), alpha / 255.0, "LA"
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("LA", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float64) / 255.0
    alpha = array[..., 3] if array.shape[-1] == 4 else None
    return array[..., :3], alpha, mode if mode in _KEPT_MODES else "L" if mode == "1" else "RGB"


def _array_to_float(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """numpy HxW / HxWxC or torch CxHxW / 1xCxHxW -> (1, C, H, W) float32 in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            array = image.astype(np.float32) / 255.0
        elif image.dtype == np.uint16:
            array = image.astype(np.float32) / 65535.0
        elif np.issubdtype(image.dtype, np.floating):
            array = image.astype(np.float32)
        else:
            raise ValueError(f"`image` arrays must be uint8, uint16 or float, got {image.dtype}")
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise ValueError(f"`image` arrays must be HxW or HxWxC, got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    else:
        if image.dtype == torch.uint8:
            tensor = image.detach().cpu().float() / 255.0
        elif image.dtype.is_floating_point:
            tensor = image.detach().float().cpu()
        else:
            raise ValueError(f"`image` tensors must be float (in [0, 1]) or uint8, got {image.dtype}")
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[0] != 1:
            raise ValueError(f"`image` tensors must be CxHxW or 1xCxHxW, got shape {tuple(image.shape)}")
    if tensor.shape[1] not in (1, 3, 4):
        layout = "arrays are HxWxC" if isinstance(image, np.ndarray) else "tensors are CxHxW"
        raise ValueError(f"`image` must have 1, 3 or 4 channels ({layout}), got {tensor.shape[1]}")
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise ValueError("`image` has zero size")
    return check_float_range(tensor)


def check_float_range(tensor: torch.Tensor) -> torch.Tensor:
    """Float pixel values clipped to [0, 1], after refusing NaNs and values far outside (0-255 or [-1, 1] data)."""
    if not torch.isfinite(tensor).all():
        raise ValueError("`image` contains NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    # A little overshoot (resampling, another model's output) is clipped; 0-255 or [-1, 1] data would be a wrong image.
    if low < -FLOAT_RANGE_SLACK or high > 1.0 + FLOAT_RANGE_SLACK:
        raise ValueError(
            f"float `image` values must lie in [0, 1], got {low:.3g} to {high:.3g}: divide 0-255 data by 255, map "
            "[-1, 1] data with (x + 1) / 2"
        )
    return tensor.clamp(0.0, 1.0)


def _exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; also for missing or unparsable EXIF, which never fails an upscale)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _CORRUPT_EXIF_WARNING, UserWarning)
            return int(image.getexif().get(PIL.ExifTags.Base.Orientation, 1))
    except (ValueError, TypeError, KeyError, OSError, SyntaxError, struct.error):
        return 1


def decompose_image(image: ImageInput) -> DecomposedImage:
    """Split any supported input into RGB (what the model upscales), alpha and the mode to restore."""
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError("`image` has zero size")
        if _exif_orientation(image) != 1:
            image = PIL.ImageOps.exif_transpose(image)  # upscale what a viewer shows: a phone photo stays upright
        rgb, alpha, mode = _pil_to_arrays(image)
        rgb_tensor = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
        alpha_tensor = None if alpha is None else torch.from_numpy(alpha.astype(np.float32))[None, None]
        return DecomposedImage(rgb_tensor, alpha_tensor, mode, image.info.get("icc_profile") or None)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        tensor = _array_to_float(image)
        channels = tensor.shape[1]
        alpha = tensor[:, 3:4] if channels == 4 else None
        rgb = tensor.expand(-1, 3, -1, -1) if channels == 1 else tensor[:, :3]
        return DecomposedImage(rgb.contiguous(), alpha, None)
    raise ValueError(f"`image` must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def resize(images: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) to `size`, antialiased when shrinking, clamped to [0, 1]."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    antialias = mode in ("bilinear", "bicubic") and (size[0] < images.shape[-2] or size[1] < images.shape[-1])
    out = F.interpolate(
        images, size=size, mode=mode, align_corners=False if mode != "nearest" else None, antialias=antialias
    )
    return out.clamp(0.0, 1.0)


def recompose_image(
    rgb: torch.Tensor, alpha: torch.Tensor | None, mode: str | None, icc_profile: bytes | None = None
) -> PIL.Image.Image:
    """(1, 3, H, W) RGB in [0, 1] (+ upscaled alpha) -> PIL image in `mode` (from `decompose_image`: the input's, in
    full tone), with the input's ICC profile in `info` where it fits that mode (see `with_icc_profile`)."""
    return with_icc_profile(_recompose_pixels(rgb, alpha, mode), icc_profile)


def _recompose_pixels(rgb: torch.Tensor, alpha: torch.Tensor | None, mode: str | None) -> PIL.Image.Image:
    array = rgb[0].permute(1, 2, 0).float().cpu().numpy()
    if mode in ("I;16", "L", "F"):
        gray = array @ np.array([0.299, 0.587, 0.114])
        if mode == "I;16":
            return PIL.Image.fromarray(np.round(gray * 65535.0).astype(np.uint16))
        if mode == "F":
            return PIL.Image.fromarray(gray.astype(np.float32))
        return PIL.Image.fromarray(np.round(gray * 255.0).astype(np.uint8))
    rgb8 = np.round(array * 255.0).astype(np.uint8)
    if alpha is not None:
        alpha8 = np.round(alpha[0, 0].float().cpu().numpy() * 255.0).astype(np.uint8)
        out = PIL.Image.fromarray(np.dstack([rgb8, alpha8]))
        return out.convert("LA") if mode == "LA" else out
    out = PIL.Image.fromarray(rgb8)
    if mode == "CMYK":
        return out.convert("CMYK")
    return out


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def color_fix(output: torch.Tensor, reference: torch.Tensor, method: str | None) -> torch.Tensor:
    """Transfer the colours of `reference` (the LQ image resized to the output size) onto `output`.

    `"adain"` matches per-channel mean and standard deviation; `"wavelet"` keeps the output's high frequencies and
    takes the low frequencies (everything a Gaussian of sigma 4 output pixels keeps) from the reference.
    """
    if method is None or method == "none":
        return output
    if method == "adain":
        out_mean, out_std = output.mean((-2, -1), keepdim=True), output.std((-2, -1), keepdim=True)
        ref_mean, ref_std = reference.mean((-2, -1), keepdim=True), reference.std((-2, -1), keepdim=True)
        return ((output - out_mean) / (out_std + 1e-6) * ref_std + ref_mean).clamp(0.0, 1.0)
    if method == "wavelet":
        sigma = 4.0
        return (output - _gaussian_blur(output, sigma) + _gaussian_blur(reference, sigma)).clamp(0.0, 1.0)
    raise ValueError(f"`color_fix` must be None, 'adain' or 'wavelet', got {method!r}")
