"""End-to-end tests of train_scripts/ on a tiny model and a tiny image folder (CPU, a few steps each)."""

from __future__ import annotations

import glob
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.data import SRCropDataset, collate_sr_batch, crop_gradient, decode_image, load_image_dataset
from pipeline_teasr.distillation import CHECKPOINT_MARKER
from pipeline_teasr.losses import CriticHeads

from .conftest import TINY_PIXEL_CONFIG, random_photo

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "train_scripts"
LOSS_TAGS = ("loss/flow", "loss/rec", "loss/adv", "loss/critic", "loss/consistency", "loss/total")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run far faster on one thread, above all on a shared machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Five photos, one smaller than the crop (upsized) and one corrupt file (skipped)."""
    folder = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate([(40, 48), (48, 40), (36, 52), (64, 40), (44, 44)]):
        random_photo(h, w, seed=i).save(folder / f"photo_{i}.png")
    random_photo(20, 24, seed=7).save(folder / "small.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


@pytest.fixture(scope="module")
def validation_image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("val") / "lq.png"
    random_photo(6, 8, seed=11).save(path)
    return str(path)


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> str:
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(cache)


def common_args(
    photo_folder: Path, output_dir: Path, cache: str, steps: int, degradation: str = "bicubic"
) -> list[str]:
    return [
        "--train_data_dir", str(photo_folder),
        "--output_dir", str(output_dir),
        "--cache_dir", cache,
        "--resolution", "16",
        "--scale", "4",
        "--degradation", degradation,
        "--train_batch_size", "2",
        "--max_train_steps", str(steps),
        "--learning_rate", "1e-3",
        "--seed", "0",
    ]  # fmt: skip


def launch(script: str, args: list[str], cwd: Path) -> subprocess.Popen:
    """Start `accelerate launch` of a training script in a subprocess, the way users run it."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPTS / script), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-8000:]
    return output


def script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(name: str, args: list[str]) -> None:
    """Run a script's `main` in this process (fast); the accelerate singletons are reset afterwards."""
    from accelerate.state import AcceleratorState, GradientState

    module = script_module(name)
    try:
        module.main(module.parse_args(args))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def tensorboard_scalars(output_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[float]] = {}
    for events in glob.glob(str(output_dir / "logs" / "**" / "events.out.tfevents.*"), recursive=True):
        accumulator = EventAccumulator(events)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return scalars


