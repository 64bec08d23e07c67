"""Interrupted training: `kill -9` mid-run, then `--resume_from_checkpoint latest` continues from the last complete
checkpoint; a half-written checkpoint (a `.checkpoint-N.tmp` folder, a `checkpoint-N` without its marker, or one
caught halfway through deletion) is never picked up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.distillation import (
    CHECKPOINT_MARKER,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
)

from . import test_training
from .conftest import TINY_PIXEL_CONFIG
from .test_training import ROOT, SCRIPTS, common_args, run_in_process, upscale

# Fixtures shared with test_training: the tiny photo folder, the validation image, one torch thread (autouse).
photo_folder = test_training.photo_folder
validation_image = test_training.validation_image
single_thread = test_training.single_thread

TOTAL_STEPS = 12
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


def flow_args(photo_folder: Path, out: Path, cache: Path) -> list[str]:
    return [
        *common_args(photo_folder, out, str(cache), steps=TOTAL_STEPS),
        "--full_finetune", "--model_config", json.dumps(TINY_PIXEL_CONFIG),
        "--checkpointing_steps", "1", "--report_to", "none",
    ]  # fmt: skip


def kill_after_first_checkpoint(args: list[str], out: Path, log: Path, timeout_s: float = 600.0) -> None:
    """Run train_flow_sr.py (the training process itself, so SIGKILL hits it) and `kill -9` it as soon as the first
    complete checkpoint is on disk, while later steps and checkpoints are being written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "train_flow_sr.py"), *args],
            cwd=out.parent, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not list_checkpoints(str(out)):
            assert process.poll() is None, f"training exited before its first checkpoint:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout_s:.0f} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, "training finished before it could be killed"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def test_kill_9_then_resume_latest_matches_an_uninterrupted_run(photo_folder, validation_image, tmp_path, caplog):
    out = tmp_path / "killed"
    kill_after_first_checkpoint(flow_args(photo_folder, out, tmp_path / "cache"), out, tmp_path / "killed.log")
    complete = list_checkpoints(str(out))
    last = complete[-1][0]
    assert 1 <= last <= TOTAL_STEPS - 3, f"killed too late to test anything (last complete step {last})"
    assert not (out / "model_index.json").exists(), "no final weights after a kill"

    # Half-written leftovers, as a kill at other moments leaves them (see save_checkpoint):
    # fully written but never renamed (marker in place), so it is not complete; resuming from it would skip a step.
    renamed_never = out / f".checkpoint-{last + 1}.tmp"
    shutil.rmtree(renamed_never, ignore_errors=True)  # the kill may have left a real one; make it deterministic
    shutil.copytree(out / f"checkpoint-{last}", renamed_never)
    (renamed_never / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": last + 1}))
    # A newer checkpoint-N without the marker and with truncated weights: must be ignored, then replaced.
    no_marker = out / f"checkpoint-{last + 2}"
    shutil.rmtree(no_marker, ignore_errors=True)
    shutil.copytree(out / f"checkpoint-{last}", no_marker)
    (no_marker / CHECKPOINT_MARKER).unlink()
    weights = no_marker / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    # And one far ahead of the run, without marker: never picked, left alone.
    far_ahead = out / "checkpoint-999"
    far_ahead.mkdir()
    (far_ahead / "model.safetensors").write_bytes(b"half")

    caplog.clear()
    with caplog.at_level("INFO"):
        run_in_process(
            "train_flow_sr", [*flow_args(photo_folder, out, tmp_path / "cache"), "--resume_from_checkpoint", "latest"]
        )
    assert f"Resuming from checkpoint {out / f'checkpoint-{last}'} at step {last} (epoch" in caplog.text
    assert not renamed_never.exists(), "a stale .checkpoint-N.tmp is removed at start"
    assert [step for step, _ in list_checkpoints(str(out))] == list(range(1, TOTAL_STEPS + 1))
    for step, path in list_checkpoints(str(out)):
        assert checkpoint_step(path) == step
    assert load_file(no_marker / WEIGHTS), "the markerless checkpoint was rewritten whole"
    assert not (far_ahead / CHECKPOINT_MARKER).exists()
    assert latest_checkpoint(str(out)) == str(out / f"checkpoint-{TOTAL_STEPS}")

    # The resumed run ends where an uninterrupted one does, with a loadable pipeline.
    straight = tmp_path / "straight"
    run_in_process("train_flow_sr", flow_args(photo_folder, straight, tmp_path / "cache"))
    resumed_pipe, straight_pipe = TEASRPipeline.from_pretrained(out), TEASRPipeline.from_pretrained(straight)
    resumed_state, straight_state = resumed_pipe.transformer.state_dict(), straight_pipe.transformer.state_dict()
    for key, value in straight_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=key)
    assert upscale(resumed_pipe, validation_image).shape == (1, 3, 24, 32)


class FakeAccelerator:
    """The part of `accelerate.Accelerator` that `save_checkpoint` uses; `save_state` writes two weight files."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        for name in ("a.safetensors", "z.safetensors"):
            Path(folder, name).write_bytes(b"weights")


def killed_rmtree(path, *args, **kwargs):
    """`shutil.rmtree` killed after deleting the first file it met (a kill -9 lands between two unlinks)."""
    for name in sorted(os.listdir(path)):
        if name != CHECKPOINT_MARKER:
            os.remove(os.path.join(path, name))
            break
    raise KeyboardInterrupt("killed during rmtree")


@pytest.mark.parametrize("how", ["overwrite", "total_limit"])
def test_a_kill_while_deleting_a_checkpoint_never_leaves_one_that_looks_complete(tmp_path, monkeypatch, how):
    accelerator, out = FakeAccelerator(), str(tmp_path)
    for step in (1, 2):
        save_checkpoint(accelerator, out, step)
    # Overwrite: checkpoint-2 is saved again (a resume from an older checkpoint); total_limit: checkpoint-1 goes.
    step, limit = (2, None) if how == "overwrite" else (3, 2)
    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, out, step, limit)
    monkeypatch.undo()
    for _, path in list_checkpoints(out):  # every checkpoint that resume would consider is whole
        assert sorted(os.listdir(path)) == sorted(["a.safetensors", "z.safetensors", CHECKPOINT_MARKER]), path
    assert latest_checkpoint(out) is not None
