"""Pick teasr-mini's default start timestep on crops of TRAINING photos (never the held-out set).

Usage: python train_scripts/teasr_mini/choose_start.py --model runs/teasr_mini/teasr --data data/teasr_mini/train
Prints one JSON line: mean PSNR-Y of 1-step outputs per start level, and the best level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.degradations import DegradationConfig, RealWorldDegradation
from pipeline_teasr.metrics import psnr_y

CROPS = (("Garden_25.png", 0.3, 0.4), ("Wood_25.png", 0.5, 0.5), ("Aqua_25.png", 0.6, 0.3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=Path("data/teasr_mini/train"))
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4])
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    pipe = TEASRPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    degrade = RealWorldDegradation(DegradationConfig.light())
    scores: dict[float, list[float]] = {level: [] for level in args.levels}
    for index, (name, fy, fx) in enumerate(CROPS):
        image = np.asarray(PIL.Image.open(args.data / name).convert("RGB"), dtype=np.float32) / 255
        top, left = int((image.shape[0] - args.size) * fy), int((image.shape[1] - args.size) * fx)
        hr = image[top : top + args.size, left : left + args.size]
        lr = degrade(torch.from_numpy(hr).permute(2, 0, 1)[None].contiguous(), torch.Generator().manual_seed(index))
        for level in args.levels:
            out = pipe(
                lr[0],
                num_inference_steps=1,
                start_timestep=level,
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images[0]
            scores[level].append(psnr_y(out, hr, 4))
    means = {str(level): float(np.mean(values)) for level, values in scores.items()}
    print(json.dumps({"psnr_y_1step": means, "best": max(means, key=means.get)}))


if __name__ == "__main__":
    main()
