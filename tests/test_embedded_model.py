"""The embedded teasr-mini in model_card/: what the README's main command and the CLI default use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.cli import main
from pipeline_teasr.hub import EMBEDDED_MODEL_DIR, default_model_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_embedded_model_is_a_small_safetensors_pipeline():
    assert default_model_path() == str(EMBEDDED_MODEL_DIR)
    index = json.loads((EMBEDDED_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_teasr", "TEASRPipeline"]
    weights = [p for p in EMBEDDED_MODEL_DIR.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) <= 40 * 2**20


def test_embedded_model_upscales_close_to_the_input():
    pipe = TEASRPipeline.from_pretrained(default_model_path())
    pipe.set_progress_bar_config(disable=True)
    lq = PIL.Image.open(EXAMPLES / "astronaut_lq.png").crop((40, 20, 72, 52))
    out = pipe(lq, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert out.shape == (128, 128, 3)
    bicubic = np.asarray(lq.resize((128, 128), PIL.Image.Resampling.BICUBIC), dtype=np.float32) / 255
    # A trained model stays faithful to the photo (a random one would not): mean error well under 10 levels.
    assert np.abs(out - bicubic).mean() < 10 / 255


def test_cli_default_model_runs(tmp_path, capsys):
    source = tmp_path / "in.png"
    PIL.Image.open(EXAMPLES / "coffee_lq.png").crop((0, 0, 24, 20)).save(source)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png")]) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (96, 80)


def test_embedded_code_copies_match_the_library():
    # model_card/ carries the library's code for trust_remote_code loading; re-export after changing these files.
    library = Path(__file__).resolve().parent.parent / "pipeline_teasr"
    copies = {
        "pipeline_teasr.py": EMBEDDED_MODEL_DIR / "pipeline_teasr.py",
        "image_processing_teasr.py": EMBEDDED_MODEL_DIR / "image_processing_teasr.py",
        "tiling.py": EMBEDDED_MODEL_DIR / "tiling.py",
        "transformer_teasr.py": EMBEDDED_MODEL_DIR / "transformer" / "transformer_teasr.py",
    }
    stale = [name for name, copy in copies.items() if copy.read_bytes() != (library / name).read_bytes()]
    assert not stale, f"model_card/ has stale copies of {stale}: run `teasr export model_card --model ...`"


def test_model_card_carries_the_committed_training_recipe():
    """The card's "Training recipe" section is train_scripts/teasr_mini/RECIPE.md as committed (`teasr export
    --training-recipe` copies it in); an edit to one without the other would describe a recipe nobody runs."""
    recipe = EMBEDDED_MODEL_DIR.parent / "train_scripts" / "teasr_mini" / "RECIPE.md"
    card = (EMBEDDED_MODEL_DIR / "README.md").read_text()
    assert recipe.read_text().strip() in card


def test_a_pipeline_built_from_the_embedded_components_upscales_like_the_loaded_one():
    """`TEASRPipeline(**pipe.components)` (diffusers' way to share models between pipelines) knows the starts and
    the tile size from the transformer's config: without them it ran the untrained noise start on untiled input
    and returned noise."""
    pipe = TEASRPipeline.from_pretrained(default_model_path())
    rebuilt = TEASRPipeline(**pipe.components)
    for each in (pipe, rebuilt):
        each.set_progress_bar_config(disable=True)
    image = PIL.Image.open(EMBEDDED_MODEL_DIR.parent / "examples" / "astronaut_lq.png").crop((0, 0, 48, 40))
    expected = pipe(image, output_type="np").images
    np.testing.assert_array_equal(rebuilt(image, output_type="np").images, expected)
    with pytest.raises(ValueError, match="trained for start='lq' only"):
        rebuilt(image, start="noise")
