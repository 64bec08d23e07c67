"""Can the self-critic heads tell a photo from the model's own 1-step output, and at which critic level?

    python train_scripts/teasr_mini/critic_probe.py --model model_card --levels 0.5 0.1 0.02

For each critic level `tau`, trains fresh `CriticHeads` (the distillation's heads: LayerNorm + Linear per token on
the blocks `default_critic_blocks` picks) on the frozen model's noisy-branch states of real HQ crops and of the
model's 1-step LQ-start outputs, both renoised to `tau` with the same noise, exactly as the distillation's critic
pass does for bridge rows. The crops, degradation and LQ condition are the distillation's own (`SRCropDataset`
with `--min_crop_gradient`, 64 x 64, light degradations, batch 8), training photos only; AdamW at the recipe's
2e-4. Prints one JSON line per level: the mean hinge loss over the first and the last quarter of the steps (2.0 is
chance, lower means the heads separate real from fake).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline_teasr import TEASRPipeline
from pipeline_teasr.data import (
    SRCropDataset,
    build_degradation,
    collate_sr_batch,
    load_image_dataset,
    lq_condition_pixels,
)
from pipeline_teasr.losses import CriticHeads, critic_hinge_loss, default_critic_blocks, renoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model_card", help="pipeline folder of a model trained for start='lq'")
    parser.add_argument("--data", type=Path, default=Path("data/teasr_mini/train"))
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.1, 0.02], help="critic levels tau")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning_rate", type=float, default=2e-4, help="AdamW learning rate of the heads")
    parser.add_argument("--min_crop_gradient", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if any(not 0.0 < tau < 1.0 for tau in args.levels):
        raise SystemExit(f"error: --levels must lie in (0, 1), got {args.levels}")
    if not sorted(args.data.glob("*.png")):
        raise SystemExit(f"error: no PNG photos in {args.data} (run the recipe's data stage first)")
    pipe = TEASRPipeline.from_pretrained(args.model)
    model = pipe.transformer.eval().requires_grad_(False)
    blocks = default_critic_blocks(len(model.transformer_blocks))
    # The distillation's own crops (flat ones redrawn), degradation and LQ condition: see `run_training`.
    crops = SRCropDataset(
        load_image_dataset(train_data_dir=str(args.data)),
        resolution=64,
        scale=4,
        seed=args.seed,
        min_crop_gradient=args.min_crop_gradient,
        cache_images=True,
    )
    degradation = build_degradation("light", 4)

    for tau_value in args.levels:
        torch.manual_seed(args.seed)
        loader_generator = torch.Generator().manual_seed(args.seed)
        loader = torch.utils.data.DataLoader(
            crops, batch_size=8, shuffle=True, collate_fn=collate_sr_batch, generator=loader_generator
        )
        generator = torch.Generator().manual_seed(args.seed + 1)
        heads = CriticHeads(model.inner_dim, blocks)
        optimizer = torch.optim.AdamW(heads.parameters(), lr=args.learning_rate, weight_decay=0.0)
        losses, started, epoch = [], time.time(), 0
        while len(losses) < args.steps:
            crops.set_epoch(epoch)
            epoch += 1
            for batch in loader:
                if len(losses) == args.steps:
                    break
                hq = batch["pixel_values"]
                with torch.no_grad():
                    lq = degradation(hq, generator=generator)
                    c = pipe.encode_images(lq_condition_pixels(lq, tuple(hq.shape[-2:])))
                    real = pipe.encode_images(hq)
                    tau, level = torch.full((len(hq),), tau_value), torch.zeros(len(hq))
                    noise = torch.randn(real.shape, generator=generator)
                    fake = c - model(c, c, timestep=1.0, target_timestep=0.0).sample  # one step from the LQ start
                    states = [
                        model(renoise(z, level, tau, noise), c, timestep=tau, target_timestep=tau,
                              output_hidden_states_at=blocks).block_hidden_states
                        for z in (real, fake)
                    ]  # fmt: skip
                logits_real, logits_fake = heads([torch.cat(pair) for pair in zip(*states)]).chunk(2)
                loss = critic_hinge_loss(logits_real, logits_fake)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        quarter = max(1, len(losses) // 4)
        line = {
            "tau": tau_value,
            "steps": args.steps,
            "learning_rate": args.learning_rate,
            "hinge_first_quarter": round(float(np.mean(losses[:quarter])), 4),
            "hinge_last_quarter": round(float(np.mean(losses[-quarter:])), 4),
            "s": round(time.time() - started),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
