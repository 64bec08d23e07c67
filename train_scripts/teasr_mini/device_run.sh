#!/usr/bin/env bash
# teasr-mini on a GPU: the recipe with as many steps as fit a time budget, in one bounded command that needs no
# network and leaves the trained model and its held-out evaluation in $OUT (train_scripts/teasr_mini/
# RECIPE.md, "On a GPU").
#
# Here, with a network (once per checkout; both folders are git-ignored):
#   bash train_scripts/teasr_mini/device_run.sh prepare
#     .whl/          the wheels the GPU machine's Python 3.12 lacks (diffusers, datasets, kornia and their needs)
#     data/sources/  the source photos of the training and held-out sets (31 MB; prepare_data.py --sources_dir)
# On the GPU machine (the repository copied there with .whl/ and data/sources/; about 8 minutes on one H100/H200-class
# GPU by the time budget below, not yet measured there):
#   OUT=results bash train_scripts/teasr_mini/device_run.sh run
#     $OUT/transformer.safetensors            the distilled model's weights (EMA)
#     $OUT/flow_base_transformer.safetensors  the flow base's (for ablations distilled from it, on any machine)
#     $OUT/teasr_gpu.tar.gz                   both model folders without those, eval JSONs, logs
#     $OUT/device_run.log                     this script's log
# Then: RECIPE.md, "On a GPU" (unpack, evaluate on the CPU like the release).
#
# Settings (environment): TRAIN_SECONDS (the two training stages together, default 240), BATCH_SIZE (default 8, the
# recipe's: batch 32 learned only 0.05 dB more per step, docs/RESULTS.md),
# WORKERS (data loader processes, default 6), PROBE_STEPS (steps of each timing probe, default 300;
# checkpoint times have 1 s resolution). On a GPU a step of this 3.9M-parameter model at batch 8 is probably bound by
# kernel launches rather than arithmetic (not measured yet: the log's probe line says), in which case a larger
# BATCH_SIZE or model (MODEL_CONFIG, as in recipe.sh; the card's limits: weights <= 40 MB, a few seconds per CPU
# upscale) costs little time there.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-}
WHEELS=(diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 kornia==0.9.0 kornia_rs==0.2.0
  importlib_metadata==8.7.0)

if [ "$MODE" = prepare ]; then
  PY=${PY:-.venv/bin/python}
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  $PY train_scripts/teasr_mini/prepare_data.py --output_dir "${DATA:-data/teasr_mini}" --sources_dir data/sources
  du -sh .whl data/sources
  exit 0
fi
if [ "$MODE" != run ]; then
  echo "usage: bash train_scripts/teasr_mini/device_run.sh prepare|run" >&2
  exit 2
fi

OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_run.log") 2>&1
started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
BATCH_SIZE=${BATCH_SIZE:-8}
WORKERS=${WORKERS:-6}
PROBE_STEPS=${PROBE_STEPS:-300}
RUNS=${RUNS:-runs/gpu}
DATA=${DATA:-data/teasr_mini}
mkdir -p "$RUNS"

