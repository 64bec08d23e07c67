"""`teasr eval` and pipeline_teasr.evaluation: reports agree with metrics.py on the very same files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from pipeline_teasr.cli import main
from pipeline_teasr.evaluation import (
    EvaluationError,
    collect_images,
    evaluate,
    image_seed,
    load_report,
    match_by_stem,
    render_markdown,
    synthesize_lr,
)
from pipeline_teasr.metrics import (
    FIDELITY_METRICS,
    LEARNED_METRICS,
    gmsd,
    grid_pattern_strength,
    high_frequency_ratio,
    psnr_y,
    ssim_y,
)

from .conftest import random_photo

REPORT_KEYS = {
    "format",
    "command",
    "created",
    "mode",
    "dataset",
    "scale",
    "crop_border",
    "model",
    "settings",
    "metrics",
    "skipped",
    "higher_is_better",
    "environment",
    "results",
}
RESULT_KEYS = {"key", "kind", "label", "steps", "tile_size", "tile_overlap", "num_images", "mean", "mean_seconds"}
RESULT_KEYS |= {"total_seconds", "mean_nfe"}
IMAGE_KEYS = {"name", "gt", "lr", "pred", "height", "width", "seconds", "nfe", "metrics"}


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _independent_psnr_y(a: np.ndarray, b: np.ndarray, crop: int) -> float:
    """PSNR on BT.601 Y written out from the formula, not through metrics.py."""

    def y(img: np.ndarray) -> np.ndarray:
        rgb = img.astype(np.float64)
        return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0

    diff = (y(a) - y(b))[crop:-crop, crop:-crop]
    return 10.0 * math.log10(255.0**2 / float(np.mean(diff**2)))


@pytest.fixture()
def hr_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    # 26x30 is not a multiple of 4: the harness must crop to 24x28 first.
    random_photo(26, 30, seed=1).save(folder / "alpha.png")
    random_photo(26, 30, seed=2).save(folder / "beta.png")
    return folder


def test_synthetic_eval_report_matches_metrics_and_pred_mode(hr_folder, tiny_pipeline_dir, tmp_path, capsys):
    out, report_file, table_file = tmp_path / "out", tmp_path / "eval.json", tmp_path / "eval.md"
    argv = ["eval", "--gt", str(hr_folder), "--degradation", "bicubic", "--scale", "4", "--seed", "3"]
    argv += ["--model", tiny_pipeline_dir, "--steps", "1", "2", "--baseline", "bicubic", "lanczos", "--device", "cpu"]
    argv += ["--json", str(report_file), "--markdown", str(table_file), "--save-images", str(out), "--quiet"]
    assert main([*argv, "--tile", "16"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_file.read_text())

    assert REPORT_KEYS <= set(report)
    assert report["command"].startswith("teasr eval --gt ") and "--steps 1 2" in report["command"]
    assert report["mode"] == "synthetic" and report["scale"] == report["crop_border"] == 4
    assert report["settings"]["start"] == "noise" and report["settings"]["start_timestep"] == 1.0
    assert report["dataset"]["degradation"] == "bicubic" and report["dataset"]["num_images"] == 2
    assert [r["key"] for r in report["results"]] == ["teasr-1step", "teasr-2step", "bicubic", "lanczos"]
    # the tiling each row actually used: no overlap asked for, so the step-dependent default of 16-px tiles
    assert report["settings"]["tile_size"] == 16 and report["settings"]["tile_overlap"] is None
    assert [(r["tile_size"], r["tile_overlap"]) for r in report["results"]] == [(16, 2), (16, 4), (None, None)] + [
        (None, None)
    ]
    # every learned metric is either measured or skipped with a reason
    for name in LEARNED_METRICS:
        assert (name in report["metrics"]) != (name in report["skipped"])
        if name in report["skipped"]:
            assert name in report["skipped"][name] and len(report["skipped"][name]) > len(name) + 2
    assert set(FIDELITY_METRICS) <= set(report["metrics"])
    # a model ran, so every row is also scored for the model's token grid (VAE factor 1 x patch 2 here)
    assert report["settings"]["grid_period"] == 2 and "grid" in report["metrics"]
    assert report["higher_is_better"]["grid"] is False

    for result in report["results"]:
        assert RESULT_KEYS <= set(result) and result["num_images"] == 2
        for item in result["images"]:
            assert IMAGE_KEYS <= set(item)
            pred = _rgb(out / result["key"] / f"{item['name']}.png")
            gt = _rgb(hr_folder / f"{item['name']}.png")[:24, :28]
            assert pred.shape == gt.shape == (item["height"], item["width"], 3) == (24, 28, 3)
            expected = {
                "psnr": psnr_y(pred, gt, 4),
                "ssim": ssim_y(pred, gt, 4),
                "gmsd": gmsd(pred, gt, 4),
                "hf_ratio": high_frequency_ratio(pred, gt),
                "grid": grid_pattern_strength(pred, 2),
            }
            for name, value in expected.items():
                assert item["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-12)
            assert item["seconds"] > 0
            if result["kind"] == "teasr":
                assert item["nfe"] == result["steps"]
        for name in FIDELITY_METRICS:
            per_image = [item["metrics"][name] for item in result["images"]]
            assert result["mean"][name] == pytest.approx(float(np.mean(per_image)), rel=1e-12)

    # the synthetic LR is the seeded bicubic degradation of the cropped GT
    for name in ("alpha", "beta"):
        gt = _rgb(hr_folder / f"{name}.png")[:24, :28]
        np.testing.assert_array_equal(_rgb(out / "lr" / f"{name}.png"), synthesize_lr(gt, 4, "bicubic", 0))

    table = table_file.read_text()
    assert table == printed
    assert "| TEASR (2 steps) | 2 | 2 |" in table and "| Lanczos (PIL) |" in table and "PSNR-Y" in table
    assert "Grid ↓" in table

    # --pred mode on the saved 1-step outputs reproduces the same numbers
    pred_report_file = tmp_path / "pred.json"
    argv = ["eval", "--pred", str(out / "teasr-1step"), "--gt", str(hr_folder), "--scale", "4", "--learned"]
    assert main([*argv, "--json", str(pred_report_file), "--quiet"]) == 0
    pred_report = json.loads(pred_report_file.read_text())
    assert pred_report["mode"] == "pred" and pred_report["model"] is None
    assert "grid" not in pred_report["metrics"] and pred_report["settings"]["grid_period"] is None  # no model ran
    (scored,) = pred_report["results"]
    assert scored["kind"] == "pred" and scored["label"] == "teasr-1step"
    one_step = report["results"][0]
    for mine, theirs in zip(scored["images"], one_step["images"]):
        assert mine["name"] == theirs["name"]
        for name in FIDELITY_METRICS:
            assert mine["metrics"][name] == theirs["metrics"][name]


def test_bicubic_baseline_psnr_matches_an_independent_computation(tmp_path):
    gt_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    gt_dir.mkdir()
    lr_dir.mkdir()
    for index, name in enumerate(["0801", "0802"]):
        gt = random_photo(32, 40, seed=10 + index)
        gt.save(gt_dir / f"{name}.png")
        gt.resize((10, 8), PIL.Image.Resampling.BOX).save(lr_dir / f"{name}x4.png")  # DIV2K naming
    report = evaluate(gt_dir, lr_dir=lr_dir, baselines=["bicubic"], learned=[], progress=False)
    assert report["scale"] == 4 and report["mode"] == "paired"
    (result,) = report["results"]
    for item in result["images"]:
        gt = _rgb(gt_dir / f"{item['name']}.png")
        lr = PIL.Image.open(lr_dir / f"{item['name']}x4.png")
        upscaled = np.asarray(lr.resize((40, 32), PIL.Image.Resampling.BICUBIC))
        assert item["metrics"]["psnr"] == pytest.approx(_independent_psnr_y(upscaled, gt, 4), abs=1e-9)
    assert "Bicubic (PIL)" in render_markdown(report)


def test_synthetic_degradation_is_seeded_per_image():
    hr = np.asarray(random_photo(32, 32, seed=5))
    first = synthesize_lr(hr, 4, "light", image_seed(7, "img"))
    assert first.shape == (8, 8, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, synthesize_lr(hr, 4, "light", image_seed(7, "img")))
    assert not np.array_equal(first, synthesize_lr(hr, 4, "light", image_seed(8, "img")))
    assert image_seed(7, "img") != image_seed(7, "other")


def test_stem_matching_handles_benchmark_layouts(tmp_path):
    gt = {"Canon_001_HR": tmp_path / "Canon_001_HR.png", "DSC_1454_x1": tmp_path / "DSC_1454_x1.png"}
    lr = {"Canon_001_LR4": tmp_path / "Canon_001_LR4.png", "DSC_1454_x4": tmp_path / "DSC_1454_x4.png"}
    pairs = match_by_stem(gt, lr)
    assert [(name, b.name) for name, _, b in pairs] == [
        ("Canon_001_HR", "Canon_001_LR4.png"),
        ("DSC_1454_x1", "DSC_1454_x4.png"),
    ]
    with pytest.raises(EvaluationError, match="mismatched folders: 1 GT image.*extra.png"):
        match_by_stem({**gt, "extra": tmp_path / "extra.png"}, lr)


def test_folder_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(EvaluationError, match="no image files") as info:
        collect_images(empty, "GT")
    assert "\n" not in str(info.value)
    twins = tmp_path / "twins"
    twins.mkdir()
    random_photo(8, 8).save(twins / "a.png")
    random_photo(8, 8).save(twins / "a.jpg")
    with pytest.raises(EvaluationError, match="two images with the stem 'a'"):
        collect_images(twins, "GT")
    with pytest.raises(EvaluationError, match="needs --scale"):
        evaluate(twins, pred_dir=twins, learned=[])


def test_grid_metric_without_a_model_needs_a_period_and_skips_small_images(tmp_path, capsys):
    gt_dir = tmp_path / "hr"
    gt_dir.mkdir()
    random_photo(48, 48, seed=5).save(gt_dir / "big.png")
    random_photo(20, 20, seed=6).save(gt_dir / "small.png")
    report = evaluate(gt_dir, degradation="bicubic", baselines=["bicubic"], grid_period=8, learned=[], progress=False)
    (result,) = report["results"]
    grid = {item["name"]: item["metrics"]["grid"] for item in result["images"]}
    # 48 px holds 6 periods of 8 px: scored; 20 px holds 2.5: too small to tell a grid from content, so nan
    assert 0.0 <= grid["big"] < 1.0 and math.isnan(grid["small"])
    with pytest.raises(EvaluationError, match="--grid-period"):
        evaluate(gt_dir, degradation="bicubic", baselines=["bicubic"], grid_period=1, learned=[], progress=False)
    argv = ["eval", "--gt", str(gt_dir), "--degradation", "bicubic", "--baseline", "bicubic", "--grid-period", "1"]
    assert main([*argv, "--quiet"]) != 0
    assert "--grid-period must be 0 (off) or at least 2 pixels" in capsys.readouterr().err


def test_a_perfect_prediction_is_infinite_psnr_in_the_json_and_the_card_not_a_missing_value(tmp_path, capsys):
    gt = tmp_path / "gt"
    gt.mkdir()
    random_photo(32, 32, seed=1).save(gt / "a.png")
    report_path = tmp_path / "perfect.json"
    argv = ["eval", "--gt", str(gt), "--pred", str(gt), "--scale", "4", "--quiet", "--json", str(report_path)]
    assert main(argv) == 0
    assert "| ∞ |" in capsys.readouterr().out
    written = json.loads(report_path.read_text())  # strict JSON: no bare Infinity
    assert written["results"][0]["mean"]["psnr"] == "inf"
    assert written["results"][0]["images"][0]["metrics"]["psnr"] == "inf"
    loaded = load_report(report_path)
    assert loaded["results"][0]["mean"]["psnr"] == math.inf
    assert "| ∞ |" in render_markdown(loaded)
