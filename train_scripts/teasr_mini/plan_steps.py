"""Step counts of the teasr-mini recipe that fit a time budget, from short timing runs on this machine.

Usage:
    python train_scripts/teasr_mini/plan_steps.py seconds-per-step LOG
        seconds per training step between the first and the last "Saved checkpoint" line of a training log
    python train_scripts/teasr_mini/plan_steps.py cpu --base_log L --beside_log L --budget_minutes 90 \
        --elapsed_seconds S [--flow_steps 1500 --distill_steps 5000 --ablation_steps 500]
        prints FLOW_STEPS=.. DISTILL_STEPS=.. ABLATION_STEPS=.. (one line, for recipe.sh to source)
    python train_scripts/teasr_mini/plan_steps.py gpu --base_seconds S --distill_seconds S --train_seconds 240
        prints FLOW_STEPS DISTILL_STEPS (device_run.sh)

The CPU plan scales all three counts by one factor (at most 1: a fast machine trains the recipe as written), so that
the base, the distillation and its ablations keep their proportions and the ablations stay comparable with the main
run. Its time model is the recipe's own schedule, with the two speeds timed here and the constants below measured on
the recipe's verification run (`runs/repro`, docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime

_STAMP = r"(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d)"
_SAVED = re.compile(_STAMP + r" - INFO - teasr\.train - \[RANK 0\] Saved checkpoint \S*checkpoint-(\d+)")

# runs/repro, on the AVX-512 machine: 0.53 s per distillation step on one core beside another run, 0.336 s on both
# cores alone; the start choice and the evaluation took 6 minutes where a base step took 0.32 s (they scale with the
# machine, not with the step counts).
TWO_CORE_SPEEDUP = 0.336 / 0.53
EVAL_SECONDS_PER_BASE_SECOND = 6 * 60 / 0.32
# Kept free for what the model leaves out (start-up of each run, report, export), as a fraction of the budget.
SAFETY_MARGIN = 0.05
# The CPU recipe's measured split of training time between its stages (1500 base steps at 0.48 s, 5000 distillation
# steps at 0.29 s), which the GPU plan keeps.
CPU_BASE_SECONDS, CPU_DISTILL_SECONDS = 1500 * 0.48, 5000 * 0.29


def seconds_per_step(log_text: str) -> float:
    """Seconds per step between the first and the last checkpoint saved in a training log (start-up excluded)."""
    marks = _SAVED.findall(log_text)
    if len(marks) < 2:
        raise ValueError("the log has fewer than two 'Saved checkpoint' lines: train longer or checkpoint more often")
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    fmt = "%m/%d/%Y %H:%M:%S"
    seconds = (datetime.strptime(t1, fmt) - datetime.strptime(t0, fmt)).total_seconds()
    return max(seconds, 1.0) / (int(s1) - int(s0))  # checkpoint times have one-second resolution


def cpu_plan(
    base_seconds: float,
    beside_seconds: float,
    budget_seconds: float,
    elapsed_seconds: float,
    flow_steps: int = 1500,
    distill_steps: int = 5000,
    ablation_steps: int = 500,
) -> tuple[int, int, int]:
    """(flow, distillation, ablation) steps of the recipe that fit what is left of the budget.

    `base_seconds`: a base step on every core; `beside_seconds`: a distillation step on one core while another run
    trains on the other, as the main run's first phase and the ablations do. The recipe's schedule: the base; the
    four ablations (the critic's run costs two) beside the main run's first 5 x ablation steps; the main run's rest on
    every core; then the start choice and the evaluation, which do not shrink with the step counts.
    """
    parallel = 5 * ablation_steps
    training = (
        flow_steps * base_seconds
        + parallel * beside_seconds
        + max(distill_steps - parallel, 0) * beside_seconds * TWO_CORE_SPEEDUP
    )
    evaluation = EVAL_SECONDS_PER_BASE_SECOND * base_seconds
    available = budget_seconds * (1 - SAFETY_MARGIN) - elapsed_seconds - evaluation
    factor = min(1.0, max(available, 0.0) / training)
    if factor >= 1.0:
        return flow_steps, distill_steps, ablation_steps
    ablation = _scaled(ablation_steps, factor, 50)
    flow = _scaled(flow_steps, factor, 50)
    distill = max(5 * ablation, _scaled(distill_steps, factor, 100))
    return flow, distill, ablation


def _scaled(steps: int, factor: float, unit: int) -> int:
    """`steps * factor`, rounded down to whole checkpoint intervals (`unit`) where it is that long, and at least 1."""
    scaled = int(steps * factor)
    return scaled // unit * unit if scaled >= unit else max(scaled, 1)


def gpu_plan(base_seconds: float, distill_seconds: float, train_seconds: float) -> tuple[int, int]:
    """(flow, distillation) steps that fill `train_seconds` in the CPU recipe's split of time between the stages."""
    share = CPU_BASE_SECONDS / (CPU_BASE_SECONDS + CPU_DISTILL_SECONDS)
    flow = max(10, int(train_seconds * share / base_seconds) // 10 * 10)
    distill = max(10, int(train_seconds * (1 - share) / distill_seconds) // 10 * 10)
    return flow, distill


def _read(path: str) -> float:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return seconds_per_step(handle.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("seconds-per-step")
    one.add_argument("log")
    cpu = commands.add_parser("cpu")
    cpu.add_argument("--base_log", required=True)
    cpu.add_argument("--beside_log", required=True)
    cpu.add_argument("--budget_minutes", type=float, required=True)
    cpu.add_argument("--elapsed_seconds", type=float, default=0.0)
    cpu.add_argument("--flow_steps", type=int, default=1500)
    cpu.add_argument("--distill_steps", type=int, default=5000)
    cpu.add_argument("--ablation_steps", type=int, default=500)
    gpu = commands.add_parser("gpu")
    gpu.add_argument("--base_seconds", type=float, required=True)
    gpu.add_argument("--distill_seconds", type=float, required=True)
    gpu.add_argument("--train_seconds", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "seconds-per-step":
            print(f"{_read(args.log):.4f}")
        elif args.command == "cpu":
            base, beside = _read(args.base_log), _read(args.beside_log)
            flow, distill, ablation = cpu_plan(
                base, beside, args.budget_minutes * 60, args.elapsed_seconds,
                args.flow_steps, args.distill_steps, args.ablation_steps,
            )  # fmt: skip
            print(f"FLOW_STEPS={flow} DISTILL_STEPS={distill} ABLATION_STEPS={ablation}")
            timing = f"base {base:.3f} s/step, distillation beside another run {beside:.3f} s/step"
            print(f"plan: {timing}", file=sys.stderr)
        else:
            flow, distill = gpu_plan(args.base_seconds, args.distill_seconds, args.train_seconds)
            print(flow, distill)
    except (OSError, ValueError) as error:
        print(f"plan_steps.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