if [ -z "${PY:-}" ]; then
  PY=python3
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c 'import torch, diffusers, datasets, kornia, accelerate, peft
print("torch", torch.__version__, "diffusers", diffusers.__version__, "datasets", datasets.__version__,
      "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
if [ -d data/sources/mate ]; then
  $PY train_scripts/teasr_mini/prepare_data.py --output_dir "$DATA" --sources_dir data/sources --if_stale
elif ! $PY train_scripts/teasr_mini/prepare_data.py --output_dir "$DATA" --check; then
  echo "data/sources is missing and $DATA is not a build of the current sources and scales: run" \
    "'device_run.sh prepare' on a machine with a network and copy data/sources here" >&2
  exit 1
fi
echo "[$(elapsed) s] data ready"

export PY DATA BATCH_SIZE RUNS MIXED_PRECISION=${MIXED_PRECISION:-bf16} TIME_BUDGET_MINUTES=0
export TRAIN_FLAGS="--dataloader_num_workers $WORKERS"
recipe() { bash train_scripts/teasr_mini/recipe.sh; }

# Seconds per step of each stage, from two short runs whose checkpoint times are logged (start-up excluded).
plan() { $PY train_scripts/teasr_mini/plan_steps.py "$@"; }
every=$((PROBE_STEPS >= 3 ? PROBE_STEPS / 3 : 1))  # at least two checkpoints to time between, where it can
RUNS=$RUNS/probe FLOW_STEPS=$PROBE_STEPS TRAIN_FLAGS="$TRAIN_FLAGS --checkpointing_steps $every" STAGES=base \
  recipe > "$RUNS.probe_base.log" 2>&1 || { tail -50 "$RUNS.probe_base.log"; exit 1; }
RUNS=$RUNS/probe DISTILL_STEPS=$PROBE_STEPS DISTILL_FLAGS="--checkpointing_steps $every" STAGES=distill recipe \
  > "$RUNS.probe_distill.log" 2>&1 || { tail -50 "$RUNS.probe_distill.log"; exit 1; }
base_sps=$(plan seconds-per-step "$RUNS.probe_base.log")
distill_sps=$(plan seconds-per-step "$RUNS.probe_distill.log")
# The recipe's split of training time between the stages, as on the CPU (plan_steps.py).
read -r FLOW_STEPS DISTILL_STEPS < <(plan gpu --base_seconds "$base_sps" --distill_seconds "$distill_sps" \
  --train_seconds "$TRAIN_SECONDS")
echo "[$(elapsed) s] probes: base $base_sps s/step, distillation $distill_sps s/step at batch $BATCH_SIZE:" \
  "FLOW_STEPS=$FLOW_STEPS DISTILL_STEPS=$DISTILL_STEPS"

# Both weights files and a tarball of the run folders (and evaluation JSONs and logs, where there are some) in $OUT:
# written once the models are trained (so that they come back even if the evaluation runs out of time) and at the end.
pack() {
  cp "$RUNS/teasr/transformer/diffusion_pytorch_model.safetensors" "$OUT/transformer.safetensors"
  cp "$RUNS/flow_base/transformer/diffusion_pytorch_model.safetensors" "$OUT/flow_base_transformer.safetensors"
  local name folders=(teasr flow_base) logs=()
  name=$(basename "$RUNS")
  if [ -d "$RUNS/eval" ]; then folders+=(eval); fi
  for log in probe_base probe_distill train eval; do
    if [ -f "$RUNS.$log.log" ]; then logs+=("$name.$log.log"); fi
  done
  tar -czf "$OUT/teasr_gpu.tar.gz" --exclude='*.safetensors' --exclude='checkpoint-*' --exclude='logs' \
    -C "$RUNS" "${folders[@]}" -C .. "${logs[@]}"
}

export FLOW_STEPS DISTILL_STEPS START=lq
STAGES="base distill" recipe > "$RUNS.train.log" 2>&1 || { tail -80 "$RUNS.train.log"; exit 1; }
pack
echo "[$(elapsed) s] trained"
STAGES="eval" recipe > "$RUNS.eval.log" 2>&1 || { tail -50 "$RUNS.eval.log"; exit 1; }
echo "[$(elapsed) s] evaluated"
$PY - "$RUNS/eval" <<'PYTHON'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    for result in json.loads(path.read_text())["results"]:
        mean = result["mean"]
        print(f"{path.stem:16s} {result['label']:32s} PSNR-Y {mean['psnr']:.3f} SSIM-Y {mean['ssim']:.4f} "
              f"HF {mean['hf_ratio']:.3f} grid {mean['grid']:.3f}")
PYTHON

pack
echo "[$(elapsed) s] done: $(cd "$OUT" && echo *)"
