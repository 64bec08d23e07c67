"""Unit tests of the TEASR training losses, timestep sampling and critic gradient routing (CPU, tiny model)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

from pipeline_teasr import TEASRTransformer2DModel, TEASRTransformerOutput
from pipeline_teasr.distillation import (
    CHECKPOINT_MARKER,
    DistillationConfig,
    NonFiniteGuard,
    flow_matching_losses,
    latest_checkpoint,
    load_training_pipeline,
    parse_critic_blocks,
    sample_critic_timesteps,
    sample_generator_timesteps,
    self_adversarial_losses,
)
from pipeline_teasr.losses import (
    CriticHeads,
    call_with_frozen_parameters,
    consistency_loss,
    critic_hinge_loss,
    default_critic_blocks,
    flow_map_step,
    flow_matching_loss,
    generator_adversarial_loss,
    gradient_loss,
    interpolate,
    jump_weight,
    patch_grid_loss,
    reconstruction_loss,
    renoise,
    shift_within_patch,
    spectral_loss,
)

from .conftest import TINY_PIXEL_CONFIG

LOSS_TERMS = ("flow", "rec", "gradient", "spectral", "grid", "adv", "critic", "consistency")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run far faster on one thread, above all on a shared machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_transformer(seed: int = 0, **config) -> TEASRTransformer2DModel:
    torch.manual_seed(seed)
    model = TEASRTransformer2DModel(**{**TINY_PIXEL_CONFIG, **config})
    with torch.no_grad():
        model.proj_out.weight.mul_(20.0)  # visible outputs from the random init (as in conftest)
    return model


def tiny_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    c = (z0 + 0.3 * torch.randn(z0.shape, generator=g)).clamp(-1, 1)
    return z0, c


def random_heads(model: TEASRTransformer2DModel, seed: int = 1, kernel_size: int = 1) -> CriticHeads:
    heads = CriticHeads(model.inner_dim, default_critic_blocks(len(model.transformer_blocks)), kernel_size)
    torch.manual_seed(seed)
    for head in heads.heads:
        nn.init.normal_(head[-1].weight, std=0.5)
    return heads


class DetachedOutput(nn.Module):
    """Wraps the backbone like DDP does (`.module`) but cuts the gradient path through the generator's output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs) -> TEASRTransformerOutput:
        return TEASRTransformerOutput(sample=self.module(*args, **kwargs).sample.detach())


# ---------------------------------------------------------------------------------------------------- path algebra


def test_exact_velocity_carries_the_path_exactly():
    z0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t, s = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.0, 0.2, 0.1])
    z_t = interpolate(z0, eps, t)
    torch.testing.assert_close(flow_map_step(z_t, eps - z0, t, s), interpolate(z0, eps, s))
    assert flow_matching_loss(eps - z0, z0, eps) == 0
    assert flow_matching_loss(eps - z0 + 1.0, z0, eps) == pytest.approx(1.0)


def test_renoise_reaches_the_marginal_of_the_higher_level():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    z0 = torch.full((n, 1), 0.5)
    s, tau = torch.full((n,), 0.3), torch.full((n,), 0.8)
    z_s = interpolate(z0, torch.randn(n, 1, generator=g), s)
    z_tau = renoise(z_s, s, tau, torch.randn(n, 1, generator=g))
    assert z_tau.mean().item() == pytest.approx((1 - 0.8) * 0.5, abs=0.01)
    assert z_tau.std().item() == pytest.approx(0.8, abs=0.01)
    # From s = 0 it is plain interpolation with the given noise.
    noise = torch.randn(4, 1)
    torch.testing.assert_close(renoise(z0[:4], torch.zeros(4), tau[:4], noise), interpolate(z0[:4], noise, tau[:4]))


