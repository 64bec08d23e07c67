# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Training data for TEASR: 🤗 datasets (Hub or a local imagefolder) -> random HQ crops; LQ made on the fly.

Images are decoded here rather than by `datasets`, so that a corrupt file is skipped (and counted) instead of crashing
the run. Crops are drawn from `(seed, epoch, index)`, so a resumed run sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .degradations import DegradationConfig, RealWorldDegradation, bicubic_degradation
from .errors import first_line
from .image_processing_teasr import resize as resize_images

__all__ = [
    "DEGRADATIONS",
    "SRCropDataset",
    "SRStreamingCropDataset",
    "build_degradation",
    "collate_sr_batch",
    "decode_image",
    "load_image_dataset",
    "lq_condition_pixels",
]

DEGRADATIONS = ("light", "realesrgan", "bicubic")
IMAGEFOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
_REPORTED: set[tuple[str, str]] = set()
logger = logging.getLogger(__name__)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError)


def load_image_dataset(
    train_data_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str = "image",
    lq_column: str | None = None,
    cache_dir: str | None = None,
    split: str = "train",
    streaming: bool = False,
):
    """Open the training set and check its columns; image columns are left undecoded (see `decode_image`).

    Raises `ValueError` (before any training) when neither or both sources are given, the folder is missing, or a
    requested column does not exist.
    """
    from datasets import Dataset, Image, load_dataset
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DatasetNotFoundError

    if (train_data_dir is None) == (dataset_name is None):
        raise ValueError("Pass exactly one of `--train_data_dir` (a local image folder) or `--dataset_name`.")
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a folder.")
        files, has_metadata = scan_image_folder(train_data_dir)
        if has_metadata:
            # A metadata file (e.g. paired LQ columns) means 🤗 imagefolder's rules, which it defines.
            try:
                dataset = load_dataset("imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir)
            except EmptyDatasetError:
                raise ValueError(f"--train_data_dir {train_data_dir!r} holds no image files.") from None
        else:
            # Otherwise every image under the folder, whatever its subfolders are called: imagefolder would read
            # 'train/' and 'test/' subfolders as splits (dropping photos) and refuse a 'val/' next to loose photos.
            if not files:
                raise ValueError(
                    f"--train_data_dir {train_data_dir!r} holds no image files (.png, .jpg, .webp, .tif, ...)."
                )
            # The paths themselves, not data_files, which datasets would read as glob patterns ('photo[1].png').
            dataset = Dataset.from_dict({"image": files}).cast_column("image", Image(decode=False))
    elif _saved_to_disk(dataset_name):
        dataset = _load_saved_dataset(dataset_name, split, streaming)
    else:
        try:
            dataset = load_dataset(
                dataset_name, dataset_config_name, split=split, cache_dir=cache_dir, streaming=streaming
            )
        except (ConnectionError, FileNotFoundError, DatasetNotFoundError, EmptyDatasetError) as error:
            # Offline, no such dataset, no access, or no data files: `datasets` says which in its first line.
            raise ValueError(f"--dataset_name {dataset_name!r} could not be loaded: {first_line(error)}") from None

    features = dataset.features
    columns = list(features) if features is not None else list(dataset.column_names or [])
    for flag, column in (("--image_column", image_column), ("--lq_column", lq_column)):
        if column is not None and column not in columns:
            raise ValueError(f"{flag} {column!r} is not a column of the training set; its columns are {columns}.")
    for column in (image_column, lq_column):
        if column is not None and features is not None and isinstance(features[column], Image):
            dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def _saved_to_disk(name: str) -> bool:
    """Whether `name` is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return os.path.isfile(os.path.join(name, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(name, "state.json")) and os.path.isfile(os.path.join(name, "dataset_info.json"))
    )


def _load_saved_dataset(name: str, split: str, streaming: bool):
    """`datasets.load_from_disk` (`load_dataset` refuses such folders), the split picked from a DatasetDict."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(name)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"--dataset_name {name!r} has no split {split!r}; its splits are {sorted(dataset)}.")
        dataset = dataset[split]
    return dataset.to_iterable_dataset() if streaming else dataset


def scan_image_folder(folder: str) -> tuple[list[str], bool]:
    """Every image file under `folder`, subfolders and linked folders included (each folder once), hidden ones left
    out, sorted; and whether an imagefolder metadata file lies anywhere there (e.g. train/metadata.jsonl)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    found, seen, has_metadata = [], set(), False
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        has_metadata = has_metadata or any(name in IMAGEFOLDER_METADATA for name in names)
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in ImageFolder.EXTENSIONS:
                continue
            if os.path.isfile(path):
                found.append(path)
            else:
                _report_once(path, "skipped", "skipped: a link to a file that does not exist")
    return sorted(found), has_metadata


def _source_name(value: Any) -> str:
    """A dataset cell's file path, for messages."""
    if isinstance(value, dict):
        return value.get("path") or "an image given as bytes"
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return f"an image given as {type(value).__name__}"


def _report_once(value: Any, kind: str, message: str) -> None:
    """Log `message` about the training image `value` (named first) once per file, `kind` of report and process."""
    name = _source_name(value)
    if (name, kind) not in _REPORTED:
        _REPORTED.add((name, kind))
        logger.warning(f"training image {name}: {message}")


def report_unreadable(value: Any, error: Exception) -> None:
    """Say once per file (per process) which training image is skipped and why."""
    # Pillow names an in-memory file by its object's address, which says nothing (and differs every time).
    reason = "not a readable image" if isinstance(error, PIL.UnidentifiedImageError) else first_line(error)
    _report_once(value, "skipped", f"skipped: {reason}")


def _has_transparent_pixels(image: PIL.Image.Image) -> bool:
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return False
    return image.convert("RGBA").getchannel("A").getextrema()[0] < 255


def decode_image(value: Any) -> PIL.Image.Image:
    """A dataset cell (PIL image, `{"bytes", "path"}` dict, path or bytes) -> RGB PIL image (EXIF-rotated)."""
    if isinstance(value, PIL.Image.Image):
        image = value
    elif isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        image = PIL.Image.open(io.BytesIO(data) if data else path)
    elif isinstance(value, (str, os.PathLike)):
        image = PIL.Image.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = PIL.Image.open(io.BytesIO(value))
    else:
        raise ValueError(f"cannot read an image from a {type(value).__name__}")
    image.load()
    if _has_transparent_pixels(image):
        _report_once(
            value,
            "transparent",
            "has transparent pixels, which are trained as the colour stored under them (often black); flatten it "
            "onto a background or leave it out",
        )
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = PIL.Image.fromarray(np.round(array / peak * 255.0).astype(np.uint8))
    return image.convert("RGB")


def _decode_row(
    row: dict[str, Any], image_column: str, lq_column: str | None
) -> tuple[PIL.Image.Image, PIL.Image.Image | None] | None:
    """The row's HQ (and paired LQ) image, or None after naming the cell that cannot be read."""
    decoded = []
    for column in (image_column, lq_column):
        if column is None:
            decoded.append(None)
            continue
        try:
            decoded.append(decode_image(row[column]))
        except _DECODE_ERRORS as error:
            report_unreadable(row[column], error)
            return None
    return decoded[0], decoded[1]


def _to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def crop_gradient(pixels: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of the grey image of `pixels` (3, H, W) in [0, 1]: how
    much detail a crop holds (teasr-mini's training photos: median 0.006 over random 64 x 64 crops, flat bokeh)."""
    grey = pixels.mean(dim=0)
    return 0.5 * float((grey[1:] - grey[:-1]).abs().mean() + (grey[:, 1:] - grey[:, :-1]).abs().mean())


class _CropMixin:
    """Random aligned crops of an HQ image (and its paired LQ image)."""

    resolution: int
    scale: int
    random_flip: bool
    random_rotate: bool = False
    small_images: str
    seed: int
    epoch: int
    min_crop_gradient: float = 0.0
    max_crop_draws: int = 10

    def _init_crops(
        self,
        dataset,
        image_column: str,
        lq_column: str | None,
        resolution: int,
        scale: int,
        random_flip: bool,
        small_images: str,
        seed: int,
        min_crop_gradient: float = 0.0,
        random_rotate: bool = False,
    ) -> None:
        if resolution % scale:
            raise ValueError(f"--resolution ({resolution}) must be a multiple of --scale ({scale}).")
        if small_images not in ("upsize", "skip"):
            raise ValueError(f"small_images must be 'upsize' or 'skip', got {small_images!r}.")
        self.dataset, self.image_column, self.lq_column = dataset, image_column, lq_column
        self.resolution, self.scale, self.random_flip = resolution, scale, random_flip
        self.random_rotate = random_rotate
        self.small_images, self.seed, self.epoch = small_images, seed, 0
        if not 0.0 <= min_crop_gradient < 1.0:
            raise ValueError(
                f"--min_crop_gradient must lie in [0, 1) (pixel values in [0, 1]), got {min_crop_gradient}."
            )
        self.min_crop_gradient = min_crop_gradient

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _random_box(self, rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop box of side `resolution` at a random position aligned to `scale` (so the LQ crop is exact)."""
        x = self.scale * int(rng.integers(0, (width - self.resolution) // self.scale + 1))
        y = self.scale * int(rng.integers(0, (height - self.resolution) // self.scale + 1))
        return x, y, x + self.resolution, y + self.resolution

    def _crop(self, hq: PIL.Image.Image, lq: PIL.Image.Image | None, key: int) -> dict[str, Any] | None:
        upsized = False
        width, height = hq.size
        if min(width, height) < self.resolution:
            if self.small_images == "skip":
                return None
            factor = self.resolution / min(width, height)
            width, height = max(self.resolution, round(width * factor)), max(self.resolution, round(height * factor))
            hq = hq.resize((width, height), PIL.Image.BICUBIC)
            upsized = True
        rng = np.random.default_rng([self.seed, self.epoch, key])
        box = self._random_box(rng, width, height)
        flip = self.random_flip and bool(rng.random() < 0.5)
        pixels = _to_tensor(hq.crop(box))
        # Photos with large flat areas (sky, bokeh) give mostly flat crops, which teach denoising but not detail:
        # with min_crop_gradient, a crop is redrawn (a bounded number of times) while it is flatter than that.
        for _ in range(self.max_crop_draws - 1):
            if crop_gradient(pixels) >= self.min_crop_gradient:
                break
            box = self._random_box(rng, width, height)
            pixels = _to_tensor(hq.crop(box))
        item: dict[str, Any] = {"pixel_values": pixels, "upsized": upsized}
        if lq is not None:
            lq_size = (width // self.scale, height // self.scale)
            if lq.size != lq_size:
                lq = lq.resize(lq_size, PIL.Image.BICUBIC)
            item["lq_pixel_values"] = _to_tensor(lq.crop(tuple(v // self.scale for v in box)))
        if flip:
            item = {k: v.flip(-1) if torch.is_tensor(v) else v for k, v in item.items()}
        # Drawn last, so that runs without rotations keep the crops they always had.
        quarter_turns = int(rng.integers(0, 4)) if self.random_rotate else 0
        if quarter_turns:
            item = {k: v.rot90(quarter_turns, dims=(-2, -1)) if torch.is_tensor(v) else v for k, v in item.items()}
        return item


class SRCropDataset(_CropMixin, torch.utils.data.Dataset):
    """Map-style crops of a (non-streaming) 🤗 dataset.

    Each item: `pixel_values` (3, R, R) in [0, 1], optional `lq_pixel_values` (3, R/scale, R/scale), `upsized`
    (the source was smaller than R and was enlarged) and `skipped` (indices of unreadable or, with
    `small_images="skip"`, too-small rows passed over to reach this item).

    Args:
        dataset: a `datasets.Dataset` from `load_image_dataset`.
        image_column / lq_column: the HQ column and an optional paired LQ column.
        resolution: crop side in HQ pixels (a multiple of `scale`).
        scale: HQ/LQ size ratio of paired data.
        random_flip: random horizontal flips.
        random_rotate: random 90-degree rotations (with `random_flip`, all eight flips and rotations of a crop).
        small_images: `"upsize"` (enlarge to `resolution`) or `"skip"`.
        seed: base seed of the crops; `set_epoch` varies them per epoch.
        min_crop_gradient: redraw a crop (at most 9 times) while its `crop_gradient` is below this (0 = off).
        cache_images: keep every decoded image in memory after its first use (per data-loader worker), so a small
            set of large photos is not decoded again for every crop; needs the RAM of the whole decoded set.
    """

    def __init__(
        self,
        dataset,
        image_column: str = "image",
        lq_column: str | None = None,
        resolution: int = 512,
        scale: int = 4,
        random_flip: bool = True,
        small_images: str = "upsize",
        seed: int = 0,
        min_crop_gradient: float = 0.0,
        cache_images: bool = False,
        random_rotate: bool = False,
    ):
        if len(dataset) == 0:
            raise ValueError("The training set is empty.")
        self._init_crops(
            dataset,
            image_column,
            lq_column,
            resolution,
            scale,
            random_flip,
            small_images,
            seed,
            min_crop_gradient,
            random_rotate,
        )
        self._decoded: dict[int, tuple[PIL.Image.Image, PIL.Image.Image | None]] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[int] = []
        for offset in range(len(self.dataset)):
            key = (index + offset) % len(self.dataset)
            images = self._decoded.get(key) if self._decoded is not None else None
            if images is None:
                row = self.dataset[key]
                images = _decode_row(row, self.image_column, self.lq_column)
                if images is None:
                    skipped.append(key)
                    continue
                if self._decoded is not None:
                    self._decoded[key] = images
            item = self._crop(*images, key)
            if item is None:
                skipped.append(key)
                continue
            item["skipped"] = skipped
            return item
        raise ValueError(f"None of the {len(self.dataset)} training images could be read (or all are too small).")


class SRStreamingCropDataset(_CropMixin, torch.utils.data.IterableDataset):
    """Crops of a streaming 🤗 `IterableDataset` (Hub); same items as `SRCropDataset`, skipped rows attached to the
    next good item. Shuffles with a buffer; shards by worker (and by process when given `process_index`)."""

    def __init__(
        self,
        dataset,
        image_column: str = "image",
        lq_column: str | None = None,
        resolution: int = 512,
        scale: int = 4,
        random_flip: bool = True,
        small_images: str = "upsize",
        seed: int = 0,
        min_crop_gradient: float = 0.0,
        random_rotate: bool = False,
        shuffle_buffer_size: int = 1000,
        num_processes: int = 1,
        process_index: int = 0,
    ):
        if num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
        self._init_crops(
            dataset,
            image_column,
            lq_column,
            resolution,
            scale,
            random_flip,
            small_images,
            seed,
            min_crop_gradient,
            random_rotate,
        )
        self.shuffle_buffer_size = shuffle_buffer_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.dataset.shuffle(seed=self.seed + self.epoch, buffer_size=self.shuffle_buffer_size)
        worker = torch.utils.data.get_worker_info()
        skipped: list[int] = []
        for key, row in enumerate(stream):
            if worker is not None and key % worker.num_workers != worker.id:
                continue
            images = _decode_row(row, self.image_column, self.lq_column)
            item = self._crop(*images, key) if images is not None else None
            if item is None:
                skipped.append(key)
                continue
            item["skipped"], skipped = skipped, []
            yield item


def collate_sr_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack crops; `skipped` becomes the set of passed-over rows, `num_upsized` the count of enlarged sources."""
    batch: dict[str, Any] = {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
    if "lq_pixel_values" in items[0]:
        batch["lq_pixel_values"] = torch.stack([item["lq_pixel_values"] for item in items])
    batch["skipped"] = sorted({key for item in items for key in item["skipped"]})
    batch["num_upsized"] = sum(int(item["upsized"]) for item in items)
    return batch


def build_degradation(kind: str, scale: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """`"light"`, `"realesrgan"` (second-order Real-ESRGAN) or `"bicubic"`: `(hq, generator) -> lq` at 1/`scale`."""
    if kind == "light":
        return RealWorldDegradation(DegradationConfig.light(scale=scale))
    if kind == "realesrgan":
        return RealWorldDegradation(DegradationConfig(scale=scale))
    if kind == "bicubic":
        return lambda hq, generator=None: bicubic_degradation(hq, scale)
    raise ValueError(f"--degradation must be one of {DEGRADATIONS}, got {kind!r}.")


def lq_condition_pixels(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The LQ image resized to the output size, exactly as `TEASRPipeline` prepares it (bicubic, [0, 1])."""
    return resize_images(lq, size)
