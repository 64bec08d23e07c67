"""The benchmark scripts run at tiny scale and print one well-formed JSON object last (no targets asserted here:
the figures are read from the benchmark output, see docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

LATENCY_KEYS = {
    "benchmark",
    "model",
    "device",
    "machine",
    "image",
    "per_steps",
    "overhead_ratio",
    "overhead_ratio_cpu_time",
    "step_scaling",
    "step_scaling_cpu_time",
    "tiled",
}
MEMORY_KEYS = {
    "benchmark",
    "params",
    "lora_params",
    "critic_head_params",
    "analytic",
    "teasr_total_gib",
    "baseline_total_gib",
    "ratio",
    "forward_passes_per_step",
    "traced",
    "measured",
    "assumptions",
}


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _last_json(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert lines, "no output"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def outputs() -> dict[str, dict]:
    # Both scripts start at once: most of their time is importing torch and diffusers.
    running = {
        "latency": _start("latency.py", "--tiny"),
        # The baseline's step is traced (same function); its real CPU run is skipped to keep the test short.
        "memory": _start("memory_20b.py", "--tiny", "--device", "cpu", "--real-steps", "1", "--no-baseline-real"),
    }
    return {name: _last_json(process) for name, process in running.items()}


def test_latency_json(outputs):
    result = outputs["latency"]
    assert LATENCY_KEYS <= result.keys()
    assert result["benchmark"] == "latency"
    assert {"1", "2", "4", "8"} <= result["per_steps"].keys()
    for row in result["per_steps"].values():
        assert {"nfe", "pipeline_wall_s", "bare_transformer_wall_s", "overhead_ratio_wall"} <= row.keys()
    assert isinstance(result["overhead_ratio"], float)
    assert result["tiled"]["runs"] and {"output_side", "output_mp_per_s", "rss_peak_mib"} <= set(
        result["tiled"]["runs"][0]
    )


def test_memory_20b_json(outputs):
    result = outputs["memory"]
    assert MEMORY_KEYS <= result.keys()
    assert result["benchmark"] == "memory_20b"
    assert isinstance(result["params"], int) and result["params"] > 0
    assert {"teasr", "baseline"} <= result["forward_passes_per_step"].keys()
    assert {"teasr_gib", "baseline_gib", "ratio"} <= result["analytic"].keys()
    for method in ("teasr", "baseline"):
        assert {"peak_gib", "peak_bytes", "peak_at"} <= result["traced"][method].keys()
    assert {"step_s", "live_tensor_peak_bytes", "measured_over_traced"} <= result["measured"]["teasr"].keys()
    assert all(isinstance(a, str) for a in result["assumptions"])


BAD_FLAGS = {
    "latency scale 0": (("latency.py", "--tiny", "--scale", "0"), "argument --scale: must be a positive number"),
    "latency no repeats": (("latency.py", "--tiny", "--repeats", "0"), "argument --repeats: must be at least 1"),
    "latency sizes": (("latency.py", "--tiny", "--sizes", "abc"), "argument --sizes: 'abc' is not an integer"),
    "latency device": (("latency.py", "--tiny", "--device", "nope"), "'nope' is not a torch device"),
    "latency missing model": (("latency.py", "--model", "/nonexistent", "--skip-tiled"), "model folder not found"),
    "20b trace depths": (("memory_20b.py", "--tiny", "--trace-depths", "abc"), "argument --trace-depths"),
    "20b critic blocks": (("memory_20b.py", "--tiny", "--critic-blocks", "9"), "this config has blocks 0..1"),
    "train memory device": (("train_memory.py", "--tiny", "--device", "nope"), "'nope' is not a torch device"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_a_bad_benchmark_flag_is_one_error_line_and_exit_2(case):
    (script, *args), message = BAD_FLAGS[case]
    process = _start(script, *args)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and not stdout.strip()
    assert message in stderr.strip().splitlines()[-1], stderr[-3000:]