def test_weighted_losses_and_jump_weight():
    pred, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    pred[1] = 1.0
    assert reconstruction_loss(pred, target) == pytest.approx(0.5)
    assert reconstruction_loss(pred, target, torch.tensor([0.5, 7.0])) == pytest.approx(0.25)
    assert reconstruction_loss(pred - 1, target, kind="l1") == pytest.approx(1.5)
    with pytest.raises(ValueError):
        reconstruction_loss(pred, target, kind="huber")
    t, s = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.25])
    torch.testing.assert_close(jump_weight(t, s), torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(jump_weight(t, s, rectification=False), torch.ones(2))
    target_u = torch.randn(2, 3)
    assert consistency_loss(target_u, target_u) == 0


def test_gradient_loss_weighs_edges_and_the_patch_grid_not_offsets():
    edge = torch.zeros(2, 3, 16, 16)
    edge[..., 8:] = 1.0
    blurred = edge.clone()
    blurred[..., 7:9] = 0.5
    assert gradient_loss(edge, edge) == 0
    assert gradient_loss(edge + 0.3, edge) == pytest.approx(0.0, abs=1e-7)  # a flat error is L1's business
    assert gradient_loss(blurred, edge) > 0
    grid = edge.clone()
    grid[..., ::4, ::4] += 0.1  # a pattern on a 4-px token grid
    assert gradient_loss(grid, edge) > gradient_loss(edge + 0.1, edge)
    mixed = torch.cat([blurred[:1], grid[1:]])
    per_row = torch.stack([gradient_loss(blurred[:1], edge[:1]), gradient_loss(grid[1:], edge[1:])])
    weight = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(gradient_loss(mixed, edge, weight), (weight * per_row).mean())
    with pytest.raises(ValueError, match="lambda_gradient"):
        DistillationConfig(lambda_gradient=-1.0)


def test_spectral_loss_asks_for_detail_energy_wherever_it_is_drawn():
    generator = torch.Generator().manual_seed(0)
    texture = torch.rand(2, 3, 16, 16, generator=generator)
    shifted = torch.roll(texture, shifts=(3, 5), dims=(-2, -1))  # the same detail, drawn elsewhere
    blurred = (
        texture + torch.roll(texture, 1, -1) + torch.roll(texture, 1, -2) + torch.roll(texture, (1, 1), (-2, -1))
    ) / 4
    assert spectral_loss(texture, texture) == 0
    assert spectral_loss(shifted, texture) == pytest.approx(0.0, abs=1e-5)
    assert reconstruction_loss(shifted, texture, kind="l1") > reconstruction_loss(blurred, texture, kind="l1")
    assert spectral_loss(blurred, texture) > 0.01  # the blur a pixel loss prefers costs here
    smooth = texture.mean(dim=(-2, -1), keepdim=True).expand_as(texture).clone()
    grid = smooth.clone()
    grid[..., ::4, ::4] += 0.2  # a pattern on a 4-px token grid, absent from the target
    assert spectral_loss(grid, smooth) > spectral_loss(smooth + 0.2 / 16, smooth)
    weight = torch.tensor([2.0, 0.5])
    per_row = torch.stack([spectral_loss(blurred[:1], texture[:1]), spectral_loss(blurred[1:], texture[1:])])
    torch.testing.assert_close(spectral_loss(blurred, texture, weight), (weight * per_row).mean())
    with pytest.raises(ValueError, match="lambda_spectral"):
        DistillationConfig(lambda_spectral=-1.0)


def test_grid_loss_scores_the_error_that_repeats_in_every_patch_and_nothing_else():
    """A pattern repeated in every 4-px patch costs its (zero-mean) amplitude; a colour shift costs nothing, and
    error that does not follow the grid (noise, misplaced detail) averages out to far less."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 128, 128)
    pattern = torch.zeros(4, 4)
    pattern[0, 0], pattern[2, 3] = 0.16, -0.16
    tiled = pattern.repeat(32, 32)
    assert patch_grid_loss(target + tiled, target, patch_size=4).item() == pytest.approx(0.02, rel=1e-4)
    assert patch_grid_loss(target + 0.3, target, patch_size=4) < 1e-6
    noise = 0.16 * torch.randn_like(target)  # as strong per pixel as the pattern's peaks, everywhere
    assert patch_grid_loss(target + noise, target, patch_size=4) < 0.25 * 0.02
    assert patch_grid_loss(target + noise + tiled, target, patch_size=4) > 2 * patch_grid_loss(
        target + noise, target, patch_size=4
    )
    weight = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(
        patch_grid_loss(target + tiled, target, 4, weight), patch_grid_loss(target[:1] + tiled, target[:1], 4)
    )
    with pytest.raises(ValueError, match="divisible by patch_size 4"):
        patch_grid_loss(target[..., :30], target[..., :30], patch_size=4)
    with pytest.raises(ValueError, match="lambda_grid"):
        DistillationConfig(lambda_grid=-1.0)


def test_spectral_term_scores_the_lq_bridge_rows_clean_images():
    """With every row on the bridge, L_spec is the spectral loss of `z_t - t u` (= c - u at t = 1) against z0."""
    model = tiny_transformer()
    z0, c = tiny_batch()
    config = DistillationConfig(
        reconstruction_only=True,
        lambda_flow=0.0,
        lq_bridge_prob=1.0,
        lq_bridge_start_prob=1.0,
        anystep_prob=0.0,
        lambda_spectral=1.0,
    )
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ones = torch.ones(z0.shape[0])
        u = model(c, c, timestep=ones, target_timestep=torch.zeros_like(ones)).sample
    torch.testing.assert_close(losses["spectral"], spectral_loss(c - u, z0), rtol=1e-4, atol=1e-6)
    off = DistillationConfig(reconstruction_only=True, lambda_flow=0.0, lambda_spectral=1.0)  # no bridge rows
    assert self_adversarial_losses(model, z0, c, off, torch.Generator().manual_seed(0))["spectral"] == 0


def test_hinge_and_generator_terms():
    assert critic_hinge_loss(torch.full((2, 5), 2.0), torch.full((2, 5), -2.0)) == 0
    assert critic_hinge_loss(torch.zeros(2, 5), torch.zeros(2, 5)) == pytest.approx(2.0)
    logits = torch.tensor([[1.0, 3.0], [-2.0, 0.0]])
    assert generator_adversarial_loss(logits) == pytest.approx(-0.5)
    assert generator_adversarial_loss(logits, torch.tensor([1.0, 0.0])) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------------- critic heads


def test_critic_heads_shapes_blocks_and_roundtrip(tmp_path):
    assert default_critic_blocks(2) == (0, 1)
    assert default_critic_blocks(60) == (14, 29, 44)
    assert parse_critic_blocks("auto", 8) == default_critic_blocks(8)
    assert parse_critic_blocks("3,-1,3", 8) == (3, 7)
    for bad in ("8", "x", ""):
        with pytest.raises(ValueError):
            parse_critic_blocks(bad, 8)
    heads = CriticHeads(32, (0, 1))
    logits = heads([torch.randn(2, 16, 32), torch.randn(2, 16, 32)])
    assert logits.shape == (2, 32) and torch.all(logits == 0)  # zero-initialised output layer
    nn.init.normal_(heads.heads[1][1].weight)
    heads.save_pretrained(tmp_path)
    loaded = CriticHeads.from_pretrained(tmp_path)
    assert loaded.block_indices == (0, 1)
    states = [torch.randn(1, 4, 32), torch.randn(1, 4, 32)]
    torch.testing.assert_close(loaded(states), heads(states))


def test_conv_critic_heads_read_neighbouring_tokens_and_roundtrip(tmp_path):
    """kernel_size 3: one token's state moves the logits of its 3 x 3 neighbourhood on the token grid (row-major),
    and nothing farther; per-token heads move only its own."""
    torch.manual_seed(0)
    states = [torch.randn(1, 20, 32)]  # a 4 x 5 token grid
    moved = [states[0].clone()]
    moved[0][0, 7] += 3.0 * torch.randn(32)  # row 1, column 2
    neighbours = {(r, c) for r in (0, 1, 2) for c in (1, 2, 3)}
    for kernel_size, expected in ((1, {(1, 2)}), (3, neighbours)):
        heads = CriticHeads(32, (0,), kernel_size=kernel_size)
        assert torch.all(heads(states, grid_size=(4, 5)) == 0)  # zero-initialised output layer
        nn.init.normal_(heads.heads[0][-1].weight)
        changed = (heads(moved, grid_size=(4, 5)) - heads(states, grid_size=(4, 5))).abs().view(4, 5) > 1e-6
        assert {(int(r), int(c)) for r, c in changed.nonzero()} == expected
    heads.save_pretrained(tmp_path)
    loaded = CriticHeads.from_pretrained(tmp_path)
    assert loaded.kernel_size == 3
    torch.testing.assert_close(loaded(moved, grid_size=(4, 5)), heads(moved, grid_size=(4, 5)))
    with pytest.raises(ValueError, match="grid_size"):
        heads(states)
    with pytest.raises(ValueError, match="do not fill a 4 x 4"):
        heads(states, grid_size=(4, 4))
    with pytest.raises(ValueError, match="odd positive"):
        CriticHeads(32, (0,), kernel_size=2)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_frozen_call_gives_gradient_to_inputs_only(checkpointing):
    model = tiny_transformer()
    if checkpointing:
        model.enable_gradient_checkpointing()
    z0, c = tiny_batch()
    x = z0.clone().requires_grad_(True)
    out = call_with_frozen_parameters(model, x, c, timestep=torch.full((2,), 0.5), output_hidden_states_at=(0, 1))
    (out.sample.square().mean() + sum(h.mean() for h in out.block_hidden_states)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # The same call without freezing does reach the parameters (the check above can fail).
    model(x, c, timestep=torch.full((2,), 0.5)).sample.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- timesteps


def test_rectified_timesteps_cover_the_any_step_range():
    g = torch.Generator().manual_seed(0)
    config = DistillationConfig(anystep_prob=0.5, one_step_start_prob=0.25, min_timestep=0.02, lq_anchor_prob=0.0)
    t, s, anchored = sample_generator_timesteps(4000, g, config)
    assert not anchored.any()
    assert t.min() >= 0.02 and t.max() == 1.0 and (t < 0.2).float().mean() > 0.1
    assert (t == 1).float().mean() == pytest.approx(0.25 + 0.75 * 0.0, abs=0.03)
    assert torch.all(s < t) and (s == 0).float().mean() == pytest.approx(0.5, abs=0.03)
    tau = sample_critic_timesteps(t, s, g)
    assert torch.all(tau >= s) and torch.all(tau <= t)
    t_plain, _, _ = sample_generator_timesteps(100, g, DistillationConfig(rectification=False))
    assert torch.all(t_plain == 1)
    with pytest.raises(ValueError):
        DistillationConfig(anystep_prob=1.5)
    assert DistillationConfig(lambda_adv=0.2, adversarial_warmup_steps=10).adversarial_weight(5) == pytest.approx(0.1)


def test_lq_anchored_rows_start_on_the_lq_image_and_weigh_one():
    """The sampler starts at z_T = (1 - T) c + T eps for T < 1; anchored generator rows are exactly those states."""

    class RecordInputs(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module, self.calls = module, []

        def forward(self, hidden_states, c, timestep, target_timestep, **kwargs):
            self.calls.append((hidden_states.detach().clone(), timestep.detach().clone()))
            return self.module(hidden_states, c, timestep=timestep, target_timestep=target_timestep, **kwargs)

    z0, c = tiny_batch()
    inputs = {}
    for prob in (0.0, 1.0):
        model = RecordInputs(tiny_transformer())
        config = DistillationConfig(
            reconstruction_only=True, lambda_adv=0.0, lq_anchor_prob=prob, lq_anchor_max_timestep=0.3
        )
        self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0))
        hidden, timestep = model.calls[0]
        inputs[prob] = hidden[2:], timestep[2:].view(-1, 1, 1, 1)  # rows [B:] are the generator rows
    (plain, t_plain), (anchored, t) = inputs[0.0], inputs[1.0]
    eps = (plain - (1 - t_plain) * z0) / t_plain  # both runs draw the same noise
    assert torch.all(t >= 0.02) and torch.all(t <= 0.3)
    torch.testing.assert_close(anchored, (1 - t) * c + t * eps)

    t, s = torch.tensor([0.1, 0.1]), torch.tensor([0.0, 0.0])
    assert jump_weight(t, s, lq_anchored=torch.tensor([True, False])).tolist() == pytest.approx([1.0, 0.1])
    assert jump_weight(t, s, rectification=False, lq_anchored=torch.tensor([False, False])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="lq_anchor_prob"):
        DistillationConfig(lq_anchor_prob=-0.1)
    with pytest.raises(ValueError, match="lq_anchor_max_timestep"):
        DistillationConfig(lq_anchor_max_timestep=0.01)


def test_lq_bridge_rows_run_from_the_hq_image_to_the_lq_image_and_learn_their_velocity():
    """Bridge rows sit on z_t = (1 - t) z0 + t c (no noise; the sampler's start="lq") and their reconstruction loss
    is the velocity error against c - z0, whatever the jump t -> s."""

    class RecordOutputs(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module, self.calls = module, []

        def forward(self, hidden_states, c, timestep, target_timestep, **kwargs):
            out = self.module(hidden_states, c, timestep=timestep, target_timestep=target_timestep, **kwargs)
            self.calls.append((hidden_states.detach().clone(), timestep.detach().clone(), out.sample.detach()))
            return out

    z0, c = tiny_batch()
    model = RecordOutputs(tiny_transformer())
    config = DistillationConfig(reconstruction_only=True, lambda_adv=0.0, lq_anchor_prob=1.0, lq_bridge_prob=1.0)
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0))
    hidden, timestep, u = (x[2:] for x in model.calls[0])  # rows [B:] are the generator rows
    t = timestep.view(-1, 1, 1, 1)
    torch.testing.assert_close(hidden, (1 - t) * z0 + t * c)  # bridge rows take precedence over anchoring
    torch.testing.assert_close(losses["rec"], (u - (c - z0)).square().mean())

    # With heads, the critic reads bridge rows as clean images: a finite step that reaches the generator.
    model = tiny_transformer()
    config = DistillationConfig(lq_anchor_prob=0.0, lq_bridge_prob=1.0)
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0), random_heads(model))
    assert all(torch.isfinite(losses[name]) for name in LOSS_TERMS) and losses["critic"] > 0
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="lq_bridge_prob"):
        DistillationConfig(lq_bridge_prob=1.5)


def test_the_critic_reads_bridge_rows_at_low_noise_levels():
    """Bridge levels are distances to the LQ image, not noise: the critic renoises their clean estimates to a level
    in [0, bridge_critic_max_timestep] (at high levels noise hides the restoration error it should see)."""
    g = torch.Generator().manual_seed(0)
    t, s = torch.ones(4000), torch.zeros(4000)
    bridge = torch.arange(4000) % 2 == 0
    tau = sample_critic_timesteps(t, s, g, bridge, bridge_max_timestep=0.1)
    assert tau[bridge].min() >= 0 and tau[bridge].max() <= 0.1 and tau[bridge].mean() == pytest.approx(0.05, abs=0.005)
    assert tau[~bridge].max() > 0.9 and tau[~bridge].mean() == pytest.approx(0.5, abs=0.03)

    levels: list[torch.Tensor] = []

    def record_critic_levels(module, args, kwargs, output):
        if kwargs.get("output_hidden_states_at"):
            levels.append(kwargs["timestep"].detach().clone())

    z0, c = tiny_batch()
    model = tiny_transformer()
    model.register_forward_hook(record_critic_levels, with_kwargs=True)
    config = DistillationConfig(lq_anchor_prob=0.0, lq_bridge_prob=1.0, bridge_critic_max_timestep=0.05)
    self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0), random_heads(model))
    assert len(levels) == 2  # real and fake, at the same levels
    torch.testing.assert_close(levels[0], levels[1])
    assert levels[0].min() >= 0 and levels[0].max() <= 0.05
    with pytest.raises(ValueError, match="bridge_critic_max_timestep"):
        DistillationConfig(bridge_critic_max_timestep=0.0)


def test_the_critic_can_read_its_inputs_shifted_off_the_patch_grid():
    """--critic_patch_shift rolls the critic's noisy input and its LQ condition by one offset within a patch."""
    rows = torch.arange(8.0).view(1, 1, 8, 1).expand(2, 3, 8, 8)
    cols = torch.arange(8.0).view(1, 1, 1, 8).expand(2, 3, 8, 8)
    offsets = set()
    for seed in range(200):
        shifted_rows, shifted_cols = shift_within_patch([rows, cols], 4, torch.Generator().manual_seed(seed))
        dy, dx = -int(shifted_rows[0, 0, 0, 0]) % 8, -int(shifted_cols[0, 0, 0, 0]) % 8  # rolled by (dy, dx)
        torch.testing.assert_close(shifted_rows, torch.roll(rows, (dy, 0), (-2, -1)))
        torch.testing.assert_close(shifted_cols, torch.roll(cols, (0, dx), (-2, -1)))
        offsets.add((dy, dx))
    assert offsets == {(dy, dx) for dy in range(4) for dx in range(4)}

    conditions: list[torch.Tensor] = []

    def record_critic_condition(module, args, kwargs, output):
        if kwargs.get("output_hidden_states_at"):
            conditions.append(args[1].detach().clone())

    z0, c = tiny_batch()
    for shift in (False, True):
        model = tiny_transformer()
        model.register_forward_hook(record_critic_condition, with_kwargs=True)
        config = DistillationConfig(lq_anchor_prob=0.0, lq_bridge_prob=1.0, critic_patch_shift=shift)
        generator = torch.Generator().manual_seed(3)
        losses = self_adversarial_losses(model, z0, c, config, generator, random_heads(model))
        assert torch.isfinite(losses["loss"])
    unshifted, shifted = conditions[0], conditions[2]
    torch.testing.assert_close(unshifted, c)
    assert not torch.equal(shifted, c)  # this seed's offset is not (0, 0)
    patch = model.config.patch_size
    assert any(torch.equal(shifted, torch.roll(c, (dy, dx), (-2, -1))) for dy in range(patch) for dx in range(patch))


def test_flow_matching_bridge_rows_end_at_the_lq_image():
    """train_flow_sr.py --lq_bridge_prob: rows interpolate towards c instead of eps; their target is c - z0."""

    class Record(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(()))
            self.calls = []

        def forward(self, hidden_states, c, timestep, target_timestep):
            self.calls.append((hidden_states.detach(), timestep.detach()))
            return TEASRTransformerOutput(sample=self.scale * hidden_states)

    z0, c = tiny_batch()
    model = Record()
    g = torch.Generator().manual_seed(0)
    losses = flow_matching_losses(model, z0, c, g, lq_bridge_prob=1.0, lq_bridge_start_prob=1.0)
    hidden, t = model.calls[0]
    torch.testing.assert_close(t, torch.ones(2))
    torch.testing.assert_close(hidden, c)  # the LQ start
    torch.testing.assert_close(losses["loss"], (c - z0).square().mean())  # zero prediction vs velocity c - z0
    flow_matching_losses(model, z0, c, g, lq_bridge_prob=1.0, lq_bridge_start_prob=0.0)
    hidden, t = model.calls[1]
    assert torch.all(t < 1)
    torch.testing.assert_close(hidden, (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * c)


# ---------------------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize(
    "config_kwargs, model_kwargs",
    [
        ({}, {}),
        ({"lambda_consistency": 1.0}, {}),
        ({"lambda_gradient": 1.0}, {}),
        ({"lambda_spectral": 1.0, "lq_bridge_prob": 1.0}, {}),
        ({"lambda_grid": 1.0}, {}),
        ({"rectification": False}, {}),
        ({"reconstruction_only": True, "lambda_adv": 0.0}, {}),
        ({}, {"decoupled_timestep": False}),
    ],
    ids=[
        "default",
        "consistency",
        "gradient",
        "spectral",
        "grid",
        "no_rectification",
        "reconstruction_only",
        "coupled",
    ],
)
def test_every_loss_term_is_finite_and_trains(config_kwargs, model_kwargs):
    model = tiny_transformer(**model_kwargs)
    config = DistillationConfig(**config_kwargs)
    heads = random_heads(model) if config.uses_critic else None
    z0, c = tiny_batch()
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0), critic_heads=heads)
    assert set(LOSS_TERMS) <= set(losses)
    for name in ("loss", *LOSS_TERMS):
        assert torch.isfinite(losses[name]), name
    assert losses["flow"] > 0 and losses["rec"] > 0
    assert (losses["critic"] > 0) == config.uses_critic
    assert (losses["consistency"] > 0) == (config.lambda_consistency > 0)
    assert (losses["gradient"] > 0) == (config.lambda_gradient > 0)
    assert (losses["spectral"] > 0) == (config.lambda_spectral > 0)
    assert (losses["grid"] > 0) == (config.lambda_grid > 0)
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    flow = flow_matching_losses(model, z0, c, torch.Generator().manual_seed(0))
    assert torch.isfinite(flow["loss"]) and flow["loss"].requires_grad


