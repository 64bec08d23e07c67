"""How fast can an architecture learn plain x4 regression (LQ -> HQ) at teasr-mini's budget? A capacity probe.

    python train_scripts/teasr_mini/regression_probe.py --arch dit    # teasr-mini's transformer, one jump
    python train_scripts/teasr_mini/regression_probe.py --arch cnn    # a 16-convolution residual CNN
    python train_scripts/teasr_mini/regression_probe.py --arch hybrid # the transformer + a light residual conv path

Trains with an L1 loss straight from the bicubic-upscaled LQ image (no noise, no distillation) on the recipe's data
and degradations (64 x 64 crops of the training photos, batch 8, AdamW), and prints, every `--eval_every` steps, one
JSON line with the PSNR-Y gain over bicubic of the raw and the moving-average (EMA) weights on 8 fixed crops of
TRAINING photos (128 x 128, never the held-out set). A model that cannot beat bicubic this way will not do so after
distillation either: regression to the mean is the best PSNR any 1-step sampler can reach.

With `--heldout DIR` each line also carries `heldout_ema_gain_db`: the EMA weights' mean PSNR-Y gain over PIL
bicubic on the photos in DIR, degraded as `teasr eval --degradation light --seed 0` degrades them (the same LR
images), so the probe's ceiling can be set beside the distilled model's. It is read, never used to choose anything.
`--validation DIR` scores other photos the same way (`validation_ema_gain_db`): the reading a choice may rest on.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from probe_crops import degraded_crops, load_photo

from pipeline_teasr.degradations import DegradationConfig, RealWorldDegradation
from pipeline_teasr.evaluation import baseline_upscale, image_seed, load_rgb, mod_crop, synthesize_lr
from pipeline_teasr.metrics import psnr_y
from pipeline_teasr.tiling import TileBlender, plan_tiles
from pipeline_teasr.transformer_teasr import SMALL_PIXEL_CONFIG, TEASRTransformer2DModel


class ResidualCNN(nn.Module):
    """A plain SR baseline: conv, `blocks` residual blocks of two 3x3 convolutions, conv; predicts HQ - c."""

    def __init__(self, channels: int = 64, blocks: int = 8, image_channels: int = 3):
        super().__init__()
        self.head = nn.Conv2d(image_channels, channels, 3, padding=1)
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1)  # noqa: E731
        self.body = nn.ModuleList(nn.Sequential(conv(), nn.ReLU(), conv()) for _ in range(blocks))
        self.tail = nn.Conv2d(channels, image_channels, 3, padding=1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.head(c)
        for block in self.body:
            h = h + block(h)
        return c + self.tail(h)


class TokenGridCNN(nn.Module):
    """The residual CNN on the transformer's token grid (4x4 space-to-depth, 48 channels): 16x fewer positions."""

    def __init__(self, channels: int = 96, blocks: int = 6):
        super().__init__()
        self.cnn = ResidualCNN(channels, blocks, image_channels=48)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.cnn(F.pixel_unshuffle(c, 4)), 4)


