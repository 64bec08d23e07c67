"""Build the teasr-mini photo folders from photographs that Debian and scikit-image ship.

train/   multi-scale PNG versions of 10 `mate-backgrounds` nature photos (Debian package, fetched with apt-get).
heldout/ photos never used in training: scikit-image's astronaut, coffee, chelsea, rocket, plus two further
         mate-backgrounds photos, centre-cropped to 256 x 256 (HR ground truth for evaluation).

Usage: python train_scripts/teasr_mini/prepare_data.py --output_dir data/teasr_mini
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

HELDOUT_MATE = ("LadyBird.jpg", "Storm.jpg")
HELDOUT_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket")
TRAIN_SCALES = (1.0, 0.5, 0.25)
HELDOUT_SIZE = 256


def fetch_mate_backgrounds(work: Path) -> Path:
    """Download and unpack Debian's mate-backgrounds package; return its nature photo folder."""
    subprocess.run(["apt-get", "download", "mate-backgrounds"], cwd=work, check=True, capture_output=True)
    package = next(work.glob("mate-backgrounds_*.deb"))
    subprocess.run(["dpkg", "-x", str(package), str(work / "unpacked")], check=True)
    return work / "unpacked" / "usr" / "share" / "backgrounds" / "mate" / "nature"


def centre_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def build(output_dir: Path, mate_dir: Path | None = None) -> None:
    train_dir, heldout_dir = output_dir / "train", output_dir / "heldout"
    for folder in (train_dir, heldout_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        nature = mate_dir or fetch_mate_backgrounds(Path(work))
        photos = sorted(glob.glob(str(nature / "*.jpg")))
        if len(photos) < 12:
            raise SystemExit(f"expected 12 mate-backgrounds nature photos in {nature}, found {len(photos)}")
        for path in photos:
            name = Path(path).name
            image = PIL.Image.open(path).convert("RGB")
            if name in HELDOUT_MATE:
                small = image.resize((image.width // 4, image.height // 4), PIL.Image.Resampling.LANCZOS)
                centre_crop(small, HELDOUT_SIZE).save(heldout_dir / f"mate_{Path(name).stem}.png")
                continue
            for scale in TRAIN_SCALES:
                size = (round(image.width * scale), round(image.height * scale))
                resized = image if scale == 1.0 else image.resize(size, PIL.Image.Resampling.LANCZOS)
                resized.save(train_dir / f"{Path(name).stem}_{int(scale * 100)}.png")
    import skimage.data

    for name in HELDOUT_SKIMAGE:
        array = getattr(skimage.data, name)()
        image = PIL.Image.fromarray(np.asarray(array)[..., :3])
        if min(image.size) > 2 * HELDOUT_SIZE:
            image = image.resize((image.width // 2, image.height // 2), PIL.Image.Resampling.LANCZOS)
        centre_crop(image, min(HELDOUT_SIZE, *image.size)).save(heldout_dir / f"skimage_{name}.png")
    print(f"train: {len(list(train_dir.iterdir()))} images in {train_dir}")
    print(f"heldout: {len(list(heldout_dir.iterdir()))} images in {heldout_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("data/teasr_mini"))
    parser.add_argument("--mate_dir", type=Path, default=None, help="an already unpacked mate nature folder")
    args = parser.parse_args()
    build(args.output_dir, args.mate_dir)


if __name__ == "__main__":
    main()
