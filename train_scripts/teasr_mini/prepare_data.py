"""Build the teasr-mini photo folders from photographs that Debian and scikit-image ship.

train/   multi-scale PNG versions of 10 `mate-backgrounds` nature photos, of the 11 photographs among
         `plasma-workspace-wallpapers` and of the 15 among `lomiri-wallpapers-16.04` / `-20.04` (Debian packages,
         fetched with apt-get; Plasma and Lomiri add texture: wood, pebbles, moss, forest, rock, fur, brushes,
         architecture, where most mate photos are bokeh and sky).
heldout/ photos never used in training: scikit-image's astronaut, coffee, chelsea, rocket, plus two further
         mate-backgrounds photos, centre-cropped to 256 x 256 (HR ground truth for evaluation).

Usage: python train_scripts/teasr_mini/prepare_data.py --output_dir data/teasr_mini
       add --sources_dir data/sources to keep the source photos used (31 MB) in a folder that a later build reads
       instead of fetching the packages: on a machine without apt-get or a network (a lent GPU; device_run.sh).
"""

from __future__ import annotations

import argparse
import glob
import json
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
# The photographs of the Ubuntu Touch wallpaper packages (Ubuntu wallpaper-contest entries; the others are
# graphics or, for Infinite-Sea, a composite), by package; all in usr/share/backgrounds.
LOMIRI_PHOTOS = {
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk.jpg",
        "Dragonfly_by_Bolly.jpg",
        "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg",
        "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg",
        "free_by_Peter_Nerlich.jpg",
        "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg",
        "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",
    ),
    "lomiri-wallpapers-20.04": ("Kleiber_by_Lukas_Baubkus.jpg",),
}
# Recorded in the manifest: a data folder built from other packages is rebuilt.
SOURCE_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", *LOMIRI_PHOTOS)
# Phone and camera originals (up to 6028 px) are brought to the size of the other wallpapers before the scales,
# so that every source contributes crops at comparable detail per pixel.
MAX_TRAIN_SIDE = 2560
HELDOUT_SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket")
# Half, a quarter and an eighth instead scored 0.10 dB lower held out (docs/RESULTS.md, "Smaller scales").
TRAIN_SCALES = (1.0, 0.5, 0.25)
HELDOUT_SIZE = 256


def fetch_debian_package(package: str, work: Path) -> Path:
    """Download and unpack a Debian package into `work`; return the unpacked root."""
    try:
        subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"could not download the Debian package {package} ({error}); without apt-get or a network, copy in"
            " the --sources_dir folder that a build filled on a machine with them"
        ) from None
    deb = next(work.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(work / package)], check=True)
    return work / package


def require_files(paths: list[Path], problem: str) -> list[Path]:
    """`paths`, or a one-line exit naming `problem` and the files that are not there."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"{problem}: {missing}")
    return paths


def plasma_photo_paths(plasma_dir: Path) -> list[Path]:
    """The 2560x1600 files of `PLASMA_PHOTOS` in an unpacked plasma-workspace-wallpapers `usr/share/wallpapers`."""
    paths = [plasma_dir / name / "contents" / "images" / "2560x1600.jpg" for name in PLASMA_PHOTOS]
    return require_files(paths, f"missing Plasma photos (is {plasma_dir} an unpacked usr/share/wallpapers?)")


def lomiri_photo_paths(backgrounds: dict[str, Path]) -> list[Path]:
    """The `LOMIRI_PHOTOS` files, given each package's unpacked `usr/share/backgrounds` folder."""
    paths = [backgrounds[package] / name for package, names in LOMIRI_PHOTOS.items() for name in names]
    return require_files(paths, "missing Lomiri photos (are the folders unpacked usr/share/backgrounds?)")


def fit_long_side(image: PIL.Image.Image, max_side: int) -> PIL.Image.Image:
    """`image` scaled down (Lanczos) so that its longer side is at most `max_side`; smaller images unchanged."""
    factor = max_side / max(image.size)
    if factor >= 1:
        return image
    return image.resize((round(image.width * factor), round(image.height * factor)), PIL.Image.Resampling.LANCZOS)


def save_scales(image: PIL.Image.Image, folder: Path, stem: str) -> None:
    """Save `image` at each of `TRAIN_SCALES` (Lanczos), so crops see both fine and coarse structure."""
    for scale in TRAIN_SCALES:
        size = (round(image.width * scale), round(image.height * scale))
        resized = image if scale == 1.0 else image.resize(size, PIL.Image.Resampling.LANCZOS)
        # The fastest zlib level: the same pixels, files about a quarter larger, four times faster to write.
        resized.save(folder / f"{stem}_{int(scale * 100)}.png", compress_level=1)


def source_dirs(sources_dir: Path) -> tuple[Path, Path, dict[str, Path]]:
    """The (mate, plasma, lomiri) folders of a `--sources_dir`, laid out as the unpacked packages' folders."""
    return sources_dir / "mate", sources_dir / "plasma", {name: sources_dir / name for name in LOMIRI_PHOTOS}


def flat_source_dirs(sources_dir: Path) -> list[Path]:
    """Every folder of `source_dirs`: a `--sources_dir` holding them all is read instead of the packages."""
    mate, plasma, lomiri = source_dirs(sources_dir)
    return [mate, plasma, *lomiri.values()]


