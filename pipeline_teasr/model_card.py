# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Hugging Face model card (README.md) for exported TEASR pipelines, generated from evaluation reports.

Every number in the card comes from the `teasr eval` JSON reports passed in (see :mod:`pipeline_teasr.evaluation`);
with no report the card says that no results were supplied. The metadata (license, library, pipeline tag, tags,
model-index) is built with `huggingface_hub.ModelCardData`, and :func:`validate_model_card` reloads the file with
`ModelCard.load` to check it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation import METRIC_LABELS, describe_dataset, load_report, results_table
from .files import atomic_write

__all__ = [
    "CITATION",
    "LICENSE",
    "TAGS",
    "build_model_card",
    "eval_results_from_reports",
    "validate_model_card",
    "write_model_card",
]

LICENSE = "apache-2.0"
LIBRARY_NAME = "diffusers"
PIPELINE_TAG = "image-to-image"
TAGS: tuple[str, ...] = ("super-resolution", "diffusion", "any-step", "teasr", "image-to-image")
MODEL_INDEX_METRICS: tuple[str, ...] = ("psnr", "ssim")

PAPER_TITLE = "Training-Efficient Any-Step Diffusion Transformer for Real-World Image Super-Resolution"
PAPER_URL = "https://arxiv.org/abs/2606.16188"
CITATION = """@article{gao2026teasr,
  title   = {Training-Efficient Any-Step Diffusion Transformer for Real-World Image Super-Resolution},
  author  = {Gao and Zhu and Fang and Hu and Zhang},
  journal = {arXiv preprint arXiv:2606.16188},
  year    = {2026}
}"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"


def _dataset_ids(report: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset_type, dataset_name, dataset_config) of a report for the model-index."""
    data = report["dataset"]
    scale = report["scale"]
    how = "paired" if report["mode"] == "paired" else data.get("degradation") or report["mode"]
    config = f"x{scale}-{how}" + (f"-seed{data['seed']}" if data.get("seed") is not None else "")
    return _slug(data["name"]), f"{data['name']} (x{scale}, {how})", config


def eval_results_from_reports(reports: Sequence[dict[str, Any]]) -> list[EvalResult]:
    """One `EvalResult` per report, TEASR step count and model-index metric (PSNR, SSIM); baselines are left out."""
    results: list[EvalResult] = []
    for report in reports:
        dataset_type, dataset_name, dataset_config = _dataset_ids(report)
        for result in report["results"]:
            if result["kind"] != "teasr":
                continue
            steps = result["steps"]
            for metric in MODEL_INDEX_METRICS:
                value = result["mean"].get(metric)
                if value is None or not math.isfinite(value):  # the Hub's model-index wants numbers JSON can hold
                    continue
                results.append(
                    EvalResult(
                        task_type="image-to-image",
                        task_name="Image Super-Resolution",
                        dataset_type=dataset_type,
                        dataset_name=dataset_name,
                        dataset_config=dataset_config,
                        dataset_split="test",
                        metric_type=metric,
                        metric_name=f"{METRIC_LABELS[metric]} ({steps} step{'s' if steps != 1 else ''})",
                        metric_value=round(float(value), 4),
                        metric_config=f"steps={steps},crop_border={report['crop_border']},y_channel=bt601",
                    )
                )
    return results


def _results_section(reports: Sequence[dict[str, Any]]) -> str:
    if not reports:
        return "No evaluation results were supplied for this export.\n"
    parts = [
        "Mean scores from `teasr eval`. NFE counts network calls per image: one per step for an untiled image, and "
        "for a tiled one, one per batch of tiles (`tile_batch_size`, 4) per step. "
        "Baseline rows are plain PIL resizes of the same LR images.\n"
    ]
    for report in reports:
        env = report.get("environment") or {}
        parts.append(f"### {describe_dataset(report)}\n")
        parts.append(results_table(report) + "\n")
        notes = []
        if any(r.get("mean_seconds") is not None for r in report["results"]):
            notes.append(
                f"Seconds per image measured on `{env.get('device', '?')}` ({env.get('device_name') or 'unknown'}), "
                f"torch {env.get('torch')}, diffusers {env.get('diffusers')}."
            )
        settings = report.get("settings") or {}
        if settings.get("steps"):
            notes.append(
                f"Sampling: start {settings.get('start') or 'noise'}, "
                f"start timestep {settings.get('start_timestep')}, {describe_tiling(report)}, "
                f"seed {settings.get('seed')}."
            )
        if report.get("skipped"):
            notes.append("Not measured: " + "; ".join(report["skipped"][m] for m in sorted(report["skipped"])) + ".")
        if report.get("command"):
            notes.append(f"Command: `{report['command']}`")
        parts.append("\n".join(f"- {note}" for note in notes) + "\n")
    return "\n".join(parts)


