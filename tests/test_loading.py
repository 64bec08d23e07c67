"""Loading is safetensors only: weights that exist only as pickles (`.bin`) are refused, never unpickled.

Each pickle here is a trap: unpickling it creates a marker file (checked once, so the trap is known to work). Every
`torch.load` call is recorded too, since even a restricted (`weights_only=True`) load would still unpickle.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.distillation import load_training_pipeline, load_vae


class _Trap:
    """Unpickling calls `open(marker, "w")`: the marker file proves the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_trap(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": _Trap(marker)}))
    return path


@pytest.fixture()
def torch_loads(monkeypatch) -> list[str]:
    """The files `torch.load` was asked to read (the real `torch.load` still runs)."""
    calls: list[str] = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):
        calls.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def pickle_only(folder: Path, safetensors_name: str, bin_name: str, marker: Path) -> None:
    (folder / safetensors_name).unlink()
    write_trap(folder / bin_name, marker)


def test_the_trap_works(tmp_path):
    marker = tmp_path / "unpickled"
    pickle.loads(write_trap(tmp_path / "trap.bin", marker).read_bytes())
    assert marker.exists()


def test_pipeline_with_pickled_transformer_weights_is_refused_without_unpickling(tiny_pipeline, tmp_path, torch_loads):
    folder, marker = tmp_path / "pipe", tmp_path / "unpickled"
    tiny_pipeline.save_pretrained(folder)
    pickle_only(folder / "transformer", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)

    with pytest.raises(ValueError) as caught:
        TEASRPipeline.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("cannot load the `transformer` component"), message
    assert "safetensors" in message, message
    assert not marker.exists() and torch_loads == []


def test_training_loaders_refuse_pickled_transformer_and_vae(tiny_pipeline, tmp_path, torch_loads):
    from diffusers import AutoencoderKL

    marker = tmp_path / "unpickled"
    transformer = tmp_path / "transformer"  # a bare transformer folder, as --pretrained_model_name_or_path
    tiny_pipeline.transformer.save_pretrained(transformer)
    pickle_only(transformer, "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)
    with pytest.raises((OSError, ValueError), match="safetensors"):
        load_training_pipeline(str(transformer))

    vae = tmp_path / "vae"
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ).save_pretrained(vae)
    pickle_only(vae, "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)
    with pytest.raises((OSError, ValueError), match="safetensors"):
        load_vae(str(vae))
    assert not marker.exists() and torch_loads == []


def test_pickled_lora_is_refused_without_unpickling(tiny_pipeline_dir, tmp_path, torch_loads):
    marker = tmp_path / "unpickled"
    lora = tmp_path / "lora"
    lora.mkdir()
    write_trap(lora / "pytorch_lora_weights.bin", marker)
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises((OSError, ValueError)):
        pipe.load_lora_weights(str(lora))
    with pytest.raises(ValueError, match="only .safetensors files are loaded"):
        pipe.load_lora_weights(str(lora), weight_name="pytorch_lora_weights.bin")
    with pytest.raises(ValueError, match="cannot read LoRA weights"):
        pipe.load_lora_weights(str(lora / "pytorch_lora_weights.bin"))  # the file itself
    assert not marker.exists() and torch_loads == []
    assert not pipe.get_list_adapters(), "nothing was loaded"


def test_pipeline_folder_with_pickles_next_to_safetensors_loads_the_safetensors(tiny_pipeline, tmp_path, torch_loads):
    folder, marker = tmp_path / "pipe", tmp_path / "unpickled"
    tiny_pipeline.save_pretrained(folder)
    write_trap(folder / "transformer" / "diffusion_pytorch_model.bin", marker)
    loaded = TEASRPipeline.from_pretrained(folder)
    torch.testing.assert_close(loaded.transformer.proj_out.weight, tiny_pipeline.transformer.proj_out.weight)
    assert not marker.exists() and torch_loads == []
    shutil.rmtree(folder)
