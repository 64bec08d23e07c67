"""`teasr upscale`: outputs, modes, folders, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from PIL import ExifTags

from pipeline_teasr.cli import CPU_FLOAT16, CLIError, collect_jobs, main

from .conftest import icc_profile, random_photo


@pytest.fixture()
def run_cli(tiny_pipeline_dir, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["upscale", *args, "--model", tiny_pipeline_dir])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decompression bomb) with a tiny truncated body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))


def test_single_file_upscaled(run_cli, tmp_path):
    source = tmp_path / "photo.png"
    random_photo(10, 12).save(source)
    code, out, err = run_cli(str(source), "-o", str(tmp_path / "out.png"), "--steps", "2", "--scale", "3")
    assert code == 0, err
    assert PIL.Image.open(tmp_path / "out.png").size == (36, 30)
    assert "(36x30, 2 steps, 2 network calls over all tiles, " in out  # one untiled call per step


def test_output_is_readable_like_any_new_file_and_leaves_no_temporary(run_cli, tmp_path):
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = os.umask(0o022)
    try:
        code, _, err = run_cli(str(source), "-o", str(out_dir))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert [p.name for p in out_dir.iterdir()] == ["photo.png"]
    assert (out_dir / "photo.png").stat().st_mode & 0o777 == 0o644


# (input mode, output mode): PNG cannot store CMYK; a palette or 1-bit upscale comes back in full tone.
@pytest.mark.parametrize(
    "mode, expected",
    [("RGBA", "RGBA"), ("LA", "LA"), ("L", "L"), ("P", "RGB"), ("1", "L"), ("I;16", "I;16"), ("CMYK", "RGB")],
)
def test_output_modes(run_cli, tmp_path, mode, expected):
    source = tmp_path / ("in.jpg" if mode == "CMYK" else "in.png")
    random_photo(8, 8, mode=mode).save(source)
    code, _, err = run_cli(str(source), "-o", str(tmp_path / "out.png"))
    assert code == 0, err
    out = PIL.Image.open(tmp_path / "out.png")
    assert out.mode == expected and out.size == (32, 32)


def test_exif_orientation_applied(run_cli, tmp_path):
    image = random_photo(8, 16)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    code, _, err = run_cli(str(tmp_path / "rotated.jpg"), "-o", str(tmp_path / "out.png"))
    assert code == 0, err
    assert PIL.Image.open(tmp_path / "out.png").size == (32, 64)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_the_photo_icc_profile_is_written_with_the_output(run_cli, tmp_path, suffix):
    # A wide-gamut phone photo (Display P3, Adobe RGB) upscaled without its profile would show dull colours.
    random_photo(8, 8).save(tmp_path / "photo.jpg", icc_profile=icc_profile("RGB"))
    code, _, err = run_cli(str(tmp_path / "photo.jpg"), "-o", str(tmp_path / f"out{suffix}"))
    assert code == 0, err
    assert PIL.Image.open(tmp_path / f"out{suffix}").info.get("icc_profile") == icc_profile("RGB")


def test_a_cmyk_profile_is_not_put_on_an_rgb_output(run_cli, tmp_path):
    random_photo(8, 8, mode="CMYK").save(tmp_path / "print.jpg", icc_profile=icc_profile("CMYK"))
    code, _, err = run_cli(str(tmp_path / "print.jpg"), "-o", str(tmp_path / "out.png"))
    assert code == 0, err
    out = PIL.Image.open(tmp_path / "out.png")
    assert out.mode == "RGB" and "icc_profile" not in out.info


def _camera_exif(width: int, height: int) -> PIL.Image.Exif:
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Orientation] = 6  # rotate 90 degrees clockwise when displayed
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.DateTimeOriginal] = "2026:05:01 12:00:00"
    details[ExifTags.Base.ExifImageWidth], details[ExifTags.Base.ExifImageHeight] = width, height
    return exif


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_camera_exif_is_kept_with_the_new_size_and_no_second_rotation(run_cli, tmp_path, suffix):
    random_photo(8, 16).save(tmp_path / "photo.jpg", exif=_camera_exif(16, 8))
    code, _, err = run_cli(str(tmp_path / "photo.jpg"), "-o", str(tmp_path / f"out{suffix}"))
    assert code == 0, err
    out = PIL.Image.open(tmp_path / f"out{suffix}")
    exif = out.getexif()
    details = exif.get_ifd(ExifTags.IFD.Exif)
    assert out.size == (32, 64)
    assert exif.get(ExifTags.Base.Make) == "TestCam"
    assert details.get(ExifTags.Base.DateTimeOriginal) == "2026:05:01 12:00:00"
    assert (details.get(ExifTags.Base.ExifImageWidth), details.get(ExifTags.Base.ExifImageHeight)) == (32, 64)
    assert exif.get(ExifTags.Base.Orientation, 1) == 1  # the pixels are already upright
    assert PIL.ImageOps.exif_transpose(out).size == (32, 64)


def test_unparsable_exif_is_dropped_not_fatal(run_cli, tmp_path):
    random_photo(8, 8).save(tmp_path / "photo.jpg", exif=b"Exif\x00\x00MM\x00*garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out.jpg"))
    assert code == 0, err
    assert not [str(warning.message) for warning in caught if "EXIF" in str(warning.message)]
    assert PIL.Image.open(tmp_path / "out.jpg").size == (32, 32)


def test_animated_gif_uses_first_frame_and_non_ascii_names(run_cli, tmp_path):
    frames = [random_photo(8, 8, seed=i).convert("P") for i in range(3)]
    source = tmp_path / "fotoğraf_写真.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:])
    code, _, err = run_cli(str(source), "-o", str(tmp_path / "çıktı.png"))
    assert code == 0, err
    assert PIL.Image.open(tmp_path / "çıktı.png").size == (32, 32)


@pytest.mark.parametrize("size", [(1, 1), (1, 400)])
def test_extreme_aspect_ratios(run_cli, tmp_path, size):
    source = tmp_path / "thin.png"
    random_photo(*size).save(source)
    code, _, err = run_cli(str(source), "-o", str(tmp_path / "out.png"), "--tile", "32")
    assert code == 0, err
    assert PIL.Image.open(tmp_path / "out.png").size == (size[1] * 4, size[0] * 4)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    random_photo(64, 64).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    truncated_png = tmp_path / "truncated.png"
    random_photo(64, 64).save(truncated_png)
    truncated_png.write_bytes(truncated_png.read_bytes()[:100])
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 60000, 60000)
    return {"empty": empty, "text": text, "truncated": truncated, "truncated_png": truncated_png, "bomb": bomb}


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "truncated_png", "bomb", "missing"])
def test_bad_files_exit_2_with_one_line_and_no_output(run_cli, tmp_path, kind):
    source = _bad_inputs(tmp_path).get(kind, tmp_path / "missing.png")
    target = tmp_path / "out" / "result.png"
    code, _, err = run_cli(str(source), "-o", str(target))
    assert code == 2
    assert err.startswith("teasr: error:") and err.count("\n") == 1, err
    assert not target.exists()
    assert not list(tmp_path.glob("out/.result*")), "temporary file left behind"


@pytest.mark.parametrize(
    "args, word",
    [
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--scale", "0"], "--scale must be a positive number"),
        (["--scale", "-1"], "--scale must be a positive number"),
        (["--start-timestep", "0"], "--start-timestep must lie in (0, 1]"),
        (["--start-timestep", "1.2"], "--start-timestep must lie in (0, 1]"),
        (["--scale", "100", "--max-output-pixels", "100000"], "above --max-output-pixels=100000"),
        (["--tile", "16", "--tile-overlap", "100"], "--tile-overlap must be at most half the tile"),
    ],
)
def test_bad_arguments_exit_2(run_cli, tmp_path, args, word):
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    code, _, err = run_cli(str(source), "-o", str(tmp_path / "out.png"), *args)
    assert code == 2 and word in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.png").exists()


def test_lq_start_ignores_the_seed_and_differs_from_the_noise_start(run_cli, tmp_path):
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    outputs = {}
    for start, seed in (("lq", "1"), ("lq", "2"), ("noise", "1")):
        target = tmp_path / f"{start}_{seed}.png"
        code, _, err = run_cli(str(source), "-o", str(target), "--start", start, "--seed", seed)
        assert code == 0, err
        outputs[start, seed] = np.asarray(PIL.Image.open(target))
    np.testing.assert_array_equal(outputs["lq", "1"], outputs["lq", "2"])
    assert np.abs(outputs["lq", "1"].astype(int) - outputs["noise", "1"]).max() > 0


def test_a_start_the_model_was_not_trained_for_is_one_clear_error(tiny_pipeline, tmp_path, capsys):
    tiny_pipeline.register_to_config(supported_starts=["lq"])
    try:
        tiny_pipeline.save_pretrained(tmp_path / "lq_only")
    finally:
        tiny_pipeline.register_to_config(supported_starts=None)
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    args = ["upscale", str(source), "--model", str(tmp_path / "lq_only")]
    assert main([*args, "-o", str(tmp_path / "default.png")]) == 0  # the default is the supported start
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "noise.png"), "--start", "noise"]) != 0
    err = capsys.readouterr().err
    assert "trained for start='lq' only" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "noise.png").exists()


def test_folder_with_good_and_bad_files(run_cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        random_photo(8, 8, seed=i).save(folder / f"good{i}.png")
    (folder / "broken.png").write_text("nope")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    code, out, err = run_cli(str(folder), "-o", str(tmp_path / "out"))
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good0.png", "good1.png"]
    assert "broken.png" in err and "1 of 3 inputs failed" in err


def test_several_files_go_to_a_folder_keeping_stems(run_cli, tmp_path):
    names = []
    for i in range(2):
        path = tmp_path / f"img{i}.jpg"
        random_photo(8, 8, seed=i).save(path)
        names.append(str(path))
    code, _, err = run_cli(*names, "-o", str(tmp_path / "results"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["img0.png", "img1.png"]


def test_missing_model_is_one_line(tmp_path, capsys):
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    code = main(["upscale", str(source), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"teasr: error: model folder not found: {tmp_path / 'nowhere'}\n", err


def test_a_hub_repo_that_cannot_be_reached_is_one_clear_error(tmp_path):
    source = tmp_path / "photo.png"
    random_photo(8, 8).save(source)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline_teasr.cli", "upscale", str(source), "-o", "o.png", "--model", "nobody/none"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "teasr: error: model 'nobody/none' is not a local folder and could not be loaded from the Hugging Face Hub"
        )
    )


def test_console_script_has_no_traceback(tiny_pipeline_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    teasr = Path(sys.executable).with_name("teasr")
    command = [str(teasr)] if teasr.exists() else [sys.executable, "-m", "pipeline_teasr.cli"]
    result = subprocess.run(
        [*command, "upscale", str(bad), "-o", str(tmp_path / "o.png"), "--model", tiny_pipeline_dir],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("teasr: error:")


def test_help_and_missing_inputs_answer_without_importing_torch(tmp_path):
    # `teasr --help` and a mistyped path answer at once: torch and diffusers take seconds to import.
    script = (
        "import sys\n"
        "from pipeline_teasr.cli import main\n"
        "code = main(['upscale', sys.argv[1], '-o', sys.argv[2]])\n"
        "heavy = sorted(name for name in ('torch', 'diffusers') if name in sys.modules)\n"
        "print(code, ','.join(heavy) or 'none')\n"
    )
    missing = tmp_path / "typo.png"
    result = subprocess.run(
        [sys.executable, "-c", script, str(missing), str(tmp_path / "o.png")], capture_output=True, text=True
    )
    assert result.stdout.split() == ["2", "none"], result.stdout + result.stderr
    assert result.stderr.strip() == f"teasr: error: image file not found: {missing}"
    help_run = subprocess.run(
        [sys.executable, "-c", "import sys, pipeline_teasr.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert help_run.stdout.strip() == "False", help_run.stderr


def test_an_output_name_pillow_cannot_write_is_refused_before_loading_the_model(tmp_path):
    source = tmp_path / "in.png"
    PIL.Image.new("RGB", (8, 8)).save(source)
    target = tmp_path / "out.jpgg"
    script = (
        "import sys\n"
        "from pipeline_teasr.cli import main\n"
        "code = main(['upscale', sys.argv[1], '-o', sys.argv[2]])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(source), str(target)], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.strip().startswith(f"teasr: error: cannot write {target}: Pillow has no writer for '.jpgg'")
    assert not target.exists()


def test_huge_input_refused_above_the_output_cap(run_cli, tmp_path):
    source = tmp_path / "big.png"
    PIL.Image.new("RGB", (4000, 3000), (90, 120, 150)).save(source)
    code, _, err = run_cli(str(source), "-o", str(tmp_path / "out.png"))
    assert code == 2
    assert "16000x12000" in err and "above --max-output-pixels=67108864" in err and err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_without_native_bfloat16_warns_and_still_upscales(run_cli, tmp_path, monkeypatch, native):
    """Emulated bfloat16 (an AVX2-only CPU) is several times slower than float32: the user is told, once, and why."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    random_photo(16, 16).save(tmp_path / "in.png")
    code, _, err = run_cli(str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--dtype", "bfloat16")
    assert code == 0 and PIL.Image.open(tmp_path / "out.png").size == (64, 64)
    warned = [line for line in err.splitlines() if "no native bfloat16" in line]
    assert len(warned) == (0 if native else 1) and (native or "--dtype float32" in warned[0])


def test_float16_on_the_cpu_warns_once_and_gives_the_float32_image(tiny_pipeline_dir, tmp_path, capfd):
    """diffusers warns (several lines) that a float16 pipeline moved to the CPU will fail; it runs, only slowly, so the
    CLI says that in one line of its own instead."""
    random_photo(16, 16).save(tmp_path / "in.png")
    outputs = {}
    for dtype in ("float32", "float16"):
        target = tmp_path / f"{dtype}.png"
        code = main(
            ["upscale", str(tmp_path / "in.png"), "-o", str(target), "--model", tiny_pipeline_dir, "--dtype", dtype]
        )
        err = capfd.readouterr().err
        assert code == 0, err
        outputs[dtype] = np.asarray(PIL.Image.open(target)).astype(int)
    assert err.strip().splitlines() == [f"teasr: warning: {CPU_FLOAT16}; use --dtype float32"]
    difference = np.abs(outputs["float16"] - outputs["float32"])
    assert difference.mean() < 0.5 and difference.max() <= 8  # rounding, not another image


@pytest.mark.parametrize("to_folder", [False, True])
def test_an_output_that_would_replace_its_input_is_refused_and_the_photo_kept(run_cli, tmp_path, to_folder):
    random_photo(8, 8).save(tmp_path / "photo.png")
    random_photo(8, 8, seed=1).save(tmp_path / "other.jpg")
    before = (tmp_path / "photo.png").read_bytes()
    args = (str(tmp_path), "-o", str(tmp_path)) if to_folder else (str(tmp_path / "photo.png"), "-o", str(tmp_path))
    code, _, err = run_cli(*args)
    assert code == 2 and err.count("\n") == 1 and "is the input itself" in err, err
    assert (tmp_path / "photo.png").read_bytes() == before and not (tmp_path / "other.png").exists()


@pytest.mark.parametrize("terminal", [False, True])
def test_one_photo_shows_its_tile_progress_on_a_terminal_only(run_cli, tmp_path, monkeypatch, terminal):
    """A single large photo takes minutes on a CPU (94 s for a 4096 x 3072 output here): on a terminal the CLI shows
    the pipeline's progress over tile batches; in a log or a pipe it prints only its one result line."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    random_photo(24, 24).save(tmp_path / "in.png")
    code, out, err = run_cli(str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--tile", "32")
    assert code == 0 and out.count("\n") == 1
    assert ("upscaling" in err and "tiles batch" in err) == terminal, err


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_upscaling(tmp_path):
    (tmp_path / "notes").write_text("a file where a folder should be")
    random_photo(8, 8).save(tmp_path / "photo.png")
    for output in (tmp_path / "notes" / "x.png", tmp_path / "notes" / "sub" / "x.png"):
        with pytest.raises(CLIError, match=f"cannot write into .*: {tmp_path / 'notes'} is a file, not a folder"):
            collect_jobs([str(tmp_path / "photo.png")], str(output))  # before the model is loaded
    jobs = collect_jobs([str(tmp_path / "photo.png")], str(tmp_path / "new" / "deeper" / "x.png"))
    assert jobs[0][1].parent.is_dir() and not list(jobs[0][1].parent.iterdir())  # created, probe removed


@pytest.mark.parametrize("native", [False, True])
def test_auto_dtype_on_a_gpu_is_bfloat16_only_where_it_is_computed_natively(monkeypatch, native):
    """A T4 or V100 (Colab's free GPU) emulates bfloat16; `--dtype auto` picks float32 there."""
    import torch

    from pipeline_teasr.cli import resolve_device_and_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation
    )
    device, dtype = resolve_device_and_dtype("cuda", "auto")
    assert device.type == "cuda" and dtype == (torch.bfloat16 if native else torch.float32)


def test_a_lora_folder_given_as_model_says_how_to_use_it(tmp_path, capsys):
    """What train_teasr_lora.py writes without --full_finetune: the LoRA and its training args, no pipeline."""
    from safetensors.torch import save_file

    lora = tmp_path / "teasr-lora"
    lora.mkdir()
    save_file({"lora_A": torch.zeros(2, 2)}, lora / "pytorch_lora_weights.safetensors")
    (lora / "training_args.json").write_text('{"pretrained_model_name_or_path": "runs/flow_base"}')
    random_photo(8, 8).save(tmp_path / "in.png")
    code = main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", str(lora)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model_index.json is missing" in err
    assert f"teasr export OUT --model runs/flow_base --lora {lora} --fuse" in err


def test_two_photos_of_one_stem_in_a_folder_are_refused_before_either_is_overwritten(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    random_photo(8, 8, seed=1).save(photos / "beach.png")
    random_photo(8, 8, seed=2).save(photos / "beach.JPG")
    code, _, err = run_cli(str(photos), "-o", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert "share the file name stem 'beach', so their outputs (beach.png) would overwrite each other" in err
    assert not (tmp_path / "out").exists()


def test_an_output_ending_in_a_slash_is_a_folder_to_create(run_cli, tmp_path):
    random_photo(8, 8).save(tmp_path / "photo.png")
    code, _, err = run_cli(str(tmp_path / "photo.png"), "-o", f"{tmp_path / 'new'}/")
    assert code == 0, err
    assert PIL.Image.open(tmp_path / "new" / "photo.png").size == (32, 32)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp"])
def test_16_bit_grayscale_is_scaled_to_8_bits_for_8_bit_formats(run_cli, tmp_path, suffix):
    """Pillow's I;16 -> RGB / L conversions clip at 255: a mid-grey 16-bit photo came out white as JPEG."""
    gray = np.asarray(random_photo(8, 8, mode="L"), dtype=np.uint16) * 257
    PIL.Image.fromarray(gray).save(tmp_path / "gray16.png")
    for name in ("out16.png", f"out{suffix}"):
        code, _, err = run_cli(str(tmp_path / "gray16.png"), "-o", str(tmp_path / name))
        assert code == 0, err
    sixteen_bit = PIL.Image.open(tmp_path / "out16.png")
    assert sixteen_bit.mode == "I;16"
    eight_bit = np.asarray(PIL.Image.open(tmp_path / f"out{suffix}").convert("L"), dtype=np.float64)
    assert abs(eight_bit.mean() - np.asarray(sixteen_bit, dtype=np.float64).mean() / 257) < 2


def test_jpeg_outputs_are_written_at_the_quality_asked(run_cli, tmp_path):
    random_photo(16, 16).save(tmp_path / "photo.png")
    sizes = {}
    for quality in ("95", "40"):
        out = tmp_path / f"q{quality}.jpg"
        assert run_cli(str(tmp_path / "photo.png"), "-o", str(out), "--quality", quality)[0] == 0
        sizes[quality] = out.stat().st_size
    assert sizes["95"] > 1.5 * sizes["40"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(2**64)], "--seed: must be an integer from 0 to 2**64 - 1"),  # torch: "Overflow when unpacking"
        (["--max-output-pixels", "0"], "--max-output-pixels: must be a positive integer, got 0"),  # was the default
        (["--quality", "0"], "--quality: must be from 1 to 100, got 0"),
    ],
)
def test_out_of_range_options_are_usage_errors(tmp_path, capsys, args, message):
    random_photo(8, 8).save(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o.png"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_a_device_that_cannot_be_used_is_one_line(tiny_pipeline_dir, tmp_path, capsys, device):
    random_photo(8, 8).save(tmp_path / "photo.png")
    code = main(
        ["upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o.png"), "--model", tiny_pipeline_dir,
         "--device", device]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"teasr: error: --device {device}") and err.count("\n") == 1, err


