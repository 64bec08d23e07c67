"""teasr-mini's diagnostic scripts run end to end on a small photo folder with the recipe's file names."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.evaluation import evaluate, write_json
from pipeline_teasr.hardware import recommended_mixed_precision

from .conftest import random_photo

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_DIR = REPO_ROOT / "train_scripts" / "teasr_mini"
PROBE = RECIPE_DIR / "regression_probe.py"


def _run(*args: str, script: Path = PROBE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)


def _import_recipe_script(name: str):
    """Import train_scripts/teasr_mini/`name`.py, whose sibling imports (probe_crops, ...) resolve from its folder."""
    sys.path.insert(0, str(RECIPE_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(RECIPE_DIR))


# A one-block transformer with the recipe's patch and LQ-skip layout, whose training steps take well under a second.
TINY_MODEL_CONFIG = (
    '{"patch_size": 4, "in_channels": 48, "out_channels": 3, "num_layers": 1, "attention_head_dim": 8,'
    ' "num_attention_heads": 2, "joint_attention_dim": 16, "axes_dims_rope": [2, 2, 4], "lq_skip": true}'
)


def _training_photos(folder: Path) -> None:
    """Three 96 x 96 photos named like the recipe's 25 % training scale."""
    folder.mkdir(parents=True)
    for seed in range(3):
        random_photo(96, 96, seed=seed).save(folder / f"photo{seed}_25.png")


