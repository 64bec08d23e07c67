# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Export a TEASR pipeline (optionally with a LoRA) as a self-contained Hugging Face model folder.

The folder holds `model_index.json`, safetensors weights, the custom code files (written by
`TEASRPipeline.save_pretrained`, so `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` works without
this package) and a generated `README.md` model card. It is built in a temporary folder next to the target and
renamed into place, so a failed export never leaves a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image

from .errors import first_line
from .model_card import card_from_files, validate_model_card, write_model_card
from .pipeline_teasr import LORA_WEIGHT_NAME

__all__ = ["ExportError", "export_pipeline", "find_lora_file", "push_folder"]

# Weight formats that must not appear in an export (pickles); safetensors only.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CARD_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ExportError(ValueError):
    """A problem with the export's inputs or target; one line."""


def find_lora_file(lora: str | os.PathLike) -> Path:
    """The LoRA safetensors of a training output folder (or the file itself)."""
    path = Path(lora)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ExportError(f"LoRA file {path} is not a .safetensors file")
        return path
    if not path.is_dir():
        raise ExportError(f"LoRA not found: {path}")
    candidate = path / LORA_WEIGHT_NAME
    if candidate.is_file():
        return candidate
    others = sorted(path.glob("*lora*.safetensors"))
    if len(others) == 1:
        return others[0]
    raise ExportError(f"{path} holds no {LORA_WEIGHT_NAME} (the file `save_lora_weights` writes)")


def _load_pipeline(model: str | os.PathLike) -> Any:
    from .pipeline_teasr import TEASRPipeline

    try:
        pipe = TEASRPipeline.from_pretrained(model)
    except ValueError as error:
        raise ExportError(first_line(error)) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_lora_fits(transformer: Any, lora_file: Path, model: str | os.PathLike) -> None:
    """Refuse, before anything is written, a LoRA that adapts layers `transformer` lacks or has in other sizes,
    naming the base the LoRA was trained on."""
    from safetensors import safe_open

    from .pipeline_teasr import lora_mismatch, lora_training_base

    with safe_open(str(lora_file), "pt") as weights:
        problem = lora_mismatch(transformer, {key: weights.get_slice(key).get_shape() for key in weights.keys()})
    if problem is not None:
        base = lora_training_base(lora_file.parent)
        hint = f" It was trained on {base} (its training_args.json): pass --model {base}." if base else ""
        raise ExportError(f"the LoRA {lora_file} does not fit {model}: {problem}.{hint}")


def _load_lora(pipe: Any, lora_file: Path, model: str | os.PathLike) -> None:
    check_lora_fits(pipe.transformer, lora_file, model)
    try:
        pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="export")
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        raise ExportError(f"cannot load the LoRA {lora_file}: {first_line(error)}") from None