def _usage_section(repo: str, lora_weight_name: str | None) -> str:
    lora = ""
    if lora_weight_name:
        lora = (
            "# the LoRA shipped next to the base pipeline; pipe.fuse_lora() then merges it for faster inference\n"
            f'pipe.load_lora_weights("{repo}", weight_name="{lora_weight_name}")\n'
        )
    return f"""### diffusers

```python
import torch
from diffusers import DiffusionPipeline
from PIL import Image

pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)
{lora}pipe.to("cuda" if torch.cuda.is_available() else "cpu")

low_res = Image.open("input.png")
result = pipe(
    low_res,
    upscale=4,  # any positive factor
    num_inference_steps=1,  # any number of steps from the same weights
    # start="lq",  # optional: "lq" (the LR image) or "noise"; pipe.supported_starts: what it was trained for
    # start_timestep=0.8,  # optional: < 1 stays closer to the LR image (default: the model's own)
    generator=torch.Generator().manual_seed(0),
)
result.images[0].save("output.png")
```

`trust_remote_code=True` loads the pipeline and transformer code stored in this repository (`pipeline_teasr.py`,
`transformer/transformer_teasr.py`); the `pipeline_teasr` package is not needed. Large images are processed in
blended tiles (`tile_size=...`, in output pixels).

### Command line (with the `pipeline_teasr` package installed)

```bash
teasr upscale input.png -o output.png --model {repo} --steps 1 --scale 4
teasr upscale photos/ -o upscaled/ --model {repo} --steps 4
teasr eval --gt HR/ --degradation bicubic --scale 4 --model {repo} --steps 1 2 4 \\
    --baseline bicubic lanczos --json eval.json --markdown eval.md
```
"""


def describe_tiling(report: dict[str, Any]) -> str:
    """How a `teasr eval` report's model rows were tiled, e.g. "64-px tiles overlapping by 8 px at 1 step, 16 px at
    2 / 4 / 8 steps" (reports written before rows recorded their tiling: the settings' tile size)."""
    rows = [r for r in report["results"] if r.get("kind") == "teasr"]
    if not rows or any("tile_size" not in r for r in rows):
        tile = (report.get("settings") or {}).get("tile_size")
        return f"tile size {tile} px" if tile else "no tiling (whole image)"
    tile = rows[0]["tile_size"]  # the tile size does not depend on the step count, the overlap may
    if not tile:
        return "no tiling (whole image)"
    by_overlap: dict[int, list[str]] = {}
    for row in rows:
        by_overlap.setdefault(row["tile_overlap"], []).append(str(row["steps"]))
    overlaps = ", ".join(
        f"{overlap} px at {' / '.join(steps)} step{'s' if steps != ['1'] else ''}"
        for overlap, steps in by_overlap.items()
    )
    return f"{tile}-px tiles overlapping by {overlaps}"


def _limitations_section(reports: Sequence[dict[str, Any]], extra: str | None) -> str:
    items = [
        "This is an independent diffusers implementation of the method as described in the paper's abstract, not "
        "the authors' release; details of the reconstruction may differ from the paper.",
        "Like other generative super-resolution models it can invent plausible detail that is not in the input "
        "(text, faces, fine textures); do not use its outputs where fidelity to the real scene matters.",
        "Fidelity (PSNR / SSIM) and perceptual quality trade off against each other and against the step count; "
        "check the table above for the data it was measured on before relying on a setting.",
    ]
    modes = {r["mode"] for r in reports}
    if "synthetic" in modes:
        items.append(
            "Scores on synthetically degraded images do not necessarily carry over to real-world degradations."
        )
    skipped = sorted({m for r in reports for m in r.get("skipped", {})})
    if skipped:
        items.append(
            "Learned metrics that could not be computed offline are not reported: " + ", ".join(skipped) + "."
        )
    if extra:
        items.append(extra.strip())
    return "\n".join(f"- {item}" for item in items) + "\n"


