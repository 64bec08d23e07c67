"""`benchmarks/train_memory.py --tiny`: the last stdout line is one well-formed JSON object (no targets asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD_KEYS = {
    "peak_bytes",
    "delta_bytes",
    "step_delta_bytes",
    "forward_passes_per_step",
    "trainable_params",
    "total_params_in_memory",
    "networks_in_memory",
}


def test_train_memory_tiny_prints_json() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_memory.py"), "--tiny", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert {"config", "device", "teasr", "baseline", "ratio", "assumptions"} <= result.keys()
    assert result["device"] == "cpu"
    for method in ("teasr", "baseline"):
        assert METHOD_KEYS <= result[method].keys(), method
        for key in METHOD_KEYS:
            assert isinstance(result[method][key], (int, float)), (method, key)
    assert isinstance(result["ratio"], float)
    assert isinstance(result["assumptions"], list) and result["assumptions"]
