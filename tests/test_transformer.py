"""TEASRTransformer2DModel: shapes, decoupled timestep, Qwen-Image-Edit equivalence, loading Qwen folders."""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from pipeline_teasr import TEASRTransformer2DModel
from pipeline_teasr.transformer_teasr import pack_latents, unpack_latents

QWEN_TINY = dict(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    axes_dims_rope=(4, 6, 6),
)


def _inputs(batch=2, channels=4, height=8, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, channels, height, width, generator=generator)
    c = torch.randn(batch, channels, height, width, generator=generator)
    return z, c


def test_pack_unpack_round_trip():
    x = torch.randn(2, 3, 8, 12)
    tokens = pack_latents(x, 2)
    assert tokens.shape == (2, 24, 12)
    assert torch.equal(unpack_latents(tokens, 8, 12, 2), x)


def test_output_shape_pixel_space_and_odd_grid():
    model = TEASRTransformer2DModel(**{**QWEN_TINY, "in_channels": 12, "out_channels": 3}).eval()
    z, c = _inputs(channels=3, height=6, width=10)
    with torch.no_grad():
        out = model(z, c, timestep=0.5, target_timestep=0.0).sample
    assert out.shape == z.shape
    assert torch.isfinite(out).all()


def test_qwen_image_edit_equivalence_at_s_zero(tmp_path):
    torch.manual_seed(0)
    qwen = QwenImageTransformer2DModel(**QWEN_TINY, zero_cond_t=True).eval()
    qwen.save_pretrained(tmp_path)
    teasr = TEASRTransformer2DModel.from_pretrained(tmp_path).eval()
    assert not teasr.null_prompt_embeds.is_meta

    z, c = _inputs()
    text = torch.randn(2, 5, 24)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    t = torch.tensor([0.8, 0.35])
    with torch.no_grad():
        ours = teasr(z, c, t, 0.0, encoder_hidden_states=text, encoder_hidden_states_mask=mask).sample
        tokens = torch.cat([pack_latents(z, 2), pack_latents(c, 2)], dim=1)
        theirs = qwen(
            tokens,
            encoder_hidden_states=text,
            encoder_hidden_states_mask=mask,
            timestep=t,
            img_shapes=[[(1, 4, 6), (1, 4, 6)]] * 2,
        ).sample
    torch.testing.assert_close(pack_latents(ours, 2), theirs[:, :24], rtol=0, atol=1e-6)


def test_loading_qwen_folder_uses_every_tensor_and_documents_null_prompt(tmp_path):
    torch.manual_seed(1)
    qwen = QwenImageTransformer2DModel(**QWEN_TINY)
    qwen.save_pretrained(tmp_path)
    teasr, info = TEASRTransformer2DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == []
    assert info["missing_keys"] == ["null_prompt_embeds"]
    reference = TEASRTransformer2DModel(**QWEN_TINY)
    torch.testing.assert_close(teasr.null_prompt_embeds, reference.null_prompt_embeds)
    for name, tensor in qwen.state_dict().items():
        assert torch.equal(teasr.state_dict()[name], tensor), name


def test_target_timestep_changes_output_and_none_means_t():
    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY).eval()
    z, c = _inputs()
    with torch.no_grad():
        flow = model(z, c, 0.7).sample
        same = model(z, c, 0.7, 0.7).sample
        jump = model(z, c, 0.7, 0.0).sample
    torch.testing.assert_close(flow, same)
    assert (flow - jump).abs().max() > 1e-4


def test_coupled_ablation_ignores_target_timestep():
    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY, decoupled_timestep=False).eval()
    z, c = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(z, c, 0.7, 0.0).sample, model(z, c, 0.7, 0.7).sample)


def test_block_hidden_states_for_the_critic():
    model = TEASRTransformer2DModel(**QWEN_TINY).eval()
    z, c = _inputs()
    out = model(z, c, 0.5, output_hidden_states_at=(1, 0))
    assert len(out.block_hidden_states) == 2
    assert out.block_hidden_states[0].shape == (2, 24, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(hidden_states=torch.randn(1, 4, 7, 8), lq_hidden_states=torch.randn(1, 4, 7, 8), timestep=0.5),
            "multiples",
        ),
        (
            dict(hidden_states=torch.randn(1, 4, 8, 8), lq_hidden_states=torch.randn(1, 4, 4, 8), timestep=0.5),
            "lq_hidden",
        ),
        (
            dict(hidden_states=torch.randn(1, 3, 8, 8), lq_hidden_states=torch.randn(1, 3, 8, 8), timestep=0.5),
            "hidden_states",
        ),
        (
            dict(hidden_states=torch.randn(1, 4, 8, 8), lq_hidden_states=torch.randn(1, 4, 8, 8), timestep=1.5),
            "timestep",
        ),
        (
            dict(
                hidden_states=torch.randn(2, 4, 8, 8), lq_hidden_states=torch.randn(2, 4, 8, 8), timestep=torch.ones(3)
            ),
            "timestep",
        ),
    ],
)
def test_bad_shapes_raise_value_error(kwargs, match):
    model = TEASRTransformer2DModel(**QWEN_TINY)
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_config_must_pack_channels():
    with pytest.raises(ValueError, match="in_channels"):
        TEASRTransformer2DModel(**{**QWEN_TINY, "in_channels": 10})


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY)
    z, c = _inputs()
    loss = model(z, c, 0.5, 0.1).sample.square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(z, c, 0.5, 0.1).sample.square().mean().backward()
    for expected, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


