"""The fixed crops of TRAINING photos on which teasr-mini's start level is chosen and its probes are scored.

Imported by `choose_start.py` and `regression_probe.py` (scripts in this folder, so it is on their path).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from pipeline_teasr.degradations import DegradationConfig, RealWorldDegradation

# (photo, relative top, relative left); the recipe's start choice uses the first three, the probes all eight.
PROBE_CROPS = (
    ("Garden_25.png", 0.3, 0.4),
    ("Wood_25.png", 0.5, 0.5),
    ("Aqua_25.png", 0.6, 0.3),
    ("Garden_25.png", 0.7, 0.8),
    ("Blinds_50.png", 0.2, 0.6),
    ("Aqua_50.png", 0.8, 0.1),
    ("Wood_50.png", 0.1, 0.9),
    ("Blinds_25.png", 0.5, 0.5),
)


def load_photo(path: Path) -> torch.Tensor:
    """An RGB photo as a (3, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(PIL.Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def degraded_crops(
    photos: Mapping[str, torch.Tensor], size: int = 128, count: int = len(PROBE_CROPS), seed_offset: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` probe crops as `(hq (3, size, size), lq (1, 3, size / 4, size / 4))` pairs; crop i is degraded
    with the light training degradation seeded `seed_offset + i`."""
    degrade = RealWorldDegradation(DegradationConfig.light())
    pairs = []
    for index, (name, fy, fx) in enumerate(PROBE_CROPS[:count]):
        photo = photos[name]
        top, left = int((photo.shape[1] - size) * fy), int((photo.shape[2] - size) * fx)
        hq = photo[:, top : top + size, left : left + size].contiguous()
        pairs.append((hq, degrade(hq[None], torch.Generator().manual_seed(seed_offset + index))))
    return pairs