def test_early_flow_backward_gives_the_same_losses_and_gradients():
    """`run_training` backpropagates the flow rows before the generator rows run (less memory): same step."""
    config = DistillationConfig(lambda_consistency=0.5, lambda_flow=0.7)
    z0, c = tiny_batch()
    grads, totals = [], []
    for split in (False, True):
        model = tiny_transformer()
        heads = random_heads(model)
        partial: list[torch.Tensor] = []

        def backward(loss: torch.Tensor, seen: list[torch.Tensor] = partial) -> None:
            seen.append(loss.detach())
            loss.backward()

        losses = self_adversarial_losses(
            model, z0, c, config, torch.Generator().manual_seed(0), heads, backward=backward if split else None
        )
        losses["loss"].backward()
        assert len(partial) == int(split)
        if split:  # the early part is the weighted flow loss; "loss" holds the rest, "total" both
            torch.testing.assert_close(partial[0], config.lambda_flow * losses["flow"])
            torch.testing.assert_close(losses["total"], partial[0] + losses["loss"].detach())
        totals.append(losses["total"])
        grads.append([p.grad.clone() for p in (*model.parameters(), *heads.parameters()) if p.grad is not None])
    torch.testing.assert_close(totals[0], totals[1])
    assert len(grads[0]) == len(grads[1]) > 0
    for plain, split in zip(*grads):
        torch.testing.assert_close(plain, split, rtol=1e-4, atol=1e-6)