def test_lq_skip_starts_at_zero_survives_save_and_reads_the_lq_token(tmp_path):
    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY).eval()
    z, c = _inputs()
    before = model(z, c, timestep=0.5, target_timestep=0.2).sample
    model.enable_lq_skip()
    assert model.config.lq_skip
    torch.testing.assert_close(model(z, c, timestep=0.5, target_timestep=0.2).sample, before, rtol=0, atol=0)

    torch.nn.init.normal_(model.lq_skip_in.weight)
    trained = model(z, c, timestep=0.5, target_timestep=0.2).sample
    assert not torch.allclose(trained, before)
    model.save_pretrained(tmp_path)
    loaded = TEASRTransformer2DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.lq_skip
    torch.testing.assert_close(loaded(z, c, timestep=0.5, target_timestep=0.2).sample, trained)
    # The skip carries the LQ token at the SAME position: changing one LQ patch moves that noisy token first.
    model.lq_skip_in.weight.data.mul_(100.0)
    c_moved = c.clone()
    c_moved[:, :, :2, :2] += 1.0
    with torch.no_grad():
        reference = model(z, c, timestep=0.5, target_timestep=0.2).sample
        delta = (model(z, c_moved, timestep=0.5, target_timestep=0.2).sample - reference).abs()
    assert delta[:, :, :2, :2].mean() > 2 * delta[:, :, 2:, 2:].mean()


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_conv_path_starts_at_zero_survives_save_and_is_local(tmp_path):
    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY).eval()
    z, c = _inputs(height=16, width=16)
    before = model(z, c, timestep=0.5, target_timestep=0.2).sample
    model.enable_conv_path(8, 2)
    assert (model.config.conv_channels, model.config.conv_blocks) == (8, 2)
    torch.testing.assert_close(model(z, c, timestep=0.5, target_timestep=0.2).sample, before, rtol=0, atol=0)

    _randomise(model.conv_path)
    trained = model(z, c, timestep=0.5, target_timestep=0.2).sample
    assert not torch.allclose(trained, before)
    # Modulated by both timesteps: the decoupled target s changes the conv path's contribution.
    assert not torch.allclose(model(z, c, timestep=0.5, target_timestep=0.0).sample, trained)
    model.save_pretrained(tmp_path)
    loaded = TEASRTransformer2DModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.conv_channels, loaded.config.conv_blocks) == (8, 2)
    torch.testing.assert_close(loaded(z, c, timestep=0.5, target_timestep=0.2).sample, trained)

    # The refinement of the output patches is convolutional: with attention and the token update cut off, an LQ
    # change in one corner reaches only the neighbouring patches (receptive field of the 3x3 convolutions).
    with torch.no_grad():
        model.conv_path.to_tokens.weight.zero_()
        for block in model.transformer_blocks:
            block.img_mod[1].weight.zero_()
            block.img_mod[1].bias.zero_()
        c_moved = c.clone()
        c_moved[:, :, :2, :2] += 1.0
        delta = (model(z, c_moved, 0.5, 0.2).sample - model(z, c, 0.5, 0.2).sample).abs()
    assert delta[:, :, :2, :2].sum() > 0
    # 1 + 2 * 2 + 1 = 6 convolutions of radius 1 on the token grid, 2 pixels per token.
    assert delta[:, :, 14:, 14:].abs().sum() == 0


def test_conv_path_config_errors_are_clear():
    with pytest.raises(ValueError, match="blocks need channels"):
        TEASRTransformer2DModel(**QWEN_TINY, conv_blocks=2)
    model = TEASRTransformer2DModel(**QWEN_TINY, conv_channels=8, conv_blocks=1)
    with pytest.raises(ValueError, match="already has a conv path"):
        model.enable_conv_path(16, 1)
    model.enable_conv_path(8, 1)  # the same shape again is a no-op


def test_diffusers_attention_api_and_layerwise_casting():
    """What diffusers users do with Qwen-Image's transformer works here too: list and swap attention processors,
    and store the weights in float8 with layerwise casting (a memory saver for large models)."""
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    torch.manual_seed(0)
    model = TEASRTransformer2DModel(**QWEN_TINY).eval()
    z, c = _inputs()
    with torch.no_grad():
        expected = model(z, c, 0.5, 0.1).sample
        processors = model.attn_processors
        assert len(processors) == QWEN_TINY["num_layers"]
        model.set_attn_processor(QwenDoubleStreamAttnProcessor2_0())
        torch.testing.assert_close(model(z, c, 0.5, 0.1).sample, expected)
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        assert model.img_in.weight.dtype == torch.float8_e4m3fn
        cast = model(z, c, 0.5, 0.1).sample
    assert cast.dtype == torch.float32
    assert 0 < (cast - expected).abs().max() < 0.1 * expected.abs().max()  # float8 weights: close, not equal
