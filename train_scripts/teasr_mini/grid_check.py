"""Do a model's outputs repeat its token grid? Mean `grid_pattern_strength` of every folder of images given.

    teasr eval --gt data/teasr_mini_r/heldout --degradation light --seed 0 --model MODEL --steps 1 \
        --baseline bicubic --save-images runs/grid/NAME --quiet
    python train_scripts/teasr_mini/grid_check.py data/teasr_mini_r/heldout runs/grid/NAME/* --period 4

`pipeline_teasr.metrics.grid_pattern_strength`: the spread of the high-pass luma's mean over the `period x period`
pixel phases, relative to its std. Photos give about 0.004-0.025; a 1 % grid added to them 0.10-0.17. The
period is the model's patch size in output pixels (teasr-mini: 4, its tiles start on multiples of 4). One JSON line
per folder: the mean and the largest value over its images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline_teasr.evaluation import EvaluationError, collect_images, load_rgb
from pipeline_teasr.metrics import grid_pattern_strength


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders of images (e.g. `teasr eval --save-images`)")
    parser.add_argument("--period", type=int, default=4, help="the model's patch size in output pixels")
    args = parser.parse_args()
    for folder in args.folders:
        try:
            files = collect_images(folder)
        except EvaluationError as error:
            raise SystemExit(f"error: {error}") from None
        values = [grid_pattern_strength(load_rgb(path), args.period) for path in files.values()]
        line = {
            "folder": str(folder),
            "images": len(values),
            "period": args.period,
            "grid_strength_mean": round(float(np.mean(values)), 4),
            "grid_strength_max": round(float(np.max(values)), 4),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