class OneJumpTransformer(nn.Module):
    """teasr-mini's transformer (with the LQ skip) used as a regressor: `c - u(c, c, t=1, s=0)`."""

    def __init__(self, zero_output: bool = False, conv_channels: int = 0, conv_blocks: int = 0, num_layers: int = 6):
        super().__init__()
        config = {**SMALL_PIXEL_CONFIG, "num_layers": num_layers}
        self.transformer = TEASRTransformer2DModel(
            **config, lq_skip=True, conv_channels=conv_channels, conv_blocks=conv_blocks
        )
        if zero_output:  # start from the bicubic input exactly (DiT's zero-initialised final layer)
            nn.init.zeros_(self.transformer.proj_out.weight)
            nn.init.zeros_(self.transformer.proj_out.bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c - self.transformer(c, c, timestep=1.0, target_timestep=0.0).sample


class HybridRegressor(nn.Module):
    """The one-jump transformer plus a light residual conv path on `c` (32 channels, 4 blocks), outputs summed."""

    def __init__(self):
        super().__init__()
        self.transformer = OneJumpTransformer()
        self.convs = ResidualCNN(channels=32, blocks=4)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.transformer(c) + self.convs(c) - c


def upscale(lq: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic upscaling to `size`, in [-1, 1] (the pipeline's pixel-space latents)."""
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(lq, size=size, mode="bicubic", align_corners=False) * 2 - 1


def heldout_pairs(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ground truth, LR) uint8 pairs of the PNGs in `folder`, the LR drawn as `teasr eval --degradation light
    --seed 0` draws it."""
    pairs = []
    for path in sorted(folder.glob("*.png")):
        truth = mod_crop(load_rgb(path), 4)
        pairs.append((truth, synthesize_lr(truth, 4, "light", image_seed(0, path.stem))))
    if not pairs:
        raise SystemExit(f"error: no PNG photos in {folder}")
    return pairs


def heldout_gain(
    net: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], tile: int = 64, overlap: int = 8
) -> float:
    """Mean PSNR-Y gain (dB, 4-pixel border) of `net`'s uint8 output over PIL bicubic, as `teasr eval` scores it.

    The network sees `tile`-pixel tiles overlapping by `overlap`, feathered together, as the pipeline runs teasr-mini
    at one step: the transformer attends within a tile the size of its training crops (0: the whole image)."""
    overlap = overlap if tile else 0
    net.eval()
    gains = []
    with torch.no_grad():
        for truth, lr in pairs:
            lq = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
            c = upscale(lq, truth.shape[:2])
            tiles = plan_tiles(*c.shape[-2:], tile or max(c.shape[-2:]), overlap, 4)
            blender = TileBlender(c, overlap)
            for part in tiles:
                rows, cols = part.region()
                blender.add(part, net(c[:, :, rows, cols]))
            out = ((blender.result() + 1) * 127.5).clamp(0, 255).round()
            out = out[0].permute(1, 2, 0).to(torch.uint8).numpy()
            bicubic = baseline_upscale(lr, truth.shape[:2], "bicubic")
            gains.append(psnr_y(out, truth, 4) - psnr_y(bicubic, truth, 4))
    net.train()
    return round(float(np.mean(gains)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("dit", "cnn", "hybrid", "tokcnn"), required=True)
    parser.add_argument("--data", type=Path, default=Path("data/teasr_mini/train"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--learning_rate", type=float, default=4e-4)
    parser.add_argument("--ema_decay", type=float, default=0.99)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zero_output", action="store_true", help="dit: zero-initialise the output projection")
    parser.add_argument("--conv_channels", type=int, default=0, help="dit: width of the token-grid conv path")
    parser.add_argument("--conv_blocks", type=int, default=0, help="dit: residual blocks of the token-grid conv path")
    parser.add_argument("--num_layers", type=int, default=6, help="dit: transformer blocks")
    parser.add_argument("--heldout", type=Path, help="also score the EMA weights on these photos (read, not used)")
    parser.add_argument(
        "--validation", type=Path, help="also score the EMA weights on these photos (the reading a choice may use)"
    )
    parser.add_argument("--heldout_tile", type=int, default=64, help="tile size for --heldout and --validation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    files = sorted(args.data.glob("*.png"))
    if not files:
        raise SystemExit(f"error: no PNG photos in {args.data} (run the recipe's data stage first)")
    photos = {path.name: load_photo(path) for path in files}
    evaluation = degraded_crops(photos)
    heldout = heldout_pairs(args.heldout) if args.heldout else None
    validation = heldout_pairs(args.validation) if args.validation else None
    degrade = RealWorldDegradation(DegradationConfig.light())

    model = {
        "dit": lambda: OneJumpTransformer(args.zero_output, args.conv_channels, args.conv_blocks, args.num_layers),
        "cnn": ResidualCNN,
        "hybrid": HybridRegressor,
        "tokcnn": lambda: TokenGridCNN(args.conv_channels or 96, args.conv_blocks or 6),
    }[args.arch]()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)

    def gain(net: nn.Module) -> float:
        net.eval()
        gains = []
        with torch.no_grad():
            for hq, lq in evaluation:
                c = upscale(lq, 128)
                truth = hq.permute(1, 2, 0).numpy()
                out = ((net(c) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
                bicubic = ((c + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
                gains.append(psnr_y(out, truth, 4) - psnr_y(bicubic, truth, 4))
        net.train()
        return round(float(np.mean(gains)), 3)

    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    names = list(photos)
    start = time.time()
    for step in range(1, args.steps + 1):
        crops = []
        for _ in range(8):
            photo = photos[names[rng.integers(len(names))]]
            y = 4 * int(rng.integers(0, max(1, (photo.shape[1] - 64) // 4)))  # a 64-px side: the one crop
            x = 4 * int(rng.integers(0, max(1, (photo.shape[2] - 64) // 4)))
            crop = photo[:, y : y + 64, x : x + 64]
            crops.append(crop.flip(-1) if rng.random() < 0.5 else crop)
        hq = torch.stack(crops)
        lq = torch.cat([degrade(crop[None].contiguous(), generator) for crop in hq])
        loss = F.l1_loss(model(upscale(lq, 64)), hq * 2 - 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))  # diffusers EMAModel's warm-up
        with torch.no_grad():
            for averaged, live in zip(ema.parameters(), model.parameters()):
                averaged.lerp_(live, 1 - decay)
        if step % args.eval_every == 0 or step == args.steps:
            line = {"arch": args.arch, "step": step, "gain_db": gain(model), "ema_gain_db": gain(ema)}
            if validation is not None:
                line["validation_ema_gain_db"] = heldout_gain(ema, validation, args.heldout_tile)
            if heldout is not None:
                line["heldout_ema_gain_db"] = heldout_gain(ema, heldout, args.heldout_tile)
            print(json.dumps({**line, "loss": round(loss.item(), 4), "s": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main()