def check_replaceable(folder: Path) -> None:
    """--overwrite replaces the whole folder: only an empty one or an earlier export, holding nothing an export does
    not write (so never '.', a training run with its checkpoints, or a clone of a Hub repo with its .git)."""
    entries = {entry.name for entry in folder.iterdir()}
    if not entries:
        return
    if "model_index.json" not in entries:
        raise ExportError(
            f"--overwrite only replaces an earlier export (a folder with model_index.json), and {folder} is not one; "
            "choose a new output folder"
        )
    try:
        components = set(json.loads((folder / "model_index.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        components = set()
    exported = {"model_index.json", "README.md", "assets", LORA_WEIGHT_NAME, *components}
    foreign = sorted(name for name in entries if name not in exported and not name.endswith(".py"))
    if foreign:
        raise ExportError(
            f"--overwrite would delete {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} in {folder}, "
            "which an export does not write; choose a new output folder"
        )


def _is_png_or_jpeg(path: Path) -> bool:
    """Whether the file really is a readable PNG or JPEG image (not only named like one)."""
    try:
        with PIL.Image.open(path) as image:
            image.verify()
            return image.format in ("PNG", "JPEG")
    except (OSError, SyntaxError, ValueError, struct.error):
        return False


def export_pipeline(
    output: str | os.PathLike,
    model: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    fuse: bool = False,
    lora_scale: float = 1.0,
    card_jsons: Sequence[str | os.PathLike] = (),
    training_recipe: str | None = None,
    training_recipe_file: str | os.PathLike | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    card_images: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write the Hub folder ``output`` from the pipeline folder ``model`` (plus a LoRA, fused or shipped alongside).

    Args:
        output: target folder; it must not exist unless ``overwrite`` (then it is replaced in one rename).
        model: a TEASR pipeline folder (the base model when ``lora`` is given).
        lora: LoRA training output, a folder with ``pytorch_lora_weights.safetensors`` (or that file).
        fuse: merge the LoRA into the transformer weights (``fuse_lora`` then ``unload_lora_weights``); otherwise the
            LoRA file is copied next to the pipeline and the card documents ``pipe.load_lora_weights``.
        lora_scale: LoRA scale used when fusing.
        card_jsons: `teasr eval` JSON reports for the card; training_recipe / training_recipe_file: its recipe.
        model_name: the card title (default: the output folder's name); repo_id: used in the card's snippets.
        base_model: Hub id of the base model for the card metadata.
        card_images: PNG / JPEG figures (e.g. the quality-vs-steps plot), copied to `assets/` and shown in the card.

    Returns the output folder.
    """
    target = Path(output).resolve()
    if fuse and lora is None:
        raise ExportError("--fuse needs --lora")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder")
    if target.exists():
        check_replaceable(target)
    lora_file = find_lora_file(lora) if lora is not None else None
    images = [Path(image) for image in card_images]
    for image in images:
        if not image.is_file() or image.suffix.lower() not in CARD_IMAGE_SUFFIXES or not _is_png_or_jpeg(image):
            raise ExportError(f"--card-image {image} is not a PNG or JPEG file")
    if len({image.name for image in images}) != len(images):
        raise ExportError("--card-image files must have distinct names")

    pipe = _load_pipeline(model)
    # Build the card first: a bad JSON or recipe path fails before anything is written.
    try:
        card = card_from_files(
            card_jsons,
            training_recipe_file=training_recipe_file,
            training_recipe=training_recipe,
            model_name=model_name or target.name,
            repo_id=repo_id,
            base_model=base_model,
            lora_weight_name=LORA_WEIGHT_NAME if lora_file is not None and not fuse else None,
            fused_lora=str(lora_file) if lora_file is not None and fuse else None,
            images=[f"assets/{image.name}" for image in images],
        )
    except ValueError as error:
        raise ExportError(str(error)) from None

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.export-"))
    try:
        if lora_file is not None:
            _load_lora(pipe, lora_file, model)  # also validates an unfused LoRA before it is shipped
            if fuse:
                pipe.fuse_lora(lora_scale=lora_scale, adapter_names=["export"])
                pipe.unload_lora_weights()
            else:
                pipe.unload_lora_weights()
        pipe.save_pretrained(staging)
        if lora_file is not None and not fuse:
            shutil.copyfile(lora_file, staging / LORA_WEIGHT_NAME)
        for image in images:
            (staging / "assets").mkdir(exist_ok=True)
            shutil.copyfile(image, staging / "assets" / image.name)
        write_model_card(card, staging / "README.md")
        validate_model_card(staging / "README.md", expected_results=len(card.data.eval_results or []))
        pickles = [p for p in staging.rglob("*") if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise ExportError(f"export would contain non-safetensors weights: {', '.join(map(str, pickles))}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700
        if target.exists():
            backup = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, backup / target.name)
            try:
                os.replace(staging, target)
            except OSError:
                os.replace(backup / target.name, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the model repository ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token)
    info = upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        repo_type="model",
        commit_message="Upload TEASR pipeline (teasr export)",
        token=token,
    )
    return str(getattr(info, "commit_url", info))