def _run_recipe(env: dict[str, str]) -> str:
    """recipe.sh with exactly this environment; asserts it succeeded and returns its output."""
    result = subprocess.run(
        ["bash", str(RECIPE_DIR / "recipe.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_regression_probe_trains_and_reports_gains_over_bicubic(tmp_path):
    names = ("Garden_25", "Wood_25", "Aqua_25", "Blinds_25", "Wood_50", "Aqua_50", "Blinds_50")
    for seed, name in enumerate(names):
        random_photo(136, 144, seed=seed).save(tmp_path / f"{name}.png")
    random_photo(64, 64, seed=9).save(tmp_path / "Tiny_25.png")  # one crop only: the whole image (drawn, seed 0)
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for seed in range(2):
        random_photo(96, 112, seed=10 + seed).save(heldout / f"held{seed}.png")  # several 64-px tiles
    validation = tmp_path / "validation"
    validation.mkdir()
    random_photo(96, 112, seed=20).save(validation / "val.png")
    args = ("--arch", "cnn", "--data", str(tmp_path), "--steps", "2", "--eval_every", "2", "--heldout", str(heldout))
    result = _run(*args, "--validation", str(validation))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines] == [2]
    for line in lines:
        assert line["arch"] == "cnn" and isinstance(line["gain_db"], float) and isinstance(line["ema_gain_db"], float)
        assert isinstance(line["heldout_ema_gain_db"], float)
        # The validation photos are scored on their own, not as a copy of the held-out reading.
        assert isinstance(line["validation_ema_gain_db"], float)
        assert line["validation_ema_gain_db"] != line["heldout_ema_gain_db"]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--arch", "dit", "--data", str(empty))
    assert result.returncode != 0 and "no PNG photos" in result.stderr and "Traceback" not in result.stderr


def test_regression_probe_heldout_score_is_tile_consistent_and_measures_the_output(tmp_path):
    regression_probe = _import_recipe_script("regression_probe")
    for seed in range(2):
        random_photo(96, 112, seed=10 + seed).save(tmp_path / f"held{seed}.png")
    pairs = regression_probe.heldout_pairs(tmp_path)
    # Passing the bicubic input through scores torch's bicubic against PIL's: close to 0 dB, and the same whether the
    # image is scored whole or as feathered 64-pixel tiles (a misplaced or mis-weighted tile would cost dBs).
    whole = regression_probe.heldout_gain(torch.nn.Identity(), pairs, tile=0)
    tiled = regression_probe.heldout_gain(torch.nn.Identity(), pairs, tile=64)
    assert abs(whole) < 0.5 and tiled == pytest.approx(whole, abs=0.01)
    # An output that ignores the photo (mid-grey) must score far below bicubic.
    grey = torch.nn.Conv2d(3, 3, 1)
    torch.nn.init.zeros_(grey.weight)
    torch.nn.init.zeros_(grey.bias)
    assert regression_probe.heldout_gain(grey, pairs, tile=64) < -5


def test_critic_probe_trains_heads_per_level_and_refuses_bad_input(tmp_path, tiny_pipeline_dir):
    for seed in range(3):
        random_photo(80, 96, seed=seed).save(tmp_path / f"photo{seed}.png")
    script = RECIPE_DIR / "critic_probe.py"
    common = ["--model", tiny_pipeline_dir, "--data", str(tmp_path), "--steps", "4"]
    result = _run(*common, "--levels", "0.5", "0.02", script=script)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["tau"] for line in lines] == [0.5, 0.02]
    for line in lines:
        assert line["steps"] == 4 and 0.0 <= line["hinge_last_quarter"] <= 4.0
        assert line["hinge_first_quarter"] == pytest.approx(2.0, abs=1e-6)  # zero-initialised heads: chance

    for bad in (["--levels", "1.0"], ["--data", str(tmp_path / "missing")]):
        result = _run(*common, *bad, script=script)
        assert result.returncode != 0 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_grid_check_reports_a_token_grid_per_folder(tmp_path):
    clean, gridded = tmp_path / "clean", tmp_path / "gridded"
    clean.mkdir()
    gridded.mkdir()
    for seed in range(2):
        photo = np.asarray(random_photo(96, 128, seed=seed), dtype=np.float64)
        PIL.Image.fromarray(photo.astype(np.uint8)).save(clean / f"p{seed}.png")
        yy, xx = np.mgrid[0:96, 0:128]
        lattice = 6.0 * (((yy % 4) == 0) | ((xx % 4) == 0))[..., None]
        PIL.Image.fromarray(np.clip(photo + lattice, 0, 255).astype(np.uint8)).save(gridded / f"p{seed}.png")
    script = RECIPE_DIR / "grid_check.py"
    result = _run(str(clean), str(gridded), "--period", "4", script=script)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["folder"] for line in lines] == [str(clean), str(gridded)] and lines[0]["images"] == 2
    assert lines[1]["grid_strength_mean"] > 3 * lines[0]["grid_strength_mean"]

    result = _run(str(tmp_path / "missing"), script=script)
    assert result.returncode != 0 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_choose_start_scores_each_level_on_training_crops_and_picks_the_best(tmp_path, tiny_pipeline_dir):
    for seed, name in enumerate(("Garden_25", "Wood_25", "Aqua_25")):
        random_photo(40, 48, seed=seed).save(tmp_path / f"{name}.png")
    result = _run(
        "--model", tiny_pipeline_dir, "--data", str(tmp_path), "--levels", "lq", "1.0", "0.05", "--size", "32",
        script=RECIPE_DIR / "choose_start.py",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    scores = report["psnr_y_1step"]
    assert set(scores) == {"lq", "1.0", "0.05"} and all(0 < value < 100 for value in scores.values())
    assert len(set(scores.values())) == 3 and 0 < report["bicubic"] < 100
    assert report["gain_over_bicubic"]["lq"] == pytest.approx(scores["lq"] - report["bicubic"], abs=1e-3)
    assert report["best"] == max(scores, key=scores.get)
    # With a zero velocity head the LQ start returns the bicubic upscale itself.
    # A model trained for the LQ start only is scored there alone.
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.transformer.zero_output_layers()
    pipe.register_to_config(supported_starts=["lq"])
    pipe.save_pretrained(tmp_path / "zero_head")
    zero = _run(
        "--model", str(tmp_path / "zero_head"), "--data", str(tmp_path), "--levels", "lq", "1.0", "--size", "32",
        script=RECIPE_DIR / "choose_start.py",
    )  # fmt: skip
    assert zero.returncode == 0, zero.stderr
    report = json.loads(zero.stdout)
    assert report["gain_over_bicubic"]["lq"] == pytest.approx(0, abs=1e-3)
    assert report["unsupported"] == ["1.0"] and report["best"] == "lq"
    # --transformer swaps in another transformer folder (a training checkpoint's raw weights).
    swapped = _run(
        "--model", tiny_pipeline_dir, "--transformer", str(tmp_path / "zero_head" / "transformer"),
        "--data", str(tmp_path), "--levels", "lq", "--size", "32", script=RECIPE_DIR / "choose_start.py",
    )  # fmt: skip
    assert swapped.returncode == 0, swapped.stderr
    assert json.loads(swapped.stdout)["gain_over_bicubic"]["lq"] == pytest.approx(0, abs=1e-3)
    bad = _run("--model", tiny_pipeline_dir, "--levels", "1.5", script=RECIPE_DIR / "choose_start.py")
    assert bad.returncode == 2 and "(0, 1]" in bad.stderr


def test_report_builds_tables_and_plot_from_eval_jsons_only(tmp_path, tiny_pipeline):
    (tmp_path / "hr").mkdir()
    random_photo(24, 24, seed=3).save(tmp_path / "hr" / "photo.png")
    runs = tmp_path / "eval"
    runs.mkdir()
    for model, protocol, steps, baselines in (("teasr", "light", [1, 2], ["bicubic"]), ("base", "light", [1], [])):
        report = evaluate(
            tmp_path / "hr", degradation=protocol, pipeline=tiny_pipeline, model=model, steps=steps,
            baselines=baselines, learned=[], dataset_name="tiny", command=f"teasr eval {model}", progress=False,
        )  # fmt: skip
        write_json(report, runs / f"{model}_{protocol}.json")
    out = tmp_path / "docs"
    result = _run("--runs", str(runs), "--out", str(out), script=RECIPE_DIR / "report.py")
    assert result.returncode == 0, result.stderr
    tables = (out / "teasr_mini_tables.md").read_text()
    teasr = json.loads((runs / "teasr_light.json").read_text())
    one_step = next(row for row in teasr["results"] if row["kind"] != "baseline" and row["steps"] == 1)
    assert f"| TEASR (distilled) | 1 | {one_step['mean']['psnr']:.2f} |" in tables
    bicubic = next(row for row in teasr["results"] if row["kind"] == "baseline")
    assert f"| {bicubic['label']} | - | {bicubic['mean']['psnr']:.2f} |" in tables
    assert "| flow-matching base (T = 1) | 1 |" in tables
    assert "`teasr eval teasr`" in tables and "Held-out photos, training degradation family" in tables
    assert PIL.Image.open(out / "teasr_mini_steps.png").size[0] > 100

    empty = tmp_path / "none"
    empty.mkdir()
    result = _run("--runs", str(empty), "--out", str(out), script=RECIPE_DIR / "report.py")
    assert result.returncode != 0 and "no evaluation JSONs" in result.stderr and "Traceback" not in result.stderr


def test_prepare_data_builds_training_scales_and_heldout_crops_from_unpacked_packages(tmp_path, monkeypatch):
    prepare_data = _import_recipe_script("prepare_data")
    mate = tmp_path / "mate"
    mate.mkdir()
    names = ["LadyBird", "Storm", *(f"Photo{i}" for i in range(10))]
    for seed, name in enumerate(names):
        random_photo(96, 128, seed=seed).save(mate / f"{name}.jpg")
    plasma = tmp_path / "wallpapers"
    for seed, name in enumerate(prepare_data.PLASMA_PHOTOS):
        folder = plasma / name / "contents" / "images"
        folder.mkdir(parents=True)
        random_photo(80, 128, seed=100 + seed).save(folder / "2560x1600.jpg")
    lomiri = {package: tmp_path / package for package in prepare_data.LOMIRI_PHOTOS}
    for package, names in prepare_data.LOMIRI_PHOTOS.items():
        lomiri[package].mkdir()
        for seed, name in enumerate(names):
            random_photo(64, 96, seed=200 + seed).save(lomiri[package] / name)
    monkeypatch.setattr(prepare_data, "MAX_TRAIN_SIDE", 48)  # the camera originals are brought down to this side

    sources = tmp_path / "sources"
    unpacked = {"mate_dir": mate, "plasma_dir": plasma, "lomiri_dirs": lomiri}
    prepare_data.build(tmp_path / "out", sources_dir=sources, **unpacked)
    train = sorted(path.name for path in (tmp_path / "out" / "train").iterdir())
    lomiri_count = sum(len(names) for names in prepare_data.LOMIRI_PHOTOS.values())
    assert len(train) == 3 * (10 + len(prepare_data.PLASMA_PHOTOS) + lomiri_count) == 3 * 36
    assert "Photo0_25.png" in train and "plasma_Kite_50.png" in train and not any("LadyBird" in n for n in train)
    assert "lomiri_Kleiber_100.png" in train and "lomiri_Picture_0B_25.png" in train
    assert PIL.Image.open(tmp_path / "out" / "train" / "plasma_Kite_25.png").size == (32, 20)
    assert PIL.Image.open(tmp_path / "out" / "train" / "lomiri_Bridge_100.png").size == (48, 32)
    assert PIL.Image.open(tmp_path / "out" / "train" / "lomiri_Bridge_50.png").size == (24, 16)
    heldout = sorted(path.name for path in (tmp_path / "out" / "heldout").iterdir())
    assert "mate_LadyBird.png" in heldout and "skimage_astronaut.png" in heldout and len(heldout) == 6
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    sources_used = list(prepare_data.SOURCE_PACKAGES)
    scales = list(prepare_data.TRAIN_SCALES)
    assert manifest == {"train": train, "heldout": heldout, "train_scales": scales, "sources": sources_used}
    assert "plasma-workspace-wallpapers" in sources_used and prepare_data.built_as_now(tmp_path / "out")
    # A folder built with other scales (another recipe) is stale: the recipe rebuilds it rather than train on it.
    other_scales = [scale / 2 for scale in prepare_data.TRAIN_SCALES]
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({**manifest, "train_scales": other_scales}))
    assert not prepare_data.built_as_now(tmp_path / "out") and not prepare_data.built_as_now(tmp_path / "missing")
    # So is one built from other packages.
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({**manifest, "sources": sources_used[:-1]}))
    assert not prepare_data.built_as_now(tmp_path / "out")
    check = [sys.executable, str(RECIPE_DIR / "prepare_data.py"), "--output_dir", str(tmp_path / "out"), "--check"]
    stale = subprocess.run(check, capture_output=True, text=True)
    assert stale.returncode == 1 and "is not a build of the current sources and scales" in stale.stdout
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    current = subprocess.run(check, capture_output=True, text=True)
    assert current.returncode == 0 and "is a build of the current" in current.stdout, current.stderr

    # The kept sources rebuild the same folders with no package and no unpacked folder (a machine without apt-get).
    kept = sorted(str(path.relative_to(sources)) for path in sources.rglob("*.jpg"))
    assert len(kept) == 12 + len(prepare_data.PLASMA_PHOTOS) + lomiri_count
    assert "plasma/Kite/contents/images/2560x1600.jpg" in kept and "mate/Storm.jpg" in kept
    prepare_data.build(tmp_path / "rebuilt", sources_dir=sources)
    assert json.loads((tmp_path / "rebuilt" / "manifest.json").read_text()) == manifest
    for name in ("plasma_Kite_25.png", "lomiri_Bridge_100.png", "Photo3_50.png"):
        rebuilt = np.asarray(PIL.Image.open(tmp_path / "rebuilt" / "train" / name))
        assert np.array_equal(rebuilt, np.asarray(PIL.Image.open(tmp_path / "out" / "train" / name)))

    (plasma / "Kite" / "contents" / "images" / "2560x1600.jpg").unlink()
    with pytest.raises(SystemExit, match="missing Plasma photos"):
        prepare_data.build(tmp_path / "out", **unpacked)
    assert not (tmp_path / "out" / "manifest.json").exists()  # the failed rebuild is not mistaken for a finished one
    random_photo(80, 128, seed=0).save(plasma / "Kite" / "contents" / "images" / "2560x1600.jpg")
    (lomiri["lomiri-wallpapers-20.04"] / "Kleiber_by_Lukas_Baubkus.jpg").unlink()
    with pytest.raises(SystemExit, match="missing Lomiri photos"):
        prepare_data.build(tmp_path / "again", **unpacked)

    # A kept sources folder that lacks a source (kept before it was added) is not read as complete: the packages
    # are fetched, and a machine that cannot fetch them says so in one line.
    with pytest.raises(SystemExit, match="could not download the Debian package teasr-no-such-package"):
        prepare_data.fetch_debian_package("teasr-no-such-package", tmp_path)
    shutil.rmtree(sources / "lomiri-wallpapers-20.04")
    fetched = []

    def offline(package, work):
        fetched.append(package)
        raise SystemExit(f"could not download the Debian package {package}")

    monkeypatch.setattr(prepare_data, "fetch_debian_package", offline)
    with pytest.raises(SystemExit, match="could not download"):
        prepare_data.build(tmp_path / "partial", sources_dir=sources)
    assert fetched == ["mate-backgrounds"]


