"""Build the teasr-mini photo folders from photographs that Debian and scikit-image ship.

train/   multi-scale PNG versions of 10 `mate-backgrounds` nature photos and of the 11 photographs among
         `plasma-workspace-wallpapers` (Debian packages, fetched with apt-get; the Plasma ones add texture: wood,
         pebbles, moss, forest, architecture, where most mate photos are bokeh and sky).
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
# The photographs of plasma-workspace-wallpapers (its other wallpapers, "Autumn" among them, are paintings or
# renderings); each ships as contents/images/2560x1600.jpg.
PLASMA_PHOTOS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "DarkestHour",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
)
HELDOUT_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket")
TRAIN_SCALES = (1.0, 0.5, 0.25)
HELDOUT_SIZE = 256


def fetch_debian_package(package: str, work: Path) -> Path:
    """Download and unpack a Debian package into `work`; return the unpacked root."""
    subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    deb = next(work.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(work / package)], check=True)
    return work / package


def plasma_photo_paths(plasma_dir: Path) -> list[Path]:
    """The 2560x1600 files of `PLASMA_PHOTOS` in an unpacked plasma-workspace-wallpapers `usr/share/wallpapers`."""
    paths = [plasma_dir / name / "contents" / "images" / "2560x1600.jpg" for name in PLASMA_PHOTOS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"missing Plasma photos (is {plasma_dir} an unpacked usr/share/wallpapers?): {missing}")
    return paths


def save_scales(image: PIL.Image.Image, folder: Path, stem: str) -> None:
    """Save `image` at each of `TRAIN_SCALES` (Lanczos), so crops see both fine and coarse structure."""
    for scale in TRAIN_SCALES:
        size = (round(image.width * scale), round(image.height * scale))
        resized = image if scale == 1.0 else image.resize(size, PIL.Image.Resampling.LANCZOS)
        resized.save(folder / f"{stem}_{int(scale * 100)}.png")


def centre_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def build(output_dir: Path, mate_dir: Path | None = None, plasma_dir: Path | None = None) -> None:
    train_dir, heldout_dir = output_dir / "train", output_dir / "heldout"
    for folder in (train_dir, heldout_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        if mate_dir is None:
            mate_dir = fetch_debian_package("mate-backgrounds", Path(work)) / "usr/share/backgrounds/mate/nature"
        if plasma_dir is None:
            plasma_dir = fetch_debian_package("plasma-workspace-wallpapers", Path(work)) / "usr/share/wallpapers"
        photos = sorted(glob.glob(str(mate_dir / "*.jpg")))
        if len(photos) < 12:
            raise SystemExit(f"expected 12 mate-backgrounds nature photos in {mate_dir}, found {len(photos)}")
        for path in photos:
            name = Path(path).name
            image = PIL.Image.open(path).convert("RGB")
            if name in HELDOUT_MATE:
                small = image.resize((image.width // 4, image.height // 4), PIL.Image.Resampling.LANCZOS)
                centre_crop(small, HELDOUT_SIZE).save(heldout_dir / f"mate_{Path(name).stem}.png")
                continue
            save_scales(image, train_dir, Path(name).stem)
        for path in plasma_photo_paths(plasma_dir):
            save_scales(PIL.Image.open(path).convert("RGB"), train_dir, f"plasma_{path.parents[2].name}")
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
    parser.add_argument(
        "--plasma_dir", type=Path, default=None, help="an unpacked plasma-workspace-wallpapers usr/share/wallpapers"
    )
    args = parser.parse_args()
    build(args.output_dir, args.mate_dir, args.plasma_dir)


if __name__ == "__main__":
    main()