def upscale(pipe: TEASRPipeline, image: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(PIL.Image.open(image), upscale=4, num_inference_steps=1, generator=generator, output_type="pt").images


# ------------------------------------------------------------------------------------------------------ scripts


def test_both_scripts_run_through_accelerate_launch(
    photo_folder, validation_image, tiny_pipeline_dir, tiny_pipeline, tmp_path
):
    # Both launches run side by side: most of their time is importing torch and diffusers.
    flow_out, lora_out = tmp_path / "flow", tmp_path / "lora"
    flow = launch(
        "train_flow_sr.py",
        [
            *common_args(photo_folder, flow_out, str(tmp_path / "cache_flow"), steps=2, degradation="light"),
            "--full_finetune",
            "--model_config",
            json.dumps(TINY_PIXEL_CONFIG),
            "--checkpointing_steps",
            "2",
            "--validation_image",
            validation_image,
            "--validation_steps",
            "100",
            "--default_tile_overlap",
            "4",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    lora = launch(
        "train_teasr_lora.py",
        [
            *common_args(photo_folder, lora_out, str(tmp_path / "cache_lora"), steps=3, degradation="light"),
            "--pretrained_model_name_or_path",
            os.path.relpath(tiny_pipeline_dir, tmp_path),  # relative to the run's folder
            "--rank",
            "4",
            "--lora_alpha",
            "4",
            "--lambda_consistency",
            "0.5",
            "--lambda_grid",
            "0.5",
            "--critic_kernel_size",
            "3",
            "--checkpointing_steps",
            "2",
            "--validation_image",
            validation_image,
            "--validation_steps",
            "2",
            "--validation_num_inference_steps",
            "1",
            "4",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    flow_log, _ = finish(flow), finish(lora)

    # Flow matching from scratch: a loadable pipeline at the output root, tiled at the training size.
    assert "1 unreadable or skipped images" in flow_log and "crops from upsized images" in flow_log
    pipe = TEASRPipeline.from_pretrained(flow_out)
    assert pipe.transformer.config.num_layers == TINY_PIXEL_CONFIG["num_layers"]
    assert pipe.config.default_tile_size == 16 and pipe.config.default_tile_overlap == 4
    assert upscale(pipe, validation_image).shape == (1, 3, 24, 32)
    assert os.path.isfile(flow_out / "checkpoint-2" / CHECKPOINT_MARKER)
    assert sorted(os.listdir(flow_out / "validation")) == [
        "step-000002_image-0_1-steps.png",
        "step-000002_image-0_4-steps.png",
    ]
    scalars = tensorboard_scalars(flow_out)
    assert len(scalars["loss/flow"]) == 2 and all(math.isfinite(v) for v in scalars["loss/flow"])
    assert scalars["data/skipped_images"][-1] == 1

    # Distillation: every loss term logged and finite at every step.
    scalars = tensorboard_scalars(lora_out)
    for tag in LOSS_TAGS:
        assert len(scalars[tag]) == 3 and all(math.isfinite(v) for v in scalars[tag]), tag
    assert scalars["loss/critic"][0] > 0 and scalars["loss/consistency"][0] > 0
    assert len(scalars["loss/grid"]) == 3 and all(math.isfinite(v) and v > 0 for v in scalars["loss/grid"])
    # The LoRA is in diffusers format at the output root and changes the pipeline's output.
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    before = upscale(pipe, validation_image)
    pipe.load_lora_weights(str(lora_out))
    after = upscale(pipe, validation_image)
    assert (after - before).abs().max() > 1e-4
    # The base is recorded so that it is found from any folder later (teasr export, the LoRA hint).
    recorded = json.loads((lora_out / "training_args.json").read_text())["pretrained_model_name_or_path"]
    assert recorded == os.path.abspath(tiny_pipeline_dir)
    # Critic heads are saved apart; the checkpoint is complete; validation ran at 1 and 4 steps.
    heads = CriticHeads.from_pretrained(lora_out / "critic_heads")
    assert heads.block_indices == (0, 1) and heads.hidden_dim == tiny_pipeline.transformer.inner_dim
    assert heads.kernel_size == 3  # --critic_kernel_size reached the heads and their saved file
    assert {
        "critic_heads", "optimizer.bin", "pytorch_lora_weights.safetensors", "scheduler.bin", CHECKPOINT_MARKER
    } <= set(os.listdir(lora_out / "checkpoint-2"))  # fmt: skip
    validation = set(os.listdir(lora_out / "validation"))
    assert {"step-000002_image-0_1-steps.png", "step-000003_image-0_4-steps.png"} <= validation


def test_resume_continues_at_the_right_step_with_identical_state(photo_folder, tiny_pipeline_dir, tmp_path, caplog):
    def args(out: Path, steps: int) -> list[str]:
        return [
            *common_args(photo_folder, out, str(tmp_path / "cache"), steps),
            "--pretrained_model_name_or_path", tiny_pipeline_dir, "--train_batch_size", "3", "--rank", "4",
            "--lora_alpha", "4", "--checkpointing_steps", "2", "--report_to", "none",
            "--use_ema", "--ema_decay", "0.5",
        ]  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_in_process("train_teasr_lora", args(straight, 4))
    run_in_process("train_teasr_lora", args(resumed, 2))
    caplog.clear()
    with caplog.at_level("INFO"):
        run_in_process("train_teasr_lora", [*args(resumed, 4), "--resume_from_checkpoint", "latest"])
    assert "at step 2 (epoch 0)" in caplog.text  # 7 rows / batch 3: mid-epoch, and the run crosses into epoch 1

    a = torch.load(straight / "checkpoint-4" / "optimizer.bin", weights_only=False)
    b = torch.load(resumed / "checkpoint-4" / "optimizer.bin", weights_only=False)
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert float(a["state"][key]["step"]) == float(b["state"][key]["step"]) == 4
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a["state"][key][name], b["state"][key][name], rtol=0, atol=1e-7)
    # Final LoRA = the moving average (resumed from the checkpoint too), not the raw weights the checkpoint holds.
    for file in ("pytorch_lora_weights.safetensors", "critic_heads/critic_heads.safetensors"):
        x, y = load_file(straight / file), load_file(resumed / file)
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=1e-7)
    final = load_file(straight / "pytorch_lora_weights.safetensors")
    raw = load_file(straight / "checkpoint-4" / "pytorch_lora_weights.safetensors")
    assert final.keys() == raw.keys() and any(not torch.equal(final[k], raw[k]) for k in final)


def test_8bit_adam_keeps_8bit_moments_and_resumes_them_exactly(photo_folder, tiny_pipeline_dir, tmp_path):
    """`--use_8bit_adam` (the 20B recipe's optimiser): bitsandbytes' AdamW8bit trains, its quantised moments are
    checkpointed, and a resumed run ends with the same state and weights as a straight one."""
    pytest.importorskip("bitsandbytes")  # in the dev extra on Linux

    def args(out: Path, steps: int) -> list[str]:
        return [
            *common_args(photo_folder, out, str(tmp_path / "cache"), steps),
            "--pretrained_model_name_or_path", tiny_pipeline_dir, "--full_finetune", "--use_8bit_adam",
            "--checkpointing_steps", "2", "--report_to", "none",
        ]  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_in_process("train_teasr_lora", args(straight, 4))
    run_in_process("train_teasr_lora", args(resumed, 2))
    run_in_process("train_teasr_lora", [*args(resumed, 4), "--resume_from_checkpoint", "latest"])

    def moments(run: Path) -> dict[int, dict[str, torch.Tensor]]:
        state = torch.load(run / "checkpoint-4" / "optimizer.bin", weights_only=False)["state"]
        return {key: value["__bnb_optimizer_quant_state__"] for key, value in state.items()}  # bitsandbytes' layout

    a, b = moments(straight), moments(resumed)
    assert a.keys() == b.keys()
    # Tensors of >= 4096 elements (the feed-forward weights here) keep uint8 moments with per-block scales.
    quantised = [key for key, state in a.items() if state["state1"].dtype == torch.uint8]
    assert quantised and all(a[key]["absmax1"].numel() > 1 for key in quantised)
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0)
    trained, base = TEASRPipeline.from_pretrained(resumed), TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    straight_weights = TEASRPipeline.from_pretrained(straight).transformer.state_dict()
    for name, value in trained.transformer.state_dict().items():
        torch.testing.assert_close(value, straight_weights[name], rtol=0, atol=0)
    assert not torch.equal(trained.transformer.proj_out.weight, base.transformer.proj_out.weight)


def test_8bit_adam_without_bitsandbytes_is_one_clear_error_before_loading(
    photo_folder, tiny_pipeline_dir, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match="--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`"):
        run_in_process(
            "train_teasr_lora", [*args, "--pretrained_model_name_or_path", tiny_pipeline_dir, "--use_8bit_adam"]
        )
    assert not (tmp_path / "run").exists()


def test_resuming_with_other_model_flags_is_one_clear_error_and_the_checkpoint_is_kept(
    photo_folder, tiny_pipeline_dir, tmp_path
):
    """A checkpoint records the flags that shape its tensors; resuming with others used to fail deep inside
    accelerate's `load_state` (size mismatches, or a missing config.json for a full fine-tune)."""
    out = tmp_path / "run"
    args = [
        *common_args(photo_folder, out, str(tmp_path / "cache"), steps=2),
        "--pretrained_model_name_or_path", tiny_pipeline_dir, "--rank", "4", "--lora_alpha", "4",
        "--checkpointing_steps", "2", "--report_to", "none", "--resume_from_checkpoint", "latest",
    ]  # fmt: skip
    run_in_process("train_teasr_lora", args)
    marker = json.loads((out / "checkpoint-2" / CHECKPOINT_MARKER).read_text())
    assert marker["global_step"] == 2 and marker["state_flags"]["rank"] == 4
    for flags, message in (
        (["--rank", "8"], "written with --rank=4, this run has --rank=8"),
        (["--full_finetune"], "written with --full_finetune=False, this run has --full_finetune=True"),
    ):
        with pytest.raises(ValueError, match=re.escape(message) + ".* or another --output_dir to start a new run"):
            run_in_process("train_teasr_lora", [*args, "--max_train_steps", "4", *flags])
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-2"]
    run_in_process("train_teasr_lora", [*args, "--max_train_steps", "3"])  # the same flags resume
    assert (out / "checkpoint-3").is_dir()


def test_push_to_hub_failures_are_one_clear_error_and_the_trained_model_stays_saved(
    photo_folder, tiny_pipeline_dir, tmp_path, monkeypatch
):
    """No Hub is reachable here, so the Hub's two calls are replaced by ones that fail as they do offline; what is
    tested is the script around them: no token or no repository stops before training, a failed final upload
    keeps the saved model and says how to upload it."""
    import huggingface_hub

    out = tmp_path / "run"
    args = [
        *common_args(photo_folder, out, str(tmp_path / "cache"), steps=1),
        "--pretrained_model_name_or_path", tiny_pipeline_dir, "--report_to", "none", "--push_to_hub",
    ]  # fmt: skip
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    with pytest.raises(ValueError, match="--push_to_hub needs a Hub token: run `hf auth login` or pass --hub_token"):
        run_in_process("train_teasr_lora", args)
    assert not out.exists()

    def unreachable(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known\n(details)")

    monkeypatch.setattr(huggingface_hub, "create_repo", unreachable)
    with pytest.raises(
        ValueError, match="cannot create the Hub repository 'run': \\[Errno -2\\] Name or service not known$"
    ):
        run_in_process("train_teasr_lora", [*args, "--hub_token", "hf_x"])
    assert not list(out.glob("checkpoint-*")) and not (out / "pytorch_lora_weights.safetensors").exists()

    monkeypatch.setattr(
        huggingface_hub,
        "create_repo",
        lambda *args, **kwargs: huggingface_hub.RepoUrl("https://huggingface.co/me/run"),
    )
    monkeypatch.setattr(huggingface_hub, "upload_folder", unreachable)
    with pytest.raises(ValueError, match=f"the model is saved in {out}, but the upload to me/run failed") as failure:
        run_in_process("train_teasr_lora", [*args, "--hub_token", "hf_x"])
    assert f"upload it with: hf upload me/run {out} --exclude 'checkpoint-*'" in str(failure.value)
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.load_lora_weights(out)  # the trained LoRA is there to upload


def test_a_run_ending_between_checkpoints_saves_its_last_step_and_a_longer_run_continues_there(
    photo_folder, tiny_pipeline_dir, tmp_path, caplog
):
    def args(steps: int) -> list[str]:
        return [
            *common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps),
            "--pretrained_model_name_or_path", tiny_pipeline_dir, "--train_batch_size", "2", "--rank", "4",
            "--checkpointing_steps", "2", "--report_to", "none", "--resume_from_checkpoint", "latest",
        ]  # fmt: skip

    run_in_process("train_teasr_lora", args(3))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    caplog.clear()
    with caplog.at_level("INFO"):
        run_in_process("train_teasr_lora", args(4))
    assert "checkpoint-3 at step 3" in caplog.text and (tmp_path / "run" / "checkpoint-4").is_dir()


def test_full_finetune_distillation_saves_a_loadable_pipeline(photo_folder, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "full"
    run_in_process(
        "train_teasr_lora",
        [
            *common_args(photo_folder, out, str(tmp_path / "cache"), steps=1),
            "--report_to",
            "none",
            "--pretrained_model_name_or_path",
            tiny_pipeline_dir,
            "--full_finetune",
            "--coupled_timestep",
            "--lq_skip",
            "--conv_channels",
            "8",
            "--conv_blocks",
            "1",
        ],  # fmt: skip
    )
    pipe = TEASRPipeline.from_pretrained(out)
    base = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    assert pipe.transformer.config.decoupled_timestep is False
    assert pipe.transformer.config.lq_skip and pipe.transformer.lq_skip_in.weight.abs().sum() > 0  # added, trained
    assert (pipe.transformer.config.conv_channels, pipe.transformer.config.conv_blocks) == (8, 1)
    assert pipe.transformer.conv_path.to_patches.weight.abs().sum() > 0  # added, trained
    assert not torch.equal(pipe.transformer.proj_out.weight, base.transformer.proj_out.weight)
    assert os.path.isfile(out / "critic_heads" / "critic_heads.safetensors")


def test_trainable_modules_train_only_those_and_a_wrong_name_is_one_clear_error(
    photo_folder, tiny_pipeline_dir, tmp_path
):
    args = [
        *common_args(photo_folder, tmp_path / "out", str(tmp_path / "cache"), steps=2),
        "--report_to", "none", "--pretrained_model_name_or_path", tiny_pipeline_dir,
        "--lambda_flow", "0", "--lq_bridge_prob", "1", "--reconstruction_only", "--reconstruction_loss", "l1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--full_finetune"):  # a LoRA has no submodules of its own to pick
        run_in_process("train_teasr_lora", [*args, "--trainable_modules", "proj_out"])
    args.append("--full_finetune")
    run_in_process("train_teasr_lora", [*args, "--trainable_modules", "proj_out", "norm_out"])
    base = TEASRPipeline.from_pretrained(tiny_pipeline_dir).transformer.state_dict()
    trained = TEASRPipeline.from_pretrained(tmp_path / "out").transformer.state_dict()
    changed = {name.split(".")[0] for name in base if not torch.equal(base[name], trained[name])}
    assert changed == {"proj_out", "norm_out"}
    # LQ-bridge rows only, no flow rows: the saved pipeline knows it was trained for the LQ start alone.
    saved = TEASRPipeline.from_pretrained(tmp_path / "out")
    assert saved.supported_starts == ("lq",) and saved.resolve_start(None, None)[0] == "lq"
    # The transformer records them too, so a pipeline built from it alone starts from the LQ image on its crops.
    rebuilt = TEASRPipeline(transformer=saved.transformer, scheduler=saved.scheduler)
    assert rebuilt.supported_starts == ("lq",) and rebuilt.resolve_tiling(None, None, 1)[0] == 16
    with pytest.raises(ValueError, match="no submodule 'blocks'.*transformer_blocks"):
        run_in_process(
            "train_teasr_lora", [*args, "--output_dir", str(tmp_path / "bad"), "--trainable_modules", "blocks"]
        )


def test_zero_init_output_starts_a_new_model_at_zero_velocity(photo_folder, tmp_path):
    # DiT's zero-initialised output layer: the first steps learn the data, not how to cancel a random projection.
    module = script_module("train_flow_sr")
    config = json.dumps({**TINY_PIXEL_CONFIG, "conv_channels": 8, "conv_blocks": 1})
    base_args = ["--train_data_dir", str(photo_folder), "--output_dir", str(tmp_path), "--full_finetune"]
    args = module.parse_args([*base_args, "--model_config", config, "--zero_init_output"])
    transformer = module.load_base(args).transformer
    default = module.load_base(module.parse_args([*base_args, "--model_config", config])).transformer
    assert default.proj_out.weight.abs().sum() > 0  # the default keeps the recipe's (released) initialisation
    with pytest.raises(SystemExit):  # a pretrained base keeps its output layer: refused by argparse, one line
        module.parse_args([*base_args, "--pretrained_model_name_or_path", str(tmp_path), "--zero_init_output"])
    z, c = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert transformer(z, c, timestep=0.7, target_timestep=0.2).sample.abs().max() == 0
    transformer(z, c, timestep=0.7).sample.sub(z).square().mean().backward()
    assert transformer.proj_out.weight.grad.abs().sum() > 0
    assert transformer.conv_path.to_patches.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------ bad input


def test_distillation_zero_init_output_starts_the_lq_start_at_the_upscaled_input(tiny_pipeline_dir, tmp_path):
    # A pure LQ-bridge run may discard the base's velocity head: its one LQ-start step then returns the input.
    module = script_module("train_teasr_lora")
    base_args = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--output_dir", str(tmp_path)]
    base_args += ["--train_data_dir", str(tmp_path), "--full_finetune", "--zero_init_output"]
    for refused in ([], ["--lambda_flow", "0.5"]):  # the flow rows would need the discarded head
        with pytest.raises(SystemExit):
            module.parse_args([*base_args, *refused])
    with pytest.raises(SystemExit):  # critic heads need an odd window: one line from argparse
        module.parse_args([*base_args, "--lambda_flow", "0", "--critic_kernel_size", "2"])
    pipe = module.load_base(module.parse_args([*base_args, "--lambda_flow", "0"]))
    assert pipe.transformer.proj_out.weight.abs().sum() == 0
    lq = torch.rand(1, 3, 8, 8)
    out = pipe(lq[0], num_inference_steps=1, start="lq", output_type="pt").images
    upscaled = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(out, upscaled, atol=1e-5, rtol=0)


def test_bad_inputs_fail_before_training(photo_folder, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "bad"
    base = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--report_to", "none"]
    args = common_args(photo_folder, out, str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match="--image_column 'pixels' is not a column"):
        run_in_process("train_teasr_lora", [*args, *base, "--image_column", "pixels"])
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="not a usable base"):
        run_in_process("train_teasr_lora", [*args, "--pretrained_model_name_or_path", str(not_a_model)])
    with pytest.raises(ValueError, match="VAE folder not found: .*nowhere' \\(pass a local AutoencoderKLQwenImage"):
        run_in_process(
            "train_teasr_lora", [*args, *base, "--pretrained_vae_model_name_or_path", str(tmp_path / "nowhere")]
        )
    with pytest.raises(ValueError, match="not_a_model is not an AutoencoderKLQwenImage .*names UNet2DConditionModel"):
        run_in_process("train_teasr_lora", [*args, *base, "--pretrained_vae_model_name_or_path", str(not_a_model)])
    with pytest.raises(ValueError, match="--lq_skip adds a new layer that a LoRA cannot train"):
        run_in_process("train_teasr_lora", [*args, *base, "--lq_skip"])
    with pytest.raises(ValueError, match="--conv_channels adds new layers that a LoRA cannot train"):
        run_in_process("train_teasr_lora", [*args, *base, "--conv_channels", "8"])
    with pytest.raises(ValueError, match="--ema_decay must lie in"):
        run_in_process("train_teasr_lora", [*args, *base, "--use_ema", "--ema_decay", "1.0"])
    with pytest.raises(ValueError, match="--default_tile_overlap must be >= 0"):
        run_in_process("train_teasr_lora", [*args, *base, "--default_tile_overlap", "-1"])
    with pytest.raises(ValueError, match=r"--default_tile_overlap must be at most half the default tile \(8 px"):
        run_in_process("train_teasr_lora", [*args, *base, "--default_tile_overlap", "9"])  # 16-px tiles
    with pytest.raises(ValueError, match="--cache_images keeps a map-style dataset"):
        run_in_process("train_teasr_lora", [*args, *base, "--cache_images", "--streaming"])
    assert not glob.glob(str(out / "checkpoint-*")) and not glob.glob(str(out / "*.safetensors"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning_rate=-1e-4"], "--learning_rate must be a positive number, got -0.0001"),  # would ascend
        (["--learning_rate", "nan"], "--learning_rate must be a positive number, got nan"),
        (["--critic_learning_rate", "0"], "--critic_learning_rate must be a positive number"),
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),  # saved the untrained base
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1"),  # ZeroDivisionError
        (["--checkpointing_steps", "0"], "--checkpointing_steps must be >= 1"),  # ZeroDivisionError
        (["--train_batch_size", "0"], "--train_batch_size must be >= 1"),
        (["--rank", "0"], "--rank and --lora_alpha must be >= 1"),
        (["--dataloader_num_workers=-1"], "--dataloader_num_workers must be >= 0"),
        (["--lr_warmup_steps", "50"], "--lr_warmup_steps 50 has no effect with --lr_scheduler constant"),  # ignored
        (["--scale", "0"], "--resolution and --scale must be >= 1, got 16 and 0"),  # ZeroDivisionError
        (["--resolution", "0"], "--resolution and --scale must be >= 1, got 0 and 4"),  # failed at the first batch
        (["--validation_image", __file__], "is not a readable image"),  # a traceback after training
        (["--validation_image", os.path.dirname(__file__)], "is a folder; pass image files"),
        (["--validation_num_inference_steps", "1", "0"], "--validation_num_inference_steps must be >= 1, got [1, 0]"),
        (["--validation_start_timestep", "2"], "--validation_start_timestep must lie in (0, 1], got 2.0"),
        (["--default_start_timestep", "0"], "--default_start_timestep must lie in (0, 1], got 0.0"),  # saved
        (["--default_tile_size=-5"], "--default_tile_size must be >= 0 (0: no tiling), got -5"),  # saved, unusable
        (["--output_dir", "/dev/null/run"], "cannot be created: /dev/null is a file, not a folder"),
    ],
)
def test_out_of_range_numbers_are_one_clear_error_before_loading(photo_folder, tmp_path, flags, message):
    out = tmp_path / "run"
    args = common_args(photo_folder, out, str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_in_process("train_teasr_lora", [*args, "--pretrained_model_name_or_path", str(tmp_path / "none"), *flags])
    assert not out.exists()  # refused before the base is looked for


def test_an_empty_folder_or_an_unreachable_hub_dataset_is_one_clear_error(
    photo_folder, tiny_pipeline_dir, tmp_path, monkeypatch
):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine without the Hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "empty").mkdir()
    base = ["--pretrained_model_name_or_path", tiny_pipeline_dir, "--report_to", "none"]
    args = common_args(tmp_path / "empty", tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match="--train_data_dir .*empty' holds no image files"):
        run_in_process("train_teasr_lora", [*args, *base])  # was datasets' EmptyDatasetError traceback
    hub = [arg for arg in args if arg not in ("--train_data_dir", str(tmp_path / "empty"))]
    with pytest.raises(ValueError, match="--dataset_name 'nobody/no-such-photos' could not be loaded: Couldn't reach"):
        run_in_process("train_teasr_lora", [*hub, *base, "--dataset_name", "nobody/no-such-photos"])


def test_a_tracker_that_is_not_installed_is_one_clear_error_instead_of_a_run_without_logs(
    photo_folder, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed; accelerate would only warn
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match=re.escape("--report_to wandb needs the wandb package: `pip install wandb`")):
        run_in_process(
            "train_teasr_lora", [*args, "--pretrained_model_name_or_path", "unused", "--report_to", "wandb"]
        )
    assert not (tmp_path / "run").exists()


def test_a_new_run_in_an_output_dir_with_checkpoints_is_refused(photo_folder, tmp_path):
    """A second run there would number its checkpoints from 1, and --checkpoints_total_limit would delete those as
    the oldest, keeping the first run's; `latest` would then resume the wrong run."""
    earlier = tmp_path / "run" / "checkpoint-5"
    earlier.mkdir(parents=True)
    (earlier / CHECKPOINT_MARKER).write_text("{}")
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run: pass --resume_from_checkpoint latest"):
        run_in_process("train_teasr_lora", [*args, "--pretrained_model_name_or_path", str(tmp_path / "none")])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-5"]


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"patch_size": 2, "bogus": 1}', "--model_config: bogus is not a TEASRTransformer2DModel setting"),
        ("my_config.json", "--model_config 'my_config.json': no such file, and not a JSON object either"),
        ("[1, 2]", "--model_config must be a JSON object of TEASRTransformer2DModel settings"),
    ],
)
def test_a_wrong_model_config_is_one_clear_error(photo_folder, tmp_path, config, message):
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_in_process("train_flow_sr", [*args, "--full_finetune", "--model_config", config])