def test_report_tables_show_the_grid_column_and_tolerate_older_reports(tmp_path, tiny_pipeline_dir):
    gt_dir, runs, out = tmp_path / "heldout", tmp_path / "eval", tmp_path / "docs"
    gt_dir.mkdir()
    runs.mkdir()
    for seed in range(2):
        random_photo(32, 32, seed=seed).save(gt_dir / f"photo{seed}.png")
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    kwargs = dict(degradation="light", pipeline=pipe, learned=[], progress=False, tile_size=16)
    write_json(evaluate(gt_dir, steps=[1, 2], baselines=["bicubic", "lanczos"], **kwargs), runs / "teasr_light.json")
    older = evaluate(gt_dir, steps=[1], **kwargs)
    for row in older["results"]:  # as written before `teasr eval` scored the grid
        del row["mean"]["grid"]
    write_json(older, runs / "base_light.json")
    result = _run("--runs", str(runs), "--out", str(out), script=RECIPE_DIR / "report.py")
    assert result.returncode == 0, result.stderr
    table = (out / "teasr_mini_tables.md").read_text()
    assert "| method | steps | PSNR-Y | SSIM-Y | GMSD | HF ratio | grid | s / image |" in table
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    assert float(rows["Bicubic (PIL)"][7]) >= 0.0 and rows["flow-matching base (T = 1)"][7].strip() == "-"
    assert (out / "teasr_mini_steps.png").stat().st_size > 0


