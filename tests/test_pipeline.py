"""TEASRPipeline: any-step sampling, sizes, determinism, tiling, modes, loaders, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch

from pipeline_teasr import TEASRPipeline

from .conftest import icc_profile, random_photo


def _run(pipe, image, seed=0, **kwargs):
    return pipe(image, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_any_step_outputs_are_finite_and_sized(tiny_pipeline, steps):
    image = random_photo(13, 17)
    out = _run(tiny_pipeline, image, num_inference_steps=steps, output_type="np")
    assert out.images.shape == (1, 52, 68, 3)
    assert np.isfinite(out.images).all()
    assert out.nfe == steps


@pytest.mark.parametrize(
    "size, scale, expected",
    [((7, 9), 4.0, (28, 36)), ((10, 15), 2.5, (25, 38)), ((1, 1), 4.0, (4, 4)), ((16, 16), 1.0, (16, 16))],
)
def test_odd_sizes_and_float_scales(tiny_pipeline, size, scale, expected):
    out = _run(tiny_pipeline, random_photo(*size), upscale=scale)
    assert out.images[0].size == (expected[1], expected[0])


def test_same_seed_same_output_and_seed_matters(tiny_pipeline):
    image = random_photo(12, 12)
    a = _run(tiny_pipeline, image, seed=3, output_type="np").images
    b = _run(tiny_pipeline, image, seed=3, output_type="np").images
    c = _run(tiny_pipeline, image, seed=4, output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_step_count_changes_output(tiny_pipeline):
    image = random_photo(12, 12)
    one = _run(tiny_pipeline, image, num_inference_steps=1, output_type="np").images
    four = _run(tiny_pipeline, image, num_inference_steps=4, output_type="np").images
    assert np.abs(one - four).max() > 1e-3


def test_start_timestep_anchors_on_lq(tiny_pipeline):
    image = random_photo(12, 12)
    near_lq = _run(tiny_pipeline, image, start_timestep=0.01, output_type="pt").images
    bicubic = torch.nn.functional.interpolate(
        torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None],
        scale_factor=4,
        mode="bicubic",
    ).clamp(0, 1)
    from_noise = _run(tiny_pipeline, image, start_timestep=1.0, output_type="pt").images
    assert (near_lq - bicubic).abs().mean() < 0.1
    assert (near_lq - bicubic).abs().mean() < 0.5 * (from_noise - bicubic).abs().mean()


def test_lq_start_is_one_noise_free_jump_from_the_lq_image(tiny_pipeline):
    """start="lq": z_1 = c, so one step returns c - u(c, c, 1, 0) and the seed plays no part."""
    image = random_photo(12, 12)
    out = _run(tiny_pipeline, image, seed=3, start="lq", output_type="pt").images
    torch.testing.assert_close(out, _run(tiny_pipeline, image, seed=4, start="lq", output_type="pt").images)
    c = tiny_pipeline.encode_images(
        torch.nn.functional.interpolate(
            torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None],
            scale_factor=4,
            mode="bicubic",
        ).clamp(0, 1)
    )
    ones = torch.ones(1)
    u = tiny_pipeline.transformer(c, c, timestep=ones, target_timestep=torch.zeros(1)).sample
    expected = tiny_pipeline.decode_latents(c - u).clamp(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    two = _run(tiny_pipeline, image, start="lq", num_inference_steps=2, output_type="pt").images
    assert (two - out).abs().max() > 1e-3
    tiny_pipeline.register_to_config(default_start="lq")
    try:
        torch.testing.assert_close(_run(tiny_pipeline, image, seed=5, output_type="pt").images, out)
        _run(tiny_pipeline, image, start="noise", start_timestep=0.5)  # the noise start stays available
    finally:
        tiny_pipeline.register_to_config(default_start=None)


def test_supported_starts_default_and_refuse_the_untrained_start(tiny_pipeline, tmp_path):
    """A model trained on the LQ bridge only (`supported_starts=["lq"]`) starts there by default and refuses noise."""
    image = random_photo(8, 8)
    assert tiny_pipeline.supported_starts == ("noise", "lq")  # unset: both, as in every older folder
    tiny_pipeline.register_to_config(supported_starts=["lq"])
    try:
        tiny_pipeline.save_pretrained(tmp_path / "lq_only")
        assert tiny_pipeline.resolve_start(None, None) == ("lq", 1.0)
        with pytest.raises(ValueError, match="trained for start='lq' only"):
            _run(tiny_pipeline, image, start="noise")
        lq = _run(tiny_pipeline, image, start="lq", output_type="pt").images
        torch.testing.assert_close(_run(tiny_pipeline, image, output_type="pt").images, lq)
    finally:
        tiny_pipeline.register_to_config(supported_starts=None)
    assert TEASRPipeline.from_pretrained(tmp_path / "lq_only").supported_starts == ("lq",)


def test_tiled_equals_untiled_when_one_tile_covers(tiny_pipeline):
    image = random_photo(10, 14)
    whole = _run(tiny_pipeline, image, num_inference_steps=2, tile_size=0, output_type="np").images
    tiled = _run(tiny_pipeline, image, num_inference_steps=2, tile_size=64, output_type="np").images
    np.testing.assert_allclose(whole, tiled, atol=1e-6)


def test_tiles_leave_no_seams_on_a_smooth_gradient(tiny_pipeline):
    ramp = np.linspace(0, 1, 48, dtype=np.float32)
    gradient = np.stack([np.tile(ramp, (32, 1))] * 3, axis=-1)
    out = _run(
        tiny_pipeline, gradient, upscale=2.0, tile_size=32, tile_overlap=16, start_timestep=0.05, output_type="np"
    ).images[0]
    # Column-to-column change stays smooth: no jump at tile borders far above the typical step.
    column_means = out.mean(axis=(0, 2))
    jumps = np.abs(np.diff(column_means))
    assert jumps.max() < 4 * np.median(jumps) + 0.01


def test_tile_count_sets_nfe(tiny_pipeline):
    out = _run(
        tiny_pipeline, random_photo(16, 16), num_inference_steps=2, tile_size=32, tile_overlap=8, tile_batch_size=1
    )
    assert out.images[0].size == (64, 64)
    assert out.nfe == 2 * 9  # 3 x 3 tiles of 32 px with 8 px overlap over 64 px, two steps


def test_default_tile_overlap_is_used_saved_and_overridden(tiny_pipeline, tmp_path):
    image = random_photo(16, 16)
    tiny_pipeline.register_to_config(default_tile_size=32, default_tile_overlap=0)
    try:
        assert tiny_pipeline.resolve_tiling(None, None, 1) == (32, 0)
        assert tiny_pipeline.resolve_tiling(None, None, 4) == (32, 0)  # a configured overlap holds at every step count
        assert _run(tiny_pipeline, image, tile_batch_size=1).nfe == 4  # 2 x 2 tiles without overlap
        assert _run(tiny_pipeline, image, tile_overlap=8, tile_batch_size=1).nfe == 9
        tiny_pipeline.save_pretrained(tmp_path / "overlap0")
    finally:
        tiny_pipeline.register_to_config(default_tile_size=None, default_tile_overlap=None)
    loaded = TEASRPipeline.from_pretrained(tmp_path / "overlap0")
    assert loaded.resolve_tiling(None, None, 1) == (32, 0)


def test_unconfigured_overlap_is_an_eighth_tile_at_one_step_and_a_quarter_with_more(tiny_pipeline):
    assert tiny_pipeline.resolve_tiling(64, None, 1) == (64, 8)
    assert tiny_pipeline.resolve_tiling(64, None, 2) == (64, 16)
    assert tiny_pipeline.resolve_tiling(64, 4, 2) == (64, 4)  # a call's own overlap always wins
    # 16-px tiles over a 128-px output: stride 14 -> 9 x 9 tiles at 1 step, stride 12 -> 11 x 11 at 2 steps.
    image = random_photo(32, 32)
    assert _run(tiny_pipeline, image, tile_size=16, tile_batch_size=1).nfe == 81
    assert _run(tiny_pipeline, image, num_inference_steps=2, tile_size=16, tile_batch_size=1).nfe == 2 * 121


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16", "LA"])
def test_modes_are_kept(tiny_pipeline, mode):
    image = random_photo(9, 11, mode=mode)
    out = _run(tiny_pipeline, image).images[0]
    assert out.mode == mode
    assert out.size == (44, 36)


@pytest.mark.parametrize("mode", ["YCbCr", "HSV"])
def test_other_colour_spaces_come_back_as_rgb(tiny_pipeline, mode):
    photo = random_photo(9, 11)
    out = _run(tiny_pipeline, photo.convert(mode)).images[0]
    assert out.mode == "RGB"
    reference = _run(tiny_pipeline, photo.convert(mode).convert("RGB")).images[0]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference))


@pytest.mark.parametrize("output_type", ["np", "pt"])
def test_array_outputs_carry_the_inputs_alpha_as_a_fourth_channel(tiny_pipeline, output_type):
    rgba = random_photo(10, 10, mode="RGBA")
    pil = _run(tiny_pipeline, rgba).images[0]
    out = _run(tiny_pipeline, rgba, output_type=output_type).images[0]
    channels_last = out if output_type == "np" else out.permute(1, 2, 0).numpy()
    assert channels_last.shape == (40, 40, 4)
    np.testing.assert_allclose(channels_last[..., 3] * 255, np.asarray(pil)[..., 3], atol=0.51)
    rgb = _run(tiny_pipeline, rgba.convert("RGB"), output_type=output_type).images[0]
    assert rgb.shape == ((40, 40, 3) if output_type == "np" else (3, 40, 40))


def test_palette_and_bilevel_inputs_come_back_in_full_tone(tiny_pipeline):
    # Re-quantising the upscale to the palette's colours (or dithering it to black and white) would throw away the
    # in-between tones the upscale made; a transparent palette image keeps its transparency as RGBA.
    palette = random_photo(9, 11).quantize(16)
    out = _run(tiny_pipeline, palette).images[0]
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_run(tiny_pipeline, palette.convert("RGB")).images[0]))
    assert len(np.unique(np.asarray(out).reshape(-1, 3), axis=0)) > 256  # more tones than any palette holds
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    assert _run(tiny_pipeline, transparent).images[0].mode == "RGBA"
    assert _run(tiny_pipeline, palette.convert("1")).images[0].mode == "L"


@pytest.mark.parametrize(
    "mode, space, kept",
    [("RGB", "RGB", True), ("RGBA", "RGB", True), ("P", "RGB", True), ("L", "GRAY", True), ("L", "RGB", False),
     ("RGB", "CMYK", False)],
)  # fmt: skip
def test_the_input_icc_profile_is_carried_where_it_fits_the_output(tiny_pipeline, mode, space, kept):
    # The model keeps pixel values in the input's colour space (a Display P3 photo stays P3), so the output needs the
    # input's profile to display right; a profile of another colour space would be wrong and is dropped.
    image = random_photo(9, 11, mode=mode)
    image.info["icc_profile"] = icc_profile(space)
    out = _run(tiny_pipeline, image).images[0]
    assert out.info.get("icc_profile") == (icc_profile(space) if kept else None)


def test_array_inputs_give_outputs_without_a_profile(tiny_pipeline):
    assert "icc_profile" not in _run(tiny_pipeline, np.asarray(random_photo(9, 11))).images[0].info


def test_alpha_is_upscaled_separately(tiny_pipeline):
    image = random_photo(10, 10, mode="RGBA")
    out = _run(tiny_pipeline, image).images[0]
    alpha_in = np.asarray(image)[..., 3].astype(float)
    alpha_out = np.asarray(out)[..., 3].astype(float)
    assert abs(alpha_out.mean() - alpha_in.mean()) < 3
    assert alpha_out[:, :8].mean() < alpha_out[:, -8:].mean()


def test_array_and_tensor_inputs_match_pil(tiny_pipeline):
    image = random_photo(8, 8)
    from_pil = _run(tiny_pipeline, image, output_type="np").images
    from_np = _run(tiny_pipeline, np.asarray(image), output_type="np").images
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    from_pt = _run(tiny_pipeline, tensor, output_type="np").images
    np.testing.assert_allclose(from_pil, from_np, atol=1e-6)
    np.testing.assert_allclose(from_pil, from_pt, atol=1e-6)


def test_list_of_images_of_different_sizes(tiny_pipeline):
    out = _run(tiny_pipeline, [random_photo(8, 8), random_photo(6, 10)])
    assert [im.size for im in out.images] == [(32, 32), (40, 24)]


def test_callback_sees_each_step(tiny_pipeline):
    seen = []

    def callback(pipe, step, t, kwargs):
        seen.append((step, round(t, 3), tuple(kwargs["latents"].shape), pipe.num_timesteps))
        return {}

    _run(tiny_pipeline, random_photo(8, 8), num_inference_steps=4, callback_on_step_end=callback)
    assert [s[:2] for s in seen] == [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25)]
    assert {s[3] for s in seen} == {4}  # diffusers' PipelineCallback reads the step count here


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(upscale=0), "upscale"),
        (dict(upscale=-2.0), "upscale"),
        (dict(start_timestep=0.0), "start_timestep"),
        (dict(start_timestep=1.5), "start_timestep"),
        (dict(upscale=64.0, max_output_pixels=10_000), "max_output_pixels"),
        (dict(max_output_pixels=1e6), r"`max_output_pixels` must be a positive integer, got 1000000.0"),
        (dict(latents=torch.randn(1, 3, 5, 5)), "latents"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(color_fix="magic"), "color_fix"),
        (dict(tile_size=1), "tile_size"),
        (dict(tile_size=16, tile_overlap=9), r"at most half the tile \(8 px for 16-px tiles\), got 9"),
        (dict(start="image"), "start"),
        (dict(upscale=True), "upscale"),
        (dict(tile_batch_size=1.5), "tile_batch_size"),
        (dict(tile_batch_size=None), "tile_batch_size"),
        (dict(generator=0), "generator"),
        (dict(generator=(torch.Generator(),)), "generator"),
        (dict(start="lq", latents=torch.randn(1, 3, 32, 32)), r"start='lq' starts from the LQ image"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(tiny_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipeline(random_photo(8, 8), **kwargs)


def test_zero_size_and_wrong_types_rejected(tiny_pipeline):
    with pytest.raises(ValueError, match="zero size"):
        tiny_pipeline(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="image"):
        tiny_pipeline("not an image")
    with pytest.raises(ValueError, match="NaN"):
        tiny_pipeline(np.full((4, 4, 3), np.nan, dtype=np.float32))
    # A tensor in an array's layout (HxWxC) or the reverse: the error names the layout expected.
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels \(tensors are CxHxW\), got 6"):
        tiny_pipeline(torch.zeros(6, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels \(arrays are HxWxC\), got 8"):
        tiny_pipeline(np.zeros((3, 6, 8), dtype=np.uint8))


def test_float_images_outside_0_1_are_refused_and_a_slight_overshoot_is_clipped(tiny_pipeline):
    """0-255 floats would come out white and [-1, 1] tensors half black: both are a wrong image, so refused."""
    photo = np.asarray(random_photo(8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\], got .*: divide 0-255 data by 255"):
        tiny_pipeline(photo)
    with pytest.raises(ValueError, match=r"map \[-1, 1\] data with \(x \+ 1\) / 2"):
        tiny_pipeline(torch.from_numpy(photo / 127.5 - 1).permute(2, 0, 1))
    overshoot = np.clip(photo / 255 * 1.1 - 0.05, -0.05, 1.05)  # as a sharpening step might leave it
    clipped = np.clip(overshoot, 0, 1)
    results = [tiny_pipeline(image, start="lq", output_type="np").images[0] for image in (overshoot, clipped)]
    np.testing.assert_array_equal(results[0], results[1])


def test_numpy_scalars_count_as_the_numbers_they_hold(tiny_pipeline):
    image = random_photo(8, 8)
    plain = _run(tiny_pipeline, image, num_inference_steps=2, upscale=2.0, tile_size=16, output_type="np").images
    numpy = _run(
        tiny_pipeline, image, num_inference_steps=np.int64(2), upscale=np.float32(2.0), tile_size=np.int64(16),
        tile_batch_size=np.int32(2), output_type="np",
    ).images  # fmt: skip
    np.testing.assert_array_equal(plain, numpy)


def test_pil_modes_without_a_fixed_range_are_refused_or_range_checked(tiny_pipeline):
    """Mode "I" holds 32-bit integers of no fixed range (8- or 16-bit data?), "F" floats: a guess would give a
    silently wrong image, so "I" is refused with the conversion to use and "F" must lie in [0, 1] like float arrays."""
    gray = random_photo(8, 8, mode="L")
    with pytest.raises(ValueError, match=r"convert 16-bit data with image.convert\('I;16'\)"):
        tiny_pipeline(gray.convert("I"))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 1\]"):
        tiny_pipeline(gray.convert("F"))
    scaled = PIL.Image.fromarray(np.asarray(gray, dtype=np.float32) / 255.0)
    out = _run(tiny_pipeline, scaled, start="lq").images[0]
    reference = _run(tiny_pipeline, gray, start="lq").images[0]
    assert out.mode == "F"
    assert np.abs(np.asarray(out) * 255.0 - np.asarray(reference, dtype=np.float32)).max() <= 1.0


def test_premultiplied_la_is_upscaled_like_la(tiny_pipeline):
    image = random_photo(8, 8, mode="LA")
    premultiplied = _run(tiny_pipeline, image.convert("La"), start="lq").images[0]
    straight = _run(tiny_pipeline, image, start="lq").images[0]
    assert premultiplied.mode == "LA" and premultiplied.size == straight.size
    visible = np.asarray(straight)[..., 1] > 64  # where alpha is small, premultiplying lost the luminance's bits
    difference = np.abs(np.asarray(premultiplied, dtype=int) - np.asarray(straight, dtype=int))
    assert difference[..., 1].max() <= 1 and difference[..., 0][visible].max() <= 8


def test_uint8_tensors_are_read_as_0_255(tiny_pipeline):
    image = random_photo(8, 8)
    as_uint8 = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    np.testing.assert_allclose(
        _run(tiny_pipeline, as_uint8, output_type="np").images,
        _run(tiny_pipeline, image, output_type="np").images,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="float .* or uint8, got torch.int64"):
        tiny_pipeline(as_uint8.long())


def test_exif_orientation_is_applied_to_pil_inputs(tiny_pipeline):
    """A phone photo stored sideways with an Orientation tag is upscaled as a viewer shows it (as the CLI does)."""
    stored = random_photo(6, 10)  # 10 wide, 6 high as stored
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    tagged = PIL.Image.open(_saved(stored, exif))
    upright = PIL.ImageOps.exif_transpose(tagged)
    out = _run(tiny_pipeline, tagged, start="lq").images[0]
    assert out.size == (24, 40)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_run(tiny_pipeline, upright, start="lq").images[0]))


def _saved(image, exif):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return buffer


def test_outputs_of_different_sizes_come_back_one_array_per_image(tiny_pipeline):
    images = [random_photo(8, 8), random_photo(6, 10)]
    as_np = _run(tiny_pipeline, images, output_type="np").images
    as_pt = _run(tiny_pipeline, images, output_type="pt").images
    assert [a.shape for a in as_np] == [(32, 32, 3), (24, 40, 3)]
    assert [tuple(t.shape) for t in as_pt] == [(3, 32, 32), (3, 24, 40)]


def test_from_pipe_carries_the_transformer_and_settings(tiny_pipeline):
    tiny_pipeline.register_to_config(default_start="lq")
    try:
        copy = TEASRPipeline.from_pipe(tiny_pipeline)
    finally:
        tiny_pipeline.register_to_config(default_start=None)
    assert copy.transformer is tiny_pipeline.transformer and copy.config.default_start == "lq"


def test_from_pretrained_takes_diffusers_loading_arguments(tiny_pipeline_dir, tmp_path):
    loaded = TEASRPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.bfloat16, low_cpu_mem_usage=True)
    assert loaded.transformer.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="disagree"):
        TEASRPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.bfloat16, torch_dtype=torch.float16)
    with pytest.raises(ValueError, match="safetensors weights only"):
        TEASRPipeline.from_pretrained(tiny_pipeline_dir, use_safetensors=False)
    loaded.save_pretrained(tmp_path / "variant", variant="bf16")
    from_variant = TEASRPipeline.from_pretrained(tmp_path / "variant", variant="bf16").transformer
    for name, weight in loaded.transformer.state_dict().items():
        torch.testing.assert_close(from_variant.state_dict()[name].to(torch.bfloat16), weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"model folder not found: {tmp_path / 'missing'}"):
        TEASRPipeline.from_pretrained(tmp_path / "missing")


def test_save_and_load_with_teasr_pipeline(tiny_pipeline, tiny_pipeline_dir):
    loaded = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    loaded.set_progress_bar_config(disable=True)
    image = random_photo(9, 9)
    expected = _run(tiny_pipeline, image, num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(
        _run(loaded, image, num_inference_steps=2, output_type="np").images, expected, atol=1e-5
    )
    assert not any(
        name.endswith((".bin", ".pt", ".pth")) for _, _, files in os.walk(tiny_pipeline_dir) for name in files
    )


def test_diffusion_pipeline_loads_with_remote_code_without_the_package(tiny_pipeline, tiny_pipeline_dir, tmp_path):
    image = random_photo(9, 9)
    expected = _run(tiny_pipeline, image, num_inference_steps=2, output_type="np").images
    np.save(tmp_path / "input.npy", np.asarray(image))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pipeline_teasr"] = None  # make the installed library unimportable
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({tiny_pipeline_dir!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("diffusers_modules"), type(pipe).__module__
        pipe.set_progress_bar_config(disable=True)
        image = np.load({str(tmp_path / "input.npy")!r})
        out = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        np.save({str(tmp_path / "out.npy")!r}, out.images)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def test_missing_component_and_corrupt_weights_give_clear_errors(tiny_pipeline, tmp_path):
    folder = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="transformer"):
        TEASRPipeline.from_pretrained(folder)
    folder = tmp_path / "pipe2"
    tiny_pipeline.save_pretrained(folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(ValueError, match="scheduler"):
        TEASRPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="model_index"):
        TEASRPipeline.from_pretrained(tmp_path)


def test_offload_helpers_keep_working(tiny_pipeline_dir):
    pipe = TEASRPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.to("cpu")
    out = _run(pipe, PIL.Image.new("RGB", (8, 8), (120, 60, 30)))
    assert out.images[0].size == (32, 32)


def test_one_pipeline_serves_concurrent_threads(tiny_pipeline):
    from concurrent.futures import ThreadPoolExecutor

    image = random_photo(8, 8)
    settings = [1, 4, 2, 8]
    alone = [_run(tiny_pipeline, image, num_inference_steps=k, output_type="np").images for k in settings]
    with ThreadPoolExecutor(4) as pool:
        together = list(
            pool.map(lambda k: _run(tiny_pipeline, image, num_inference_steps=k, output_type="np").images, settings)
        )
    for expected, got in zip(alone, together):
        np.testing.assert_allclose(got, expected, atol=1e-5)