def test_fp16_loss_scale_overflows_skip_their_steps_and_training_goes_on(photo_folder, tmp_path, monkeypatch):
    """On a GPU, --mixed_precision fp16 scales the loss with a GradScaler whose first scales overflow. Each overflow
    must go through optimizer.step() (the scaler skips the update and lowers its scale); skipping that call left the
    scaler unscaled-but-not-updated, and the next step failed. No GPU here: the GradScaler accelerate would attach on
    one is attached on the CPU."""
    import accelerate

    scalers = []
    original_init = accelerate.Accelerator.__init__

    def init_with_gpu_like_scaler(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.state.mixed_precision == "fp16":
            self.native_amp = True
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)
            scalers.append(self.scaler)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", init_with_gpu_like_scaler)
    out = tmp_path / "fp16"
    args = common_args(photo_folder, out, str(tmp_path / "cache"), steps=4)
    config = ["--full_finetune", "--model_config", json.dumps(TINY_PIXEL_CONFIG), "--report_to", "none"]
    run_in_process("train_flow_sr", [*args, *config, "--mixed_precision", "fp16", "--max_bad_steps", "2"])
    assert scalers and scalers[0].get_scale() < 2.0**126  # it overflowed, lowered its scale, and the run went on
    assert (out / "model_index.json").is_file()