def test_teasr_model_naming_a_missing_folder_or_a_file_is_said_plainly(tmp_path, capsys, monkeypatch):
    random_photo(8, 8).save(tmp_path / "photo.png")
    command = ["upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o.png")]
    monkeypatch.setenv("TEASR_MODEL", str(tmp_path / "nowhere"))
    assert main(command) == 2
    assert capsys.readouterr().err == f"teasr: error: model folder not found: {tmp_path / 'nowhere'}\n"
    assert main([*command, "--model", str(tmp_path / "photo.png")]) == 2
    assert "photo.png is a file; pass a pipeline folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    assert main([*command, "--model", str(broken)]) == 2
    assert f"{broken / 'model_index.json'} is not valid JSON" in capsys.readouterr().err


def test_a_bad_option_is_reported_once_for_a_folder_not_once_per_photo(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        random_photo(8, 8, seed=index).save(photos / f"p{index}.png")
    code, _, err = run_cli(str(photos), "-o", str(tmp_path / "out"), "--steps", "0")
    assert code == 2 and err == "teasr: error: --steps must be an integer >= 1, got 0.\n", err


def test_an_image_above_the_input_limit_is_refused_with_a_size_to_aim_for(tmp_path):
    from pipeline_teasr.image_processing_teasr import load_image

    large = tmp_path / "large.png"
    random_photo(200, 300).save(large)  # 300 wide, 200 high
    with pytest.raises(ValueError, match=r"is 300x200, above the input limit of 40,000 pixels: downscale it first, "):
        load_image(large, max_pixels=40_000)
    suggested = str(pytest.raises(ValueError, load_image, large, max_pixels=40_000).value).rsplit(" ", 1)[-1]
    width, height = map(int, suggested.split("x"))
    assert width * height <= 40_000 and abs(width / height - 1.5) < 0.02  # same shape, within the limit
    # Pillow refuses a 60000 x 60000 header before its size can be checked: the message still says what to do
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 60000, 60000)
    limit = PIL.Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=rf"has more than {limit:,} pixels, above the input limit of 40,000: "):
        load_image(bomb, max_pixels=40_000)
    with pytest.raises(ValueError, match=rf"has more than {limit:,} pixels, too many: downscale it first$"):
        load_image(bomb)