def test_without_the_flow_term_the_flow_rows_are_not_run_and_the_generator_rows_are_unchanged():
    """lambda_flow = 0 (a pure LQ-bridge run) skips the flow rows' forward, with the same generator rows."""
    z0, c = tiny_batch()
    model = tiny_transformer()
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    results = {}
    for lambda_flow in (1.0, 0.0):
        calls.clear()
        config = DistillationConfig(lambda_flow=lambda_flow, reconstruction_only=True, lq_bridge_prob=1.0)
        results[lambda_flow] = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0))
        results[lambda_flow]["calls"] = list(calls)
    assert results[1.0]["calls"] == [2 * z0.shape[0]] and results[0.0]["calls"] == [z0.shape[0]]
    assert results[0.0]["flow"] == 0 and results[1.0]["flow"] > 0
    torch.testing.assert_close(results[0.0]["rec"], results[1.0]["rec"])
    torch.testing.assert_close(results[0.0]["loss"].detach(), results[0.0]["rec"])
    results[0.0]["loss"].backward()
    assert _grad_total(model) > 0


def _grad_total(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("kernel_size", [1, 3], ids=["per_token_heads", "conv_heads"])
def test_critic_hinge_pass_trains_the_heads_only(kernel_size):
    model = tiny_transformer()
    heads = random_heads(model, kernel_size=kernel_size)
    config = DistillationConfig(lambda_flow=0, lambda_rec=0, lambda_adv=1.0, adversarial_warmup_steps=10)
    z0, c = tiny_batch()
    # step 0 of the warm-up: the generator's adversarial weight is 0, only the heads' hinge loss remains.
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0), heads, step=0)
    losses["loss"].backward()
    assert _grad_total(heads) > 0
    assert _grad_total(model) == 0