def test_the_last_step_is_validated_once_with_the_final_weights(photo_folder, validation_image, tmp_path, caplog):
    """With --max_train_steps a multiple of --validation_steps, the loop's own validation of the last step was
    repeated after saving (with EMA: two different images under one name)."""
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    config = ["--full_finetune", "--model_config", json.dumps(TINY_PIXEL_CONFIG), "--report_to", "none"]
    validation = ["--validation_image", validation_image, "--validation_steps", "1"]
    with caplog.at_level("INFO"):
        run_in_process("train_flow_sr", [*args, *config, *validation, "--validation_num_inference_steps", "1"])
    validated = [line for line in caplog.text.splitlines() if "Validation images:" in line]
    assert len(validated) == 2 and "step-000001" in validated[0] and "step-000002" in validated[1]


def test_an_output_dir_that_is_a_file_is_refused(photo_folder, tiny_pipeline_dir, tmp_path):
    (tmp_path / "run").write_text("notes")
    args = common_args(photo_folder, tmp_path / "run", str(tmp_path / "cache"), steps=2)
    with pytest.raises(ValueError, match="--output_dir .* is a file; pass a folder"):
        run_in_process("train_teasr_lora", [*args, "--pretrained_model_name_or_path", tiny_pipeline_dir])
    assert (tmp_path / "run").read_text() == "notes"


