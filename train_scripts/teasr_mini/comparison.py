"""Side-by-side crops of held-out photos: the input, bicubic, TEASR at 1 and 4 steps, and the ground truth.

Reads the images `teasr eval --save-images DIR` wrote (the degraded inputs in DIR/lr/, one folder per method) and
the ground-truth folder; it runs no model, so the crops show exactly what the evaluation scored. Usage (the
commands that made docs/teasr_mini_comparison.png are in docs/RESULTS.md):

    teasr eval --gt data/budget/heldout --degradation light --seed 0 --steps 1 4 --start lq --start-timestep 1.0 \\
        --baseline bicubic --save-images runs/comparison --quiet
    python train_scripts/teasr_mini/comparison.py --eval_dir runs/comparison --gt data/budget/heldout \\
        --names skimage_astronaut skimage_chelsea skimage_coffee --out docs/teasr_mini_comparison.png

Each row's crop is the window where the ground truth has the most detail (largest mean absolute gradient of its
luma), chosen from the ground truth alone, never from any output. Panel titles give each method's PSNR-Y on the
whole image (4-pixel border crop, as `teasr eval` reports it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline_teasr.evaluation import load_rgb  # noqa: E402
from pipeline_teasr.metrics import psnr_y, rgb_to_y  # noqa: E402

DEFAULT_METHODS = {"bicubic": "bicubic", "teasr-1step": "TEASR, 1 step", "teasr-4step": "TEASR, 4 steps"}


def most_detailed_window(gt: np.ndarray, size: int, stride: int = 8) -> tuple[int, int]:
    """`(top, left)` of the `size` x `size` window of `gt` (H, W, 3 uint8) with the largest mean absolute gradient
    of its luma."""
    luma = rgb_to_y(gt)
    gradient = np.zeros_like(luma)
    gradient[:, 1:] += np.abs(np.diff(luma, axis=1))
    gradient[1:, :] += np.abs(np.diff(luma, axis=0))
    best, best_score = (0, 0), -1.0
    for top in range(0, gt.shape[0] - size + 1, stride):
        for left in range(0, gt.shape[1] - size + 1, stride):
            score = float(gradient[top : top + size, left : left + size].mean())
            if score > best_score:
                best, best_score = (top, left), score
    return best


def comparison_figure(
    eval_dir: Path, gt_dir: Path, names: list[str], methods: dict[str, str], crop: int, scale: int
) -> plt.Figure:
    columns = ["input (nearest)", *methods.values(), "ground truth"]
    figure, axes = plt.subplots(
        len(names), len(columns), figsize=(2.4 * len(columns), 2.55 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        gt = load_rgb(gt_dir / f"{name}.png")
        lr = load_rgb(eval_dir / "lr" / f"{name}.png")
        if lr.shape[0] * scale != gt.shape[0] or lr.shape[1] * scale != gt.shape[1]:
            raise SystemExit(f"{name}: the input is {lr.shape[1]}x{lr.shape[0]}, not the ground truth / {scale}")
        top, left = most_detailed_window(gt, crop)
        window = (slice(top, top + crop), slice(left, left + crop))
        lr_window = (slice(top // scale, (top + crop) // scale), slice(left // scale, (left + crop) // scale))
        panels = [(np.repeat(np.repeat(lr[lr_window], scale, axis=0), scale, axis=1), columns[0])]
        for folder, label in methods.items():
            prediction = load_rgb(eval_dir / folder / f"{name}.png")
            panels.append((prediction[window], f"{label}\n{psnr_y(prediction, gt, crop_border=4):.2f} dB"))
        panels.append((gt[window], columns[-1]))
        for column, (image, title) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(image, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=9)
        axes[row][0].set_ylabel(name, fontsize=9)
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_dir", type=Path, required=True, help="the folder `teasr eval --save-images` wrote")
    parser.add_argument("--gt", type=Path, required=True, help="the ground-truth folder of that evaluation")
    parser.add_argument("--names", nargs="+", required=True, help="image names (file stems) to show, one per row")
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), help="method folders of --eval_dir, one per column"
    )
    parser.add_argument("--crop", type=int, default=64, help="crop side in ground-truth pixels")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    missing = [
        str(path)
        for path in [args.gt / f"{name}.png" for name in args.names]
        + [args.eval_dir / folder / f"{name}.png" for folder in ["lr", *args.methods] for name in args.names]
        if not path.is_file()
    ]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    methods = {folder: DEFAULT_METHODS.get(folder, folder) for folder in args.methods}
    figure = comparison_figure(args.eval_dir, args.gt, args.names, methods, args.crop, args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