def build_model_card(
    reports: Sequence[dict[str, Any]] = (),
    *,
    model_name: str = "teasr-mini",
    repo_id: str | None = None,
    training_recipe: str | None = None,
    base_model: str | None = None,
    lora_weight_name: str | None = None,
    fused_lora: str | None = None,
    description: str | None = None,
    limitations: str | None = None,
    images: Sequence[str] = (),
) -> ModelCard:
    """Build the model card from evaluation ``reports`` (dicts of :func:`pipeline_teasr.evaluation.evaluate`).

    Args:
        reports: evaluation reports; their TEASR rows give the model-index and the steps-vs-quality tables.
        model_name: the model's name (card title and model-index name).
        repo_id: Hub id used in the usage snippets (default: a placeholder path).
        training_recipe: Markdown describing how the weights were trained (shown verbatim).
        base_model: Hub id of the base model, for the metadata.
        lora_weight_name: file name of an unfused LoRA shipped next to the pipeline (documents loading it).
        fused_lora: where a LoRA that was merged into these weights came from.
        description: an extra paragraph after the introduction.
        limitations: an extra limitation.
        images: paths inside the model folder (e.g. `assets/steps.png`) of figures shown under the results tables.
    """
    eval_results = eval_results_from_reports(reports)
    data = ModelCardData(
        license=LICENSE,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=list(TAGS),
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results or None,
        metrics=sorted({m for r in reports for m in r["metrics"]}) or None,
    )
    repo = repo_id or "path/to/this/folder"
    intro = (
        f"`{model_name}` is a [TEASR]({PAPER_URL}) pipeline for real-world image super-resolution in diffusers: "
        "one dual-branch diffusion transformer (a noisy branch and a low-quality-image branch with decoupled "
        "timestep conditions) that upscales with **any number of sampling steps** from the same weights, one "
        "network call per step."
    )
    weights = ""
    if fused_lora:
        weights = f"\n\nThe weights include a LoRA merged into the base transformer (source: `{fused_lora}`)."
    elif lora_weight_name:
        weights = (
            f"\n\nThe folder holds the base pipeline plus an unfused LoRA, `{lora_weight_name}`; load it with "
            "`pipe.load_lora_weights(...)` as shown below (`teasr upscale --model` on this folder loads it itself)."
        )
    body = "\n".join(
        [
            f"# {model_name}",
            "",
            intro + weights,
            *(["", description.strip()] if description else []),
            "",
            "## Usage",
            "",
            _usage_section(repo, lora_weight_name),
            "## Steps vs quality",
            "",
            _results_section(reports),
            *[f"![{Path(image).stem}]({image})\n" for image in images],
            "## Evaluation protocol",
            "",
            "PSNR and SSIM are computed on the Y channel (BT.601, MATLAB `rgb2ycbcr`) after cropping as many border "
            "pixels as the scale factor (the BasicSR convention); SSIM uses an 11x11 Gaussian window (sigma 1.5). "
            "GMSD (lower is better) uses the same crop; the HF ratio is the high-frequency energy of the output "
            "relative to the ground truth (about 1 is best; blurry outputs score lower). Grid (no reference, lower "
            "is better) is how strongly the output's high-pass luma repeats with the model's token period (the "
            "spread of its per-phase means over its std): a patch-grid artefact that photos barely have. LPIPS, "
            "DISTS, MUSIQ, MANIQA, CLIPIQA and NIQE come from pyiqa when their weights are available locally. "
            "Model outputs are scored as 8-bit images, exactly as `teasr upscale` writes them.",
            "",
            "## Training recipe",
            "",
            training_recipe.strip() if training_recipe and training_recipe.strip() else "Not documented here.",
            "",
            "## Limitations",
            "",
            _limitations_section(reports, limitations),
            "## Citation",
            "",
            f"[{PAPER_TITLE}]({PAPER_URL}) (Gao, Zhu, Fang, Hu, Zhang, 2026)",
            "",
            "```bibtex",
            CITATION,
            "```",
            "",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_model_card(card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``card`` to ``path`` (a README.md, or a folder to put one in) through a temporary file."""
    target = Path(path)
    if target.is_dir():
        target = target / "README.md"
    with atomic_write(target) as temporary:
        card.save(temporary)
    return target


def validate_model_card(path: str | os.PathLike, expected_results: int | None = None) -> ModelCard:
    """Reload a card with `ModelCard.load` and check its metadata; a `ValueError` names what is wrong."""
    target = Path(path)
    if target.is_dir():
        target = target / "README.md"
    card = ModelCard.load(target)
    data = card.data
    problems = []
    for field, expected in (("license", LICENSE), ("library_name", LIBRARY_NAME), ("pipeline_tag", PIPELINE_TAG)):
        if getattr(data, field, None) != expected:
            problems.append(f"{field} is {getattr(data, field, None)!r}, expected {expected!r}")
    missing_tags = set(TAGS) - set(data.tags or [])
    if missing_tags:
        problems.append(f"tags lack {sorted(missing_tags)}")
    found = len(data.eval_results or [])
    if expected_results is not None and found != expected_results:
        problems.append(f"{found} eval results in the model-index, expected {expected_results}")
    if problems:
        raise ValueError(f"model card {target}: " + "; ".join(problems))
    return card


def card_from_files(
    eval_jsons: Sequence[str | os.PathLike],
    training_recipe_file: str | os.PathLike | None = None,
    training_recipe: str | None = None,
    **kwargs: Any,
) -> ModelCard:
    """:func:`build_model_card` from evaluation JSON files and a training recipe given as a file or as text."""
    reports = [load_report(path) for path in eval_jsons]
    if training_recipe_file is not None:
        try:
            training_recipe = Path(training_recipe_file).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot read the training recipe {training_recipe_file}: {error}") from None
    return build_model_card(reports, training_recipe=training_recipe, **kwargs)