def test_diverging_run_stops_and_saves_nothing(photo_folder, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "nan"
    args = [
        *common_args(photo_folder, out, str(tmp_path / "cache"), steps=6),
        "--pretrained_model_name_or_path", tiny_pipeline_dir, "--report_to", "none", "--full_finetune",
        "--learning_rate", "1e30", "--max_grad_norm", "0", "--max_bad_steps", "2", "--checkpointing_steps", "1",
    ]  # fmt: skip
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        run_in_process("train_teasr_lora", args)
    # No final weights; checkpoints (of skipped steps too) hold the last finite weights only.
    assert not os.path.exists(out / "model_index.json")
    assert len(glob.glob(str(out / "checkpoint-*"))) <= 2
    for path in glob.glob(str(out / "**" / "*.safetensors"), recursive=True):
        assert all(torch.isfinite(v).all() for v in load_file(path).values()), path


# ------------------------------------------------------------------------------------------------------ data


def test_dataset_skips_corrupt_upsizes_small_and_is_seeded(photo_folder, hf_cache):
    dataset = load_image_dataset(train_data_dir=str(photo_folder), cache_dir=hf_cache)
    crops = SRCropDataset(dataset, resolution=32, scale=4, random_flip=True, seed=3)  # 20x24 gets upsized
    items = [crops[i] for i in range(len(crops))]
    batch = collate_sr_batch(items)
    assert batch["pixel_values"].shape == (7, 3, 32, 32)
    assert len(batch["skipped"]) == 1 and batch["num_upsized"] >= 1
    assert 0.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    again = SRCropDataset(dataset, resolution=32, scale=4, random_flip=True, seed=3)
    assert torch.equal(again[0]["pixel_values"], items[0]["pixel_values"])
    again.set_epoch(1)
    assert not all(torch.equal(again[i]["pixel_values"], items[i]["pixel_values"]) for i in range(len(again)))
    with pytest.raises(ValueError, match="--lq_column 'lq'"):
        load_image_dataset(train_data_dir=str(photo_folder), lq_column="lq", cache_dir=hf_cache)
    with pytest.raises(ValueError, match="exactly one"):
        load_image_dataset(cache_dir=hf_cache)


def test_every_photo_under_the_folder_is_used_whatever_its_subfolders_are_called(tmp_path, hf_cache, caplog):
    """imagefolder's rules read 'train/' and 'test/' subfolders as splits (dropping the test photos) and refuse a
    'val/' next to loose photos; a training folder means all of its photos, linked folders included."""
    folder = tmp_path / "shoot [2024]"  # names are not glob patterns
    photos = ["beach.png", "val/city.png", "train/dog.jpg", "test/cat.png", "a/b/tree.webp", "photo[1].png", "q?.PNG"]
    for index, relative in enumerate(photos):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        random_photo(40, 40, seed=index).save(folder / relative)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    random_photo(40, 40, seed=9).save(elsewhere / "linked.png")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "linked" / "loop").symlink_to(folder, target_is_directory=True)  # a cycle is walked once
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".thumbnails").mkdir()
    random_photo(8, 8).save(folder / ".thumbnails" / "beach.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "moved.png").symlink_to(tmp_path / "nowhere.png")  # a link to a deleted photo

    with caplog.at_level("WARNING", logger="pipeline_teasr.data"):
        dataset = load_image_dataset(train_data_dir=str(folder), cache_dir=hf_cache)
    assert [record.getMessage() for record in caplog.records] == [
        f"training image {folder / 'moved.png'}: skipped: a link to a file that does not exist"
    ]
    names = sorted(os.path.basename(row["image"]["path"]) for row in dataset)
    expected = ["beach.png", "broken.png", "cat.png", "city.png", "dog.jpg", "linked.png", "photo[1].png", "q?.PNG"]
    assert names == sorted([*expected, "tree.webp"])
    crops = SRCropDataset(dataset, resolution=32, scale=4, seed=0)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline_teasr.data"):
        for _ in range(2):
            skipped = collate_sr_batch([crops[i] for i in range(len(crops))])["skipped"]
    assert len(skipped) == 1  # the broken file, named once
    assert [record.getMessage() for record in caplog.records] == [
        f"training image {folder / 'broken.png'}: skipped: Truncated File Read"
    ]

    only_text = tmp_path / "notes"
    only_text.mkdir()
    (only_text / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"^--train_data_dir '.*notes' holds no image files \(\.png, \.jpg"):
        load_image_dataset(train_data_dir=str(only_text), cache_dir=hf_cache)


def test_a_paired_set_with_its_metadata_in_a_subfolder_keeps_imagefolders_rules(tmp_path, hf_cache, caplog):
    folder = tmp_path / "paired" / "train"
    folder.mkdir(parents=True)
    rows = []
    for index in range(2):
        random_photo(32, 32, seed=index).save(folder / f"hq{index}.png")
        random_photo(8, 8, seed=index).save(folder / f"lq{index}.png")
        rows.append(json.dumps({"file_name": f"hq{index}.png", "lq_file_name": f"lq{index}.png"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = load_image_dataset(train_data_dir=str(tmp_path / "paired"), lq_column="lq", cache_dir=hf_cache)
    assert len(dataset) == 2 and {"image", "lq"} <= set(dataset.column_names)  # pairs, not four HQ images
    # A broken LQ image is named, not its HQ partner
    (folder / "lq1.png").write_bytes(b"not an image")
    crops = SRCropDataset(dataset, resolution=16, scale=4, seed=0, lq_column="lq")
    with caplog.at_level("WARNING", logger="pipeline_teasr.data"):
        crops[1]
    assert f"training image {folder / 'lq1.png'}: skipped: not a readable image" in caplog.text
    assert "hq1.png" not in caplog.text


def test_min_crop_gradient_redraws_flat_crops(tmp_path):
    from datasets import Dataset, Image

    # A photo whose left half is flat and right half is noise: with the threshold every crop holds detail.
    pixels = np.full((64, 128, 3), 120, dtype=np.uint8)
    pixels[:, 64:] = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(tmp_path / "half.png")
    dataset = Dataset.from_dict({"image": [str(tmp_path / "half.png")] * 16}).cast_column("image", Image(decode=False))
    plain = SRCropDataset(dataset, resolution=32, scale=4, seed=0)
    detailed = SRCropDataset(dataset, resolution=32, scale=4, seed=0, min_crop_gradient=0.05)
    plain_gradients = [crop_gradient(plain[i]["pixel_values"]) for i in range(len(plain))]
    assert min(plain_gradients) < 0.05  # some random crops land (mostly) on the flat half
    assert all(crop_gradient(detailed[i]["pixel_values"]) >= 0.05 for i in range(len(detailed)))
    assert torch.equal(detailed[3]["pixel_values"], detailed[3]["pixel_values"])  # still seeded
    assert crop_gradient(torch.full((3, 8, 8), 0.5)) == 0
    with pytest.raises(ValueError, match="min_crop_gradient"):
        SRCropDataset(dataset, resolution=32, scale=4, min_crop_gradient=-0.1)


def test_random_rotate_turns_hq_and_paired_lq_together_and_keeps_unrotated_crops(tmp_path):
    from datasets import Dataset, Image

    # Paired data whose LQ is the exact 4x box average of the HQ photo: a box average commutes with flips and
    # quarter turns, so an LQ crop turned like its HQ crop still equals the HQ crop's box average.
    hq = random_photo(96, 128, seed=0)
    hq.save(tmp_path / "hq.png")
    hq.reduce(4).save(tmp_path / "lq.png")
    dataset = Dataset.from_dict({"image": [str(tmp_path / "hq.png")] * 12, "lq": [str(tmp_path / "lq.png")] * 12})
    dataset = dataset.cast_column("image", Image(decode=False)).cast_column("lq", Image(decode=False))
    crop_args = dict(lq_column="lq", resolution=32, scale=4, random_flip=True, seed=0)
    plain, turned = SRCropDataset(dataset, **crop_args), SRCropDataset(dataset, random_rotate=True, **crop_args)
    quarter_turns = set()
    for index in range(len(dataset)):
        before, after = plain[index], turned[index]
        # The same crop as without rotations (the turn is drawn last), turned by some multiple of 90 degrees ...
        turns = [before["pixel_values"].rot90(k, (-2, -1)) for k in range(4)]
        matches = [k for k in range(4) if torch.equal(after["pixel_values"], turns[k])]
        assert len(matches) >= 1
        quarter_turns.add(matches[0])
        # ... and its LQ crop turned with it.
        box_average = torch.nn.functional.avg_pool2d(after["pixel_values"][None], 4)[0]
        assert (box_average - after["lq_pixel_values"]).abs().max() < 2 / 255
    assert len(quarter_turns) >= 3  # 12 crops: turns other than 0 and 180 degrees occur


def test_cache_images_gives_the_same_crops_and_reads_each_file_once(tmp_path):
    from datasets import Dataset, Image

    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"photo{seed}.png")
        random_photo(48, 56, seed=seed).save(paths[-1])
    dataset = Dataset.from_dict({"image": [str(path) for path in paths]}).cast_column("image", Image(decode=False))
    plain = SRCropDataset(dataset, resolution=32, scale=4, seed=0)
    plain.set_epoch(1)
    expected = [plain[i]["pixel_values"] for i in range(3)]
    cached = SRCropDataset(dataset, resolution=32, scale=4, seed=0, cache_images=True)
    for i in range(3):
        cached[i]  # the first use decodes and keeps each image
    for path in paths:
        path.unlink()
    cached.set_epoch(1)
    assert all(torch.equal(cached[i]["pixel_values"], expected[i]) for i in range(3))  # from memory, same crops
    with pytest.raises(ValueError, match="could be read"):
        plain[0]  # without the cache the deleted files are needed


def test_paired_crops_are_aligned(tmp_path):
    from datasets import Dataset, Image

    hq = random_photo(64, 48, seed=1)
    lq = hq.resize((12, 16), PIL.Image.BICUBIC)
    hq.save(tmp_path / "hq.png")
    lq.save(tmp_path / "lq.png")
    dataset = Dataset.from_dict({"image": [str(tmp_path / "hq.png")], "lq": [str(tmp_path / "lq.png")]})
    dataset = dataset.cast_column("image", Image(decode=False)).cast_column("lq", Image(decode=False))
    item = SRCropDataset(dataset, lq_column="lq", resolution=32, scale=4, seed=0)[0]
    assert item["lq_pixel_values"].shape == (3, 8, 8)
    down = torch.nn.functional.interpolate(item["pixel_values"][None], size=(8, 8), mode="area")[0]
    assert (down - item["lq_pixel_values"]).abs().mean() < 0.05  # the LQ crop shows the same place
    with pytest.raises(ValueError, match="cannot read"):
        decode_image(3.5)
    assert decode_image(PIL.Image.fromarray(np.zeros((4, 4), np.uint16))).mode == "RGB"


def test_streaming_dataset_replays_until_max_train_steps(photo_folder, tmp_path):
    out = tmp_path / "stream"
    args = common_args(photo_folder, out, str(tmp_path / "cache"), steps=5)
    args[args.index("--train_data_dir")] = "--dataset_name"  # a local folder through load_dataset(streaming=True)
    run_in_process(
        "train_flow_sr",
        [*args, "--streaming", "--full_finetune", "--model_config", json.dumps(TINY_PIXEL_CONFIG)],
    )
    scalars = tensorboard_scalars(out)
    assert len(scalars["loss/flow"]) == 5  # 6 readable rows / batch 2 = 3 batches per pass: the stream was replayed
    assert TEASRPipeline.from_pretrained(out).transformer.config.num_layers == TINY_PIXEL_CONFIG["num_layers"]


def test_mixed_precision_default_is_bf16_only_where_the_hardware_computes_bfloat16(monkeypatch):
    """The recipe's default precision: emulated bfloat16 (an AVX2-only CPU) is many times slower than float32."""
    from pipeline_teasr import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert hardware.recommended_mixed_precision() == "no"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert hardware.recommended_mixed_precision() == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere or newer
    assert hardware.recommended_mixed_precision() == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)  # T4
    assert hardware.recommended_mixed_precision() == "no" and hardware.bfloat16_is_emulated("cuda")


def documented_training_commands() -> list[tuple[str, list[str]]]:
    """(script name, flags) of every `accelerate launch train_scripts/...` command in train_scripts/README.md."""
    text = (SCRIPTS / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        words = shlex.split(block.replace("\\\n", " "))
        for index, word in enumerate(words):
            if re.fullmatch(r"train_scripts/train_\w+\.py", word):
                flags = list(itertools.takewhile(lambda w: w not in ("&&", ";", "accelerate"), words[index + 1 :]))
                commands.append((Path(word).stem, flags))
    return commands


def test_a_mistake_under_the_documented_launcher_options_is_one_line_without_a_launcher_traceback(tmp_path):
    text = (SCRIPTS / "README.md").read_text()
    launcher = re.search(r"^accelerate launch (.*?) train_scripts/train_flow_sr\.py", text, flags=re.M)
    assert launcher, "train_scripts/README.md lost its train_flow_sr.py command"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *shlex.split(launcher.group(1)),
        str(SCRIPTS / "train_flow_sr.py"), "--train_data_dir", str(tmp_path / "missing"), "--full_finetune",
        "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: --train_data_dir '{tmp_path / 'missing'}' is not a folder." in result.stderr
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr, result.stderr[-3000:]


def test_every_documented_training_command_parses_and_passes_the_flag_checks(tmp_path, monkeypatch):
    from pipeline_teasr.distillation import check_common_args

    monkeypatch.setenv("HF_TOKEN", "hf_reader_is_logged_in")  # --push_to_hub asks for a login, not checked here

    commands = documented_training_commands()
    assert {name for name, _ in commands} == {"train_flow_sr", "train_teasr_lora"}, commands
    for index, (name, flags) in enumerate(commands):
        args = script_module(name).parse_args(flags)  # a flag that is unknown or misspelled fails here
        # the files the commands name are the reader's; everything else is checked as given
        if args.train_data_dir is not None:
            args.train_data_dir = str(tmp_path)
        args.validation_image = [str(ROOT / "examples" / "astronaut_lq.png")] if args.validation_image else None
        args.output_dir = str(tmp_path / f"run{index}")
        check_common_args(args)  # e.g. a warm-up that the schedule would ignore


def test_validation_image_may_be_repeated():
    parse = script_module("train_flow_sr").parse_args
    flags = ["--train_data_dir", "photos", "--output_dir", "out", "--full_finetune"]
    repeated = parse([*flags, "--validation_image", "a.png", "--validation_image", "b.png"]).validation_image
    assert repeated == ["a.png", "b.png"]  # the last one alone was kept
    assert parse([*flags, "--validation_image", "a.png", "b.png"]).validation_image == ["a.png", "b.png"]


class _Unreadable(torch.utils.data.Dataset):
    message = "None of the 1 training images could be read (or all are too small)."

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise ValueError(self.message)


def test_an_error_in_a_data_loader_worker_is_reported_as_its_own_message():
    from pipeline_teasr.errors import training_error_message

    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(ValueError) as raised:
        next(iter(loader))
    assert "Original Traceback" in str(raised.value)  # torch's wrapping, a page long
    assert training_error_message(raised.value) == _Unreadable.message
    assert training_error_message(ValueError("plain\nmessage")) == "plain\nmessage"


def test_a_photo_with_transparent_pixels_is_named_once(tmp_path, caplog):
    cutout = np.zeros((16, 16, 4), dtype=np.uint8)
    cutout[:, 8:] = 200  # right half opaque grey, left half transparent (stored black)
    PIL.Image.fromarray(cutout, "RGBA").save(tmp_path / "cutout.png")
    opaque = cutout.copy()
    opaque[..., 3] = 255
    PIL.Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    with caplog.at_level("WARNING", logger="pipeline_teasr.data"):
        for _ in range(3):
            assert decode_image(str(tmp_path / "cutout.png")).mode == "RGB"
            decode_image({"path": str(tmp_path / "opaque.png"), "bytes": None})
    assert [record.getMessage() for record in caplog.records] == [
        f"training image {tmp_path / 'cutout.png'}: has transparent pixels, which are trained as the colour stored "
        "under them (often black); flatten it onto a background or leave it out"
    ]


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_dataset_saved_with_save_to_disk_loads_by_its_folder(tmp_path, hf_cache, as_dict):
    from datasets import Dataset, DatasetDict, Image

    photos = [str(tmp_path / f"p{i}.png") for i in range(3)]
    for i, path in enumerate(photos):
        random_photo(40, 40, seed=i).save(path)
    dataset = Dataset.from_dict({"image": photos}).cast_column("image", Image())
    folder = tmp_path / "saved"
    (DatasetDict({"train": dataset}) if as_dict else dataset).save_to_disk(str(folder))
    loaded = load_image_dataset(dataset_name=str(folder), cache_dir=hf_cache)  # load_dataset refuses this folder
    crops = SRCropDataset(loaded, resolution=32, scale=4, seed=0)
    assert len(crops) == 3 and crops[0]["pixel_values"].shape == (3, 32, 32)
    if as_dict:
        with pytest.raises(ValueError, match=r"has no split 'validation'; its splits are \['train'\]"):
            load_image_dataset(dataset_name=str(folder), split="validation", cache_dir=hf_cache)


@pytest.mark.parametrize(
    "base, expected",
    [("someone/teasr-qwen-flow-base", "someone/teasr-qwen-flow-base"), ("LOCAL", None), (None, None)],
)
def test_the_model_card_names_a_hub_base_model_only(tmp_path, base, expected):
    """The Hub refuses a README whose base_model is not a model id (a local path, 'trained from scratch')."""
    import argparse

    import yaml

    from pipeline_teasr.distillation import write_model_card

    if base == "LOCAL":
        base = str(tmp_path / "my-base")
        os.makedirs(base)
    args = argparse.Namespace(pretrained_model_name_or_path=base, hub_model_id=None, scale=4, max_train_steps=10)
    text = Path(write_model_card(args, str(tmp_path), "teasr", lora=True)).read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata.get("base_model") == expected
    assert metadata["tags"][-1] == "lora" and metadata["library_name"] == "diffusers"
    if base is not None:
        assert f'BASE, REPO = "{base}"' in text  # the snippet loads the base from where it is