def save_sources(sources_dir: Path, mate_dir: Path, plasma_dir: Path, lomiri_dirs: dict[str, Path]) -> None:
    """Copy the photos a build reads (and only those) into `sources_dir`, in the layout of `source_dirs`."""
    mate_out, plasma_out, lomiri_out = source_dirs(sources_dir)
    mate_out.mkdir(parents=True, exist_ok=True)
    for path in glob.glob(str(mate_dir / "*.jpg")):
        shutil.copy2(path, mate_out)
    for path in plasma_photo_paths(plasma_dir):
        target = plasma_out / path.relative_to(plasma_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for path in lomiri_photo_paths(lomiri_dirs):
        package = next(name for name, folder in lomiri_dirs.items() if path.parent == folder)
        lomiri_out[package].mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, lomiri_out[package])


def centre_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def build(
    output_dir: Path,
    mate_dir: Path | None = None,
    plasma_dir: Path | None = None,
    lomiri_dirs: dict[str, Path] | None = None,
    sources_dir: Path | None = None,
) -> None:
    """Write `output_dir`/train, /heldout and manifest.json. The photos come from the given unpacked folders, else
    from a filled `sources_dir`, else from the Debian packages (apt-get); with `sources_dir` they are kept there."""
    if sources_dir is not None and all(folder.is_dir() for folder in flat_source_dirs(sources_dir)):
        mate_dir, plasma_dir, lomiri_dirs = source_dirs(sources_dir)
        sources_dir = None  # already kept
    train_dir, heldout_dir = output_dir / "train", output_dir / "heldout"
    manifest_path = output_dir / "manifest.json"
    # Removed first, so that a build that stops part-way leaves no manifest and the recipe builds again.
    manifest_path.unlink(missing_ok=True)
    for folder in (train_dir, heldout_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        if mate_dir is None:
            mate_dir = fetch_debian_package("mate-backgrounds", Path(work)) / "usr/share/backgrounds/mate/nature"
        if plasma_dir is None:
            plasma_dir = fetch_debian_package("plasma-workspace-wallpapers", Path(work)) / "usr/share/wallpapers"
        if lomiri_dirs is None:
            backgrounds = "usr/share/backgrounds"
            lomiri_dirs = {name: fetch_debian_package(name, Path(work)) / backgrounds for name in LOMIRI_PHOTOS}
        if sources_dir is not None:
            save_sources(sources_dir, mate_dir, plasma_dir, lomiri_dirs)
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
        for path in lomiri_photo_paths(lomiri_dirs):
            image = fit_long_side(PIL.Image.open(path).convert("RGB"), MAX_TRAIN_SIDE)
            save_scales(image, train_dir, f"lomiri_{path.stem.split('_by_')[0]}")
    import skimage.data

    for name in HELDOUT_SKIMAGE:
        array = getattr(skimage.data, name)()
        image = PIL.Image.fromarray(np.asarray(array)[..., :3])
        if min(image.size) > 2 * HELDOUT_SIZE:
            image = image.resize((image.width // 2, image.height // 2), PIL.Image.Resampling.LANCZOS)
        centre_crop(image, min(HELDOUT_SIZE, *image.size)).save(heldout_dir / f"skimage_{name}.png")
    # Written last: the recipe rebuilds a data folder without it (an interrupted or older build).
    manifest = {folder.name: sorted(path.name for path in folder.iterdir()) for folder in (train_dir, heldout_dir)}
    manifest["train_scales"] = list(TRAIN_SCALES)
    manifest["sources"] = list(SOURCE_PACKAGES)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    for folder in (train_dir, heldout_dir):
        print(f"{folder.name}: {len(manifest[folder.name])} images in {folder}")


def built_as_now(output_dir: Path) -> bool:
    """Whether `output_dir` holds a finished build with the current `TRAIN_SCALES` and `SOURCE_PACKAGES` (not a
    partial or older one)."""
    manifest_path = output_dir / "manifest.json"
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    return manifest.get("train_scales") == list(TRAIN_SCALES) and manifest.get("sources") == list(SOURCE_PACKAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("data/teasr_mini"))
    parser.add_argument("--mate_dir", type=Path, default=None, help="an already unpacked mate nature folder")
    parser.add_argument(
        "--plasma_dir", type=Path, default=None, help="an unpacked plasma-workspace-wallpapers usr/share/wallpapers"
    )
    parser.add_argument(
        "--lomiri_dirs",
        type=Path,
        nargs=len(LOMIRI_PHOTOS),
        default=None,
        help=f"unpacked usr/share/backgrounds folders of {' and '.join(LOMIRI_PHOTOS)}, in that order",
    )
    parser.add_argument(
        "--sources_dir",
        type=Path,
        default=None,
        help="keep the source photos here (a first build), or read them from here (a folder a build filled)",
    )
    parser.add_argument(
        "--if_stale",
        action="store_true",
        help="do nothing if --output_dir already holds a finished build with the current scales and sources",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="build nothing: exit 0 if --output_dir holds a build of the current sources and scales, else 1",
    )
    args = parser.parse_args()
    if args.check:
        current = built_as_now(args.output_dir)
        print(f"data: {args.output_dir} {'is' if current else 'is not'} a build of the current sources and scales")
        raise SystemExit(0 if current else 1)
    if args.if_stale and built_as_now(args.output_dir):
        print(f"data: {args.output_dir} is built with the current scales and sources, kept")
        return
    lomiri_dirs = dict(zip(LOMIRI_PHOTOS, args.lomiri_dirs)) if args.lomiri_dirs else None
    build(args.output_dir, args.mate_dir, args.plasma_dir, lomiri_dirs, args.sources_dir)


if __name__ == "__main__":
    main()
