# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Overlapping tiles with feathered blending weights (a leaf module: exported Hub folders carry a copy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int

    def region(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def max_tile_overlap(tile_size: int) -> int:
    """The widest overlap allowed for `tile_size`-pixel tiles: half a tile, where each pixel is computed up to four
    times. Wider overlaps only multiply the work (an overlap of a whole tile would step by a single patch)."""
    return tile_size // 2


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of size `tile` covering `[0, length)`, consecutive tiles sharing at least `overlap`.

    Offsets are multiples of `multiple` (the patch grid) except the last one, which is flush with the end.
    """
    if tile >= length:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(height: int, width: int, tile_size: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Equal-sized tiles covering a `height` x `width` grid (a tile larger than the grid is clipped to it)."""
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    return [
        Tile(top, left, tile_h, tile_w)
        for top in tile_starts(height, tile_h, overlap, multiple)
        for left in tile_starts(width, tile_w, overlap, multiple)
    ]


def feather_weights(height: int, width: int, overlap: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, height, width) weights ramping linearly up over `overlap` pixels from each edge.

    Weights stay strictly positive, so pixels that only one tile covers (the image border) normalise exactly.
    """

    def ramp(n: int) -> torch.Tensor:
        position = torch.arange(n, device=device, dtype=dtype)
        distance_to_edge = torch.minimum(position, n - 1 - position) + 1
        return (distance_to_edge / (overlap + 1)).clamp(max=1.0) if overlap > 0 else torch.ones_like(position)

    return (ramp(height)[:, None] * ramp(width)[None, :])[None, None]


class TileBlender:
    """Accumulates per-tile predictions into a full-size weighted average."""

    def __init__(self, like: torch.Tensor, overlap: int):
        self.overlap = overlap
        self.total = torch.zeros_like(like)
        self.weight = torch.zeros(like.shape[0], 1, *like.shape[2:], device=like.device, dtype=like.dtype)
        self._weights_cache: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, tile: Tile, value: torch.Tensor) -> None:
        key = (tile.height, tile.width)
        if key not in self._weights_cache:
            self._weights_cache[key] = feather_weights(*key, self.overlap, value.device, value.dtype)
        weights = self._weights_cache[key]
        rows, cols = tile.region()
        self.total[:, :, rows, cols] += value * weights
        self.weight[:, :, rows, cols] += weights

    def result(self) -> torch.Tensor:
        """The blended prediction, computed in place in the accumulator (the blender is spent afterwards)."""
        result = self.total.div_(self.weight)
        del self.total, self.weight
        return result