def test_comparison_crops_the_most_detailed_window_of_the_truth_and_shows_what_eval_saved(tmp_path, tiny_pipeline_dir):
    comparison = _import_recipe_script("comparison")
    flat = np.full((64, 96, 3), 128, dtype=np.uint8)
    flat[24:40, 56:72] = np.random.default_rng(0).integers(0, 255, (16, 16, 3))  # the only detail
    assert comparison.most_detailed_window(flat, 16, stride=8) == (24, 56)

    gt_dir, saved, figure = tmp_path / "heldout", tmp_path / "images", tmp_path / "docs" / "comparison.png"
    gt_dir.mkdir()
    for seed in range(2):
        random_photo(32, 48, seed=seed).save(gt_dir / f"photo{seed}.png")
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    evaluate(gt_dir, steps=[1, 4], baselines=["bicubic"], degradation="light", pipeline=pipe, learned=[],
             progress=False, tile_size=16, save_dir=saved)  # fmt: skip
    args = ["--eval_dir", str(saved), "--gt", str(gt_dir), "--names", "photo0", "photo1", "--crop", "16"]
    result = _run(*args, "--out", str(figure), script=RECIPE_DIR / "comparison.py")
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(figure).size[0] > PIL.Image.open(figure).size[1] > 0  # 2 rows of 5 panels
    missing = _run(*args, "--methods", "teasr-8step", "--out", str(figure), script=RECIPE_DIR / "comparison.py")
    assert missing.returncode != 0 and "missing: " in missing.stderr and "teasr-8step" in missing.stderr