@pytest.mark.parametrize("kernel_size", [1, 3], ids=["per_token_heads", "conv_heads"])
def test_generator_adversarial_term_reaches_the_generator_through_its_output_only(kernel_size):
    model = tiny_transformer()
    heads = random_heads(model, kernel_size=kernel_size)
    config = DistillationConfig(lambda_flow=0, lambda_rec=0, lambda_critic=0, lambda_adv=1.0)
    z0, c = tiny_batch()
    losses = self_adversarial_losses(model, z0, c, config, torch.Generator().manual_seed(0), heads)
    losses["loss"].backward()
    assert _grad_total(model) > 0  # the generator learns from the critic
    assert _grad_total(heads) == 0  # the heads are frozen in the generator's term
    # Cut the generator's output from the graph: the critic's own backbone pass must then give the backbone nothing.
    model.zero_grad(set_to_none=True)
    cut = self_adversarial_losses(DetachedOutput(model), z0, c, config, torch.Generator().manual_seed(0), heads)
    assert torch.isfinite(cut["adv"]) and cut["adv"] != 0
    cut["loss"].backward()
    assert _grad_total(model) == 0


def test_adversarial_routing_with_gradient_checkpointing():
    model = tiny_transformer()
    model.enable_gradient_checkpointing()
    heads = random_heads(model)
    config = DistillationConfig(lambda_flow=0, lambda_rec=0, lambda_critic=1.0, lambda_adv=1.0)
    z0, c = tiny_batch()
    cut = self_adversarial_losses(DetachedOutput(model), z0, c, config, torch.Generator().manual_seed(0), heads)
    cut["loss"].backward()
    assert _grad_total(heads) > 0 and _grad_total(model) == 0


