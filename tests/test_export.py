"""Model card generation and `teasr export`: the exported folder loads without this package and matches in-process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.cli import main
from pipeline_teasr.evaluation import evaluate, write_json
from pipeline_teasr.model_card import CITATION, TAGS

from .conftest import make_tiny_pipeline, random_photo

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(pipe, image: np.ndarray) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(image, num_inference_steps=2, generator=generator, output_type="np").images


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory, tiny_pipeline) -> Path:
    folder = tmp_path_factory.mktemp("card_eval")
    (folder / "hr").mkdir()
    random_photo(24, 24, seed=3).save(folder / "hr" / "photo.png")
    report = evaluate(
        folder / "hr",
        degradation="bicubic",
        pipeline=tiny_pipeline,
        model="tiny",
        steps=[1, 2],
        tile_size=16,
        baselines=["bicubic"],
        learned=["lpips"],
        dataset_name="Tiny Set",
        command="teasr eval --gt hr --degradation bicubic --steps 1 2",
        progress=False,
    )
    path = folder / "eval.json"
    write_json(report, path)
    return path


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """A LoRA training output: pytorch_lora_weights.safetensors as `save_lora_weights` writes it."""
    pipe = make_tiny_pipeline(seed=0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    pipe.transformer.add_adapter(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained LoRA: non-zero B
    folder = tmp_path_factory.mktemp("lora")
    TEASRPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return folder


def test_model_card_script_builds_a_valid_card_from_eval_json(eval_json, tmp_path):
    spec = importlib.util.spec_from_file_location("make_model_card", REPO_ROOT / "scripts" / "make_model_card.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    recipe = tmp_path / "recipe.md"
    recipe.write_text("Distilled with the self-adversarial recipe (test text).\n")
    out = tmp_path / "model_card" / "README.md"
    argv = ["--eval", str(eval_json), "--training-recipe", str(recipe), "--out", str(out), "--repo-id", "me/tiny"]
    assert script.main(argv) == 0

    card = ModelCard.load(out)
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "diffusers"
    assert data.pipeline_tag == "image-to-image" and set(TAGS) <= set(data.tags)
    report = json.loads(eval_json.read_text())
    teasr = [r for r in report["results"] if r["kind"] == "teasr"]
    expected = {(r["steps"], m): round(r["mean"][m], 4) for r in teasr for m in ("psnr", "ssim")}
    found = {
        (int(e.metric_config.split(",")[0].split("=")[1]), e.metric_type): e.metric_value for e in data.eval_results
    }
    assert found == expected  # every model-index number comes from the JSON, baselines excluded
    assert {e.dataset_name for e in data.eval_results} == {"Tiny Set (x4, bicubic)"}

    text = card.text
    assert 'DiffusionPipeline.from_pretrained("me/tiny", trust_remote_code=True)' in text
    assert "teasr upscale input.png -o output.png --model me/tiny" in text
    assert "| TEASR (2 steps) | 2 | 2 |" in text and "| Bicubic (PIL) |" in text
    assert f"{teasr[0]['mean']['psnr']:.2f}" in text
    assert "self-adversarial recipe (test text)" in text and "## Limitations" in text
    assert CITATION in text and "arXiv:2606.16188" in text
    assert report["command"] in text and report["skipped"]["lpips"] in text
    assert "16-px tiles overlapping by 2 px at 1 step, 4 px at 2 steps" in text  # each row's own tiling

    assert script.main(["--eval", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.md")]) == 2


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_pipeline_dir, lora_dir, eval_json) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    plot = root.parent / "steps_plot.png"
    random_photo(16, 12, seed=5).save(plot)
    common = ["--model", tiny_pipeline_dir, "--lora", str(lora_dir), "--card-json", str(eval_json)]
    common += ["--card-image", str(plot)]
    assert main(["export", str(root / "fused"), *common, "--fuse"]) == 0
    assert main(["export", str(root / "unfused"), *common]) == 0
    return {"root": root, "fused": root / "fused", "unfused": root / "unfused"}


def test_exported_folders_are_complete_safetensors_only_and_atomic(exports, tiny_pipeline_dir, capsys):
    for kind in ("fused", "unfused"):
        folder = exports[kind]
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert {"README.md", "model_index.json", "pipeline_teasr.py", "image_processing_teasr.py", "tiling.py"} <= set(
            files
        )
        assert {"transformer/transformer_teasr.py", "transformer/diffusion_pytorch_model.safetensors"} <= set(files)
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == ["pipeline_teasr", "TEASRPipeline"]
        card = ModelCard.load(folder / "README.md")
        assert card.data.license == "apache-2.0" and len(card.data.eval_results) == 4
    assert (exports["unfused"] / "pytorch_lora_weights.safetensors").is_file()
    assert not (exports["fused"] / "pytorch_lora_weights.safetensors").exists()
    assert 'weight_name="pytorch_lora_weights.safetensors"' in (exports["unfused"] / "README.md").read_text()
    assert "LoRA merged into the base transformer" in (exports["fused"] / "README.md").read_text()
    for kind in ("fused", "unfused"):  # the figure is shipped and shown in the card
        assert (exports[kind] / "assets" / "steps_plot.png").is_file()
        assert "![steps_plot](assets/steps_plot.png)" in (exports[kind] / "README.md").read_text()
    # no staging folders are left next to the outputs
    assert sorted(p.name for p in exports["root"].iterdir()) == ["fused", "unfused"]

    # an existing target is refused; --overwrite replaces it in one rename; a failed export leaves nothing behind
    capsys.readouterr()
    target = exports["root"] / "plain"
    assert main(["export", str(target), "--model", tiny_pipeline_dir]) == 0
    assert main(["export", str(target), "--model", tiny_pipeline_dir]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (target / "assets").mkdir()
    (target / "assets" / "old_plot.png").write_bytes(b"an earlier export's figure")
    assert main(["export", str(target), "--model", tiny_pipeline_dir, "--overwrite"]) == 0
    assert not (target / "assets").exists() and (target / "model_index.json").is_file()
    broken = exports["root"] / "broken"
    assert main(["export", str(broken), "--model", tiny_pipeline_dir, "--card-json", str(target / "nope.json")]) == 2
    assert main(["export", str(broken), "--model", tiny_pipeline_dir, "--card-image", str(target / "README.md")]) == 2
    assert "is not a PNG or JPEG file" in capsys.readouterr().err
    fake_plot = exports["root"].parent / "fake_plot.png"  # text named like a figure
    fake_plot.write_text("not an image")
    assert main(["export", str(broken), "--model", tiny_pipeline_dir, "--card-image", str(fake_plot)]) == 2
    assert f"--card-image {fake_plot} is not a PNG or JPEG file" in capsys.readouterr().err
    # --overwrite never replaces a folder that is not a model folder (say the user's project, or '.')
    documents = exports["root"].parent / "documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("years of work")
    assert main(["export", str(documents), "--model", tiny_pipeline_dir, "--overwrite"]) == 2
    assert "--overwrite only replaces an earlier export (a folder with model_index.json)" in capsys.readouterr().err
    assert (documents / "thesis.txt").read_text() == "years of work"
    (documents / "thesis.txt").unlink()  # an empty folder is fine
    assert main(["export", str(documents), "--model", tiny_pipeline_dir, "--overwrite"]) == 0
    assert (documents / "model_index.json").is_file()
    # nor a training run (a pipeline with checkpoints and logs) or a clone of a Hub repo
    for extra in ("checkpoint-3000", ".git"):
        (documents / extra).mkdir()
        assert main(["export", str(documents), "--model", tiny_pipeline_dir, "--overwrite"]) == 2
        assert f"--overwrite would delete {extra} in {documents}" in capsys.readouterr().err
        assert (documents / extra).is_dir()
        (documents / extra).rmdir()
    assert not broken.exists()
    assert sorted(p.name for p in exports["root"].iterdir()) == ["fused", "plain", "unfused"]


def test_export_loads_without_the_package_and_fused_equals_unfused(exports, tiny_pipeline_dir, lora_dir, tmp_path):
    image = np.asarray(random_photo(8, 10, seed=4))
    base = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    base.set_progress_bar_config(disable=True)
    without_lora = _run(base, image)
    base.load_lora_weights(lora_dir)
    expected = _run(base, image)  # in-process, LoRA loaded unfused
    assert np.abs(expected - without_lora).max() > 1e-2  # the LoRA matters
    fused = TEASRPipeline.from_pretrained(exports["fused"])
    fused.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_run(fused, image), expected, atol=1e-5)

    np.save(tmp_path / "input.npy", image)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pipeline_teasr"] = None  # the installed library must not be needed
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        image = np.load({str(tmp_path / "input.npy")!r})
        outputs = {{}}
        for kind in ("fused", "unfused"):
            folder = {str(exports["root"])!r} + "/" + kind
            pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
            assert type(pipe).__module__.startswith("diffusers_modules"), type(pipe).__module__
            if kind == "unfused":
                pipe.load_lora_weights(folder, weight_name="pytorch_lora_weights.safetensors")
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator().manual_seed(0)
            outputs[kind] = pipe(image, num_inference_steps=2, generator=generator, output_type="np").images
        np.savez({str(tmp_path / "out.npz")!r}, **outputs)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(outputs["fused"], expected, atol=1e-5)
    np.testing.assert_allclose(outputs["unfused"], expected, atol=1e-5)


def test_the_cli_upscales_an_unfused_export_with_its_shipped_lora(exports, tmp_path):
    """The card of an unfused export says `teasr upscale --model FOLDER`: the LoRA shipped there must be applied."""
    random_photo(8, 10, seed=4).save(tmp_path / "in.png")
    outputs = {}
    for kind in ("fused", "unfused"):
        out = tmp_path / f"{kind}.png"
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--model", str(exports[kind])]) == 0
        outputs[kind] = np.asarray(PIL.Image.open(out), dtype=int)
    assert np.abs(outputs["fused"] - outputs["unfused"]).max() <= 1


def test_the_cli_applies_the_lora_an_unfused_export_ships_on_the_hub(exports, tiny_pipeline_dir, tmp_path):
    """`teasr upscale --model me/repo` for an unfused export pushed to the Hub: diffusers downloads only the pipeline's
    folders, so the LoRA beside them is fetched on its own and applied. Served here from a Hub cache, offline."""
    cache = tmp_path / "hub"
    for repo, folder in (("me/unfused", exports["unfused"]), ("me/plain", tiny_pipeline_dir)):  # plain: no LoRA
        entry = cache / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, entry / "snapshots" / ("0" * 40))
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text("0" * 40)
    random_photo(8, 10, seed=4).save(tmp_path / "in.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "m")}
    for repo, out in (("me/unfused", "unfused.png"), ("me/plain", "plain.png"), (str(exports["fused"]), "fused.png")):
        command = [sys.executable, "-m", "pipeline_teasr.cli", "upscale", "in.png", "-o", out, "--model", repo]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        if repo == "me/plain":  # offline, a file the cache has never seen may still exist on the Hub: said, once
            assert "offline, so it is unknown whether me/plain ships a LoRA" in result.stderr
        else:
            assert "ships a LoRA" not in result.stderr
    images = {name: np.asarray(PIL.Image.open(tmp_path / f"{name}.png"), dtype=int) for name in ("unfused", "fused")}
    assert np.abs(images["unfused"] - images["fused"]).max() <= 1  # the LoRA was applied


def test_a_lora_that_does_not_fit_the_base_is_one_clear_error(lora_dir, tmp_path, capsys):
    """peft skips layers the base lacks with a warning (a silently partial LoRA) and reports other sizes as a page
    of mismatches: both are refused before anything is written, naming the base the LoRA was trained on."""
    deeper = tmp_path / "deeper"
    make_tiny_pipeline(num_layers=3).save_pretrained(deeper)
    deeper_lora = tmp_path / "deeper_lora"
    pipe = TEASRPipeline.from_pretrained(deeper)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]))
    TEASRPipeline.save_lora_weights(deeper_lora, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    (deeper_lora / "training_args.json").write_text(json.dumps({"pretrained_model_name_or_path": str(deeper)}))
    wider = tmp_path / "wider"
    make_tiny_pipeline(num_attention_heads=1).save_pretrained(wider)

    shallow = tmp_path / "shallow"
    make_tiny_pipeline().save_pretrained(shallow)
    code = main(["export", str(tmp_path / "out"), "--model", str(shallow), "--lora", str(deeper_lora), "--fuse"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "does not fit" in err[0] and "has no layer transformer_blocks.2.attn.to_q" in err[0]
    assert f"pass --model {deeper}" in err[0]
    assert main(["export", str(tmp_path / "out"), "--model", str(wider), "--lora", str(lora_dir), "--fuse"]) == 2
    assert "for 32 features, that model's layer has 16" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # Without --model, the base the LoRA records is used.
    assert main(["export", str(tmp_path / "out"), "--lora", str(deeper_lora), "--fuse"]) == 0
    assert f"exported {deeper} + LoRA" in capsys.readouterr().out

    # The Python API refuses both the same way, in one line, and leaves the pipeline as it was.
    for base, lora, problem in (
        (shallow, deeper_lora, r"that model has no layer transformer_blocks\.2\.attn\.to_q"),
        (wider, lora_dir, r"it adapts transformer_blocks\.0\.attn\.to_\w for 32 features, that model's layer has 16"),
    ):
        pipe = TEASRPipeline.from_pretrained(base)
        pipe.set_progress_bar_config(disable=True)
        image = np.asarray(random_photo(8, 10, seed=4))
        before = _run(pipe, image)
        with pytest.raises(
            ValueError, match=rf"^this LoRA does not fit the pipeline's transformer: {problem}\. "
        ) as raised:
            pipe.load_lora_weights(lora)
        assert "\n" not in str(raised.value)
        assert not getattr(pipe.transformer, "peft_config", None)
        np.testing.assert_array_equal(_run(pipe, image), before)


def test_a_hub_that_does_not_answer_leaves_the_shipped_lora_to_the_cache(monkeypatch, caplog, tmp_path):
    """diffusers loads a cached pipeline when the Hub answers 429 or 5xx; the LoRA lookup must not crash there."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    from pipeline_teasr.hub import shipped_lora_file

    def busy(*args, **kwargs):
        response = httpx.Response(429, request=httpx.Request("GET", "https://huggingface.co/me/busy"))
        raise HfHubHTTPError("429 Client Error: Too Many Requests", response=response)

    cached = {"path": None}
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", busy)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: cached["path"])
    with caplog.at_level("WARNING", logger="pipeline_teasr.hub"):
        assert shipped_lora_file("me/busy") is None
    assert "the Hub did not answer (429 Client Error: Too Many Requests), so it is unknown whether me/busy" in (
        caplog.text
    )
    cached["path"] = str(tmp_path / "pytorch_lora_weights.safetensors")  # fetched on an earlier, online run
    assert shipped_lora_file("me/busy") == cached["path"]
