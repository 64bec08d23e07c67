"""teasr-mini's diagnostic scripts run end to end on a small photo folder with the recipe's file names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import random_photo

REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE = REPO_ROOT / "train_scripts" / "teasr_mini" / "regression_probe.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=300)


def test_regression_probe_trains_and_reports_gains_over_bicubic(tmp_path):
    names = ("Garden_25", "Wood_25", "Aqua_25", "Blinds_25", "Wood_50", "Aqua_50", "Blinds_50")
    for seed, name in enumerate(names):
        random_photo(136, 144, seed=seed).save(tmp_path / f"{name}.png")
    result = _run("--arch", "cnn", "--data", str(tmp_path), "--steps", "2", "--eval_every", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines] == [2]
    for line in lines:
        assert line["arch"] == "cnn" and isinstance(line["gain_db"], float) and isinstance(line["ema_gain_db"], float)

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--arch", "dit", "--data", str(empty))
    assert result.returncode != 0 and "no PNG photos" in result.stderr and "Traceback" not in result.stderr