# ---------------------------------------------------------------------------------------------------- machinery


def test_non_finite_guard_stops_after_consecutive_bad_steps():
    guard = NonFiniteGuard(2)
    guard.update(False, 1)
    guard.update(True, 2)  # a good step resets the count
    guard.update(False, 3)
    with pytest.raises(FloatingPointError, match="2 consecutive"):
        guard.update(False, 4)
    assert guard.total == 3


def test_latest_checkpoint_ignores_incomplete_ones(tmp_path):
    for step, complete in ((2, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / CHECKPOINT_MARKER).write_text("{}")
    (tmp_path / ".checkpoint-14.tmp").mkdir()
    assert latest_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "checkpoint-10")
    assert latest_checkpoint(str(tmp_path / "missing")) is None


def test_base_that_is_not_a_model_is_one_clear_error(tmp_path, tiny_pipeline_dir):
    with pytest.raises(ValueError, match="not a usable base"):
        load_training_pipeline(str(tmp_path))
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_training_pipeline(str(tmp_path))
    with pytest.raises(ValueError, match="not a folder"):
        load_training_pipeline(str(tmp_path / "nothing"))
    pipe = load_training_pipeline(tiny_pipeline_dir)
    assert pipe.transformer.config.num_layers == TINY_PIXEL_CONFIG["num_layers"]
    bare = load_training_pipeline(os.path.join(tiny_pipeline_dir, "transformer"))  # a bare transformer folder
    assert bare.vae is None and bare.transformer.out_channels == 3
