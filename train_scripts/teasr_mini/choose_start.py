"""Pick teasr-mini's default start on crops of TRAINING photos (never the held-out set).

Usage: python train_scripts/teasr_mini/choose_start.py --model runs/teasr_mini/teasr --data data/teasr_mini/train
    --levels lq 1.0 0.1
`--transformer RUN/checkpoint-N/transformer` scores a training checkpoint's raw weights in the pipeline of --model.
Each candidate is a start level T of the noise start (`start="noise"`, `start_timestep=T`) or `lq` (the LQ start
at T = 1, `start="lq"`).
Prints one JSON line: mean PSNR-Y of 1-step outputs per candidate, that of bicubic, and the best candidate;
candidates whose start the model was not trained for (`supported_starts`) are listed as unsupported, not scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from probe_crops import PROBE_CROPS, degraded_crops, load_photo

from pipeline_teasr import TEASRPipeline, TEASRTransformer2DModel
from pipeline_teasr.image_processing_teasr import resize
from pipeline_teasr.metrics import psnr_y


def start_candidate(value: str) -> str:
    """`lq` or a level in (0, 1], kept as the string the recipe writes back."""
    if value == "lq":
        return value
    try:
        level = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a start is 'lq' or a level in (0, 1], got {value!r}") from None
    if not 0.0 < level <= 1.0:
        raise argparse.ArgumentTypeError(f"a start level must lie in (0, 1], got {value!r}")
    return value


def start_kwargs(candidate: str) -> dict:
    """Pipeline arguments of one candidate."""
    if candidate == "lq":
        return {"start": "lq", "start_timestep": 1.0}
    return {"start": "noise", "start_timestep": float(candidate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--transformer",
        default=None,
        help="a transformer folder to use instead of the model's own, e.g. RUN/checkpoint-N/transformer (raw weights)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/teasr_mini/train"))
    parser.add_argument("--levels", type=start_candidate, nargs="+", default=["1.0", "0.8", "0.6", "0.4"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--num_crops", type=int, default=3, choices=range(1, len(PROBE_CROPS) + 1), metavar="1..8")
    parser.add_argument("--seed_offset", type=int, default=0, help="crop i is degraded with seed offset + i")
    args = parser.parse_args()
    overrides = {}
    if args.transformer is not None:
        overrides["transformer"] = TEASRTransformer2DModel.from_pretrained(args.transformer)
    pipe = TEASRPipeline.from_pretrained(args.model, **overrides)
    pipe.set_progress_bar_config(disable=True)
    # A model trained for one start only (`supported_starts`) refuses the other: those candidates are not scored.
    candidates = [level for level in args.levels if start_kwargs(level)["start"] in pipe.supported_starts]
    unsupported = [level for level in args.levels if level not in candidates]
    if not candidates:
        parser.error(f"{args.model} supports only start={pipe.supported_starts}: no candidate among {args.levels}")
    scores: dict[str, list[float]] = {level: [] for level in candidates}
    bicubic: list[float] = []
    photos = {name: load_photo(args.data / name) for name, _, _ in PROBE_CROPS[: args.num_crops]}
    for hq, lr in degraded_crops(photos, args.size, args.num_crops, args.seed_offset):
        hr = hq.permute(1, 2, 0).numpy()
        bicubic.append(psnr_y(resize(lr, hr.shape[:2])[0].permute(1, 2, 0).numpy(), hr, 4))
        for level in candidates:
            out = pipe(
                lr[0],
                num_inference_steps=1,
                **start_kwargs(level),
                output_type="np",
                generator=torch.Generator().manual_seed(0),
            ).images[0]
            scores[level].append(psnr_y(out, hr, 4))
    means = {level: float(np.mean(values)) for level, values in scores.items()}
    bicubic_mean = float(np.mean(bicubic))
    gains = {level: round(value - bicubic_mean, 3) for level, value in means.items()}
    print(
        json.dumps(
            {
                "psnr_y_1step": means,
                "bicubic": bicubic_mean,
                "gain_over_bicubic": gains,
                "unsupported": unsupported,
                "best": max(means, key=means.get),
            }
        )
    )


if __name__ == "__main__":
    main()