def test_recipe_trains_the_main_run_beside_the_ablations_then_resumes_it_and_extends_it(tmp_path):
    """recipe.sh: the main run's first PARALLEL_STEPS steps train beside the ablations, the rest resume on every core;
    a re-run skips finished runs, and a larger DISTILL_STEPS continues the finished run from its last checkpoint."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    _training_photos(data / "train")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PY": sys.executable, "DATA": str(data),
        "RUNS": str(runs), "MODEL_CONFIG": TINY_MODEL_CONFIG, "FLOW_STEPS": "1", "ABLATION_STEPS": "1",
        "PARALLEL_STEPS": "2", "DISTILL_STEPS": "3", "DISTILL_FLAGS": "--checkpointing_steps 1",
        "BATCH_SIZE": "3", "TRAIN_FLAGS": "--dataloader_num_workers 1", "TIME_BUDGET_MINUTES": "0",
    }  # fmt: skip

    def recipe(stages: str, **overrides: str) -> str:
        return _run_recipe({**env, "STAGES": stages, **overrides})

    def trained_steps(run: str) -> int:
        return json.loads((runs / run / "training_args.json").read_text())["max_train_steps"]

    log = recipe("base distill ablations")
    cores = len(os.sched_getaffinity(0))
    assert f"recipe: MIXED_PRECISION={recommended_mixed_precision()}, OMP_NUM_THREADS={cores}" in log
    assert {run: trained_steps(run) for run in ("teasr_short", "coupled", "no_rect", "critic", "teasr")} == {
        "teasr_short": 1, "coupled": 1, "no_rect": 1, "critic": 1, "teasr": 3,
    }  # fmt: skip
    assert "teasr/checkpoint-2 at step 2" in log  # the second phase resumed where the first stopped
    for run in ("flow_base", "teasr", "critic"):  # BATCH_SIZE and TRAIN_FLAGS reach both training stages
        args = json.loads((runs / run / "training_args.json").read_text())
        assert (args["train_batch_size"], args["dataloader_num_workers"]) == (3, 1), run
    assert TEASRPipeline.from_pretrained(runs / "teasr").transformer.config.num_layers == 1

    assert "Running teasr training" not in recipe("base distill ablations")
    log = recipe("distill", DISTILL_STEPS="4")
    assert "teasr/checkpoint-3 at step 3" in log and trained_steps("teasr") == 4


def test_recipe_times_this_machine_and_shrinks_its_step_counts_to_the_time_budget(tmp_path):
    """recipe.sh with a time budget: timing runs, then all three step counts scaled by one factor, kept in plan.env so
    that a re-run trains to the same counts."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    _training_photos(data / "train")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PY": sys.executable, "DATA": str(data),
        "RUNS": str(runs), "MODEL_CONFIG": TINY_MODEL_CONFIG, "BATCH_SIZE": "2", "MIXED_PRECISION": "no",
        "FLOW_STEPS": "4", "DISTILL_STEPS": "10", "ABLATION_STEPS": "2", "PROBE_STEPS": "5",
        "TIME_BUDGET_MINUTES": "0.001", "STAGES": "base distill ablations",
    }  # fmt: skip

    log = _run_recipe(env)
    # Far too little time: every count falls to its floor (the main run still covers the ablations' parallel phase).
    assert "recipe: FLOW_STEPS=1 DISTILL_STEPS=5 ABLATION_STEPS=1 (time budget 0.001 minutes)" in log
    assert (runs / "plan.env").read_text().strip() == "FLOW_STEPS=1 DISTILL_STEPS=5 ABLATION_STEPS=1"
    assert not (runs / "probe").exists()
    steps = {
        run: json.loads((runs / run / "training_args.json").read_text())["max_train_steps"]
        for run in ("flow_base", "teasr", "teasr_short", "coupled", "no_rect", "critic")
    }
    assert steps == {"flow_base": 1, "teasr": 5, "teasr_short": 1, "coupled": 1, "no_rect": 1, "critic": 1}
    log = _run_recipe(env)  # resumed: the kept plan, nothing timed or trained again
    assert "Running teasr training" not in log and "time budget" not in log

    result = subprocess.run(
        ["bash", str(RECIPE_DIR / "recipe.sh")], env={**env, "PROBE_STEPS": "3"}, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "recipe: PROBE_STEPS must be at least 5 (each timing run needs two checkpoints to time between)"
    )


def test_plan_steps_reads_step_times_from_checkpoint_lines_and_scales_the_recipe_to_its_budget(tmp_path):
    plan_steps = _import_recipe_script("plan_steps")
    line = "{} - INFO - teasr.train - [RANK 0] Saved checkpoint runs/x/checkpoint-{}\n"
    log = tmp_path / "train.log"
    log.write_text(line.format("12/07/2026 04:00:00", 25) + "Steps: 50%\n" + line.format("12/07/2026 04:01:15", 100))
    assert plan_steps.seconds_per_step(log.read_text()) == pytest.approx(1.0)  # 75 s for 75 steps
    # Step times measured on the two CPUs of docs/RESULTS.md: the AVX-512 one trains the recipe as written...
    assert plan_steps.cpu_plan(0.32, 0.53, 90 * 60, 150) == (1500, 5000, 500)
    # ... the AVX2-only one (0.87 s per base step, 1.8 s per distillation step beside another run) gets 44 % of it.
    flow, distill, ablation = plan_steps.cpu_plan(0.87, 1.8, 90 * 60, 330)
    assert (flow, distill, ablation) == (650, 2200, 200)
    # A budget with room for more never trains more than the counts given.
    assert plan_steps.cpu_plan(0.01, 0.01, 90 * 60, 0, 100, 300, 20) == (100, 300, 20)

    log.write_text("no checkpoint was saved\n")
    result = subprocess.run(
        [sys.executable, str(RECIPE_DIR / "plan_steps.py"), "seconds-per-step", str(log)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "plan_steps.py: the log has fewer than two 'Saved checkpoint' lines: train longer or checkpoint more often"
    )


def test_device_run_trains_to_a_time_budget_and_returns_a_loadable_model(tmp_path):
    """device_run.sh run (the recipe on a lent GPU), here on the CPU with a tiny model: it times both stages, sizes
    them to TRAIN_SECONDS, trains and evaluates with recipe.sh, and leaves in $OUT what RECIPE.md unpacks."""
    data, runs, out = tmp_path / "data", tmp_path / "runs" / "gpu", tmp_path / "out"
    for folder, count, size in (("train", 3, 96), ("heldout", 2, 64)):
        (data / folder).mkdir(parents=True)
        for seed in range(count):
            random_photo(size, size, seed=seed).save(data / folder / f"photo{seed}.png")
    prepare_data = _import_recipe_script("prepare_data")
    current = {"train_scales": list(prepare_data.TRAIN_SCALES), "sources": list(prepare_data.SOURCE_PACKAGES)}
    (data / "manifest.json").write_text(json.dumps(current))
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PY": sys.executable, "OUT": str(out),
        "DATA": str(data), "RUNS": str(runs), "MODEL_CONFIG": TINY_MODEL_CONFIG, "MIXED_PRECISION": "no",
        "TRAIN_SECONDS": "4", "BATCH_SIZE": "2", "WORKERS": "0", "PROBE_STEPS": "3",
    }  # fmt: skip
    script = RECIPE_DIR / "device_run.sh"
    # Without data/sources, a data folder built from older sources or scales is refused rather than trained on.
    (data / "manifest.json").write_text(json.dumps({**current, "sources": current["sources"][:-1]}))
    stale = subprocess.run(["bash", str(script), "run"], env=env, capture_output=True, text=True, timeout=600)
    assert stale.returncode == 1 and "is not a build of the current sources and scales" in stale.stdout  # tee-d
    assert not (runs / "teasr").exists()
    (data / "manifest.json").write_text(json.dumps(current))
    result = subprocess.run(["bash", str(script), "run"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "device_run.log").read_text()
    assert "FLOW_STEPS=10 DISTILL_STEPS=10" in log  # a budget too small for more gets the floor of 10 steps each
    assert sorted(path.name for path in out.iterdir()) == [
        "device_run.log", "flow_base_transformer.safetensors", "teasr_gpu.tar.gz", "transformer.safetensors",
    ]  # fmt: skip

    back = tmp_path / "back"
    back.mkdir()
    subprocess.run(["tar", "-xzf", str(out / "teasr_gpu.tar.gz"), "-C", str(back)], check=True)
    assert {"gpu.train.log", "gpu.probe_base.log", "eval"} <= {path.name for path in back.iterdir()}
    report = json.loads((back / "eval" / "teasr_light.json").read_text())
    assert [result["steps"] for result in report["results"]][:4] == [1, 2, 4, 8]
    assert not list(back.rglob("*.safetensors"))  # the weights travel as the two files beside the tarball
    for run, weights in (("teasr", "transformer.safetensors"), ("flow_base", "flow_base_transformer.safetensors")):
        (out / weights).rename(back / run / "transformer" / "diffusion_pytorch_model.safetensors")
        pipe = TEASRPipeline.from_pretrained(back / run)
        assert json.loads((back / run / "training_args.json").read_text())["train_batch_size"] == 2
        assert pipe.transformer.config.num_layers == 1

    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert (
        usage.returncode == 2
        and usage.stderr.strip() == "usage: bash train_scripts/teasr_mini/device_run.sh prepare|run"
    )
