#!/usr/bin/env bash
# teasr-mini: the embedded default model, trained end to end with this repository's own scripts.
#
#   bash train_scripts/teasr_mini/recipe.sh            # everything (resumable: re-run after an interruption)
#   STAGES="eval report" bash train_scripts/teasr_mini/recipe.sh   # only some stages
#
# Stages: data, base, distill, choose, ablations, eval, report, export. Step counts are environment variables so that
# a GPU run can train longer with the same recipe (see model_card/README.md for the values actually used).
# Needs: `bash scripts/setup.sh "train,dev"` (or any venv with the train and dev extras) and apt-get (for the
# mate-backgrounds photos).
set -euo pipefail
cd "$(dirname "$0")/../.."

RECIPE_STARTED=$(date +%s)
PY=${PY:-.venv/bin/python}
# bfloat16 autocast (the weights and the optimiser stay float32) where the hardware has it: a GPU, or a CPU with
# native bfloat16 (AVX512-BF16/AMX; 1.35x faster per distillation step at the same quality, docs/RESULTS.md,
# "bfloat16 training"); float32 elsewhere, since emulated bfloat16 is many times slower.
MIXED_PRECISION=${MIXED_PRECISION:-$($PY -c 'from pipeline_teasr.hardware import recommended_mixed_precision as r; print(r())')}
# accelerate gives a CPU process one thread unless OMP_NUM_THREADS says otherwise: a run alone takes every core (one run
# on both cores of the AVX-512 machine: 0.29 s per distillation step against 0.45 on one).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
echo "recipe: MIXED_PRECISION=$MIXED_PRECISION, OMP_NUM_THREADS=$OMP_NUM_THREADS"
ACCELERATE=${ACCELERATE:-"$PY -m accelerate.commands.launch --quiet --num_processes 1 --num_machines 1 --dynamo_backend no --mixed_precision $MIXED_PRECISION"}
DATA=${DATA:-data/teasr_mini}
RUNS=${RUNS:-runs/teasr_mini}
STAGES=${STAGES:-"data base distill choose ablations eval report export"}
# The whole recipe (data to evaluation) is held to TIME_BUDGET_MINUTES (the teasr-mini issue's 90; 0: no limit): before
# training, short timing runs (PROBE_STEPS base steps, 3/5 as many distillation steps) measure this machine, and where
# the step counts below would not fit, all three shrink by one factor (plan_steps.py; on the AVX-512 machine they fit
# as they are). The plan is kept in $RUNS/plan.env, so that a resumed recipe trains to the same counts; to train
# other counts into a planned run folder (say, a longer DISTILL_STEPS), set TIME_BUDGET_MINUTES=0 and all three
# counts (a count left unset is its default below, and a base trained to fewer steps would be trained further).
TIME_BUDGET_MINUTES=${TIME_BUDGET_MINUTES:-90}
PROBE_STEPS=${PROBE_STEPS:-100}
if [ "$TIME_BUDGET_MINUTES" != 0 ] && [ "$PROBE_STEPS" -lt 5 ]; then
  echo "recipe: PROBE_STEPS must be at least 5 (each timing run needs two checkpoints to time between)" >&2
  exit 2
fi
FLOW_STEPS=${FLOW_STEPS:-1500}
DISTILL_STEPS=${DISTILL_STEPS:-5000}
ABLATION_STEPS=${ABLATION_STEPS:-500}
if [ "$TIME_BUDGET_MINUTES" != 0 ] && [ -f "$RUNS/plan.env" ]; then
  # shellcheck disable=SC1091
  source "$RUNS/plan.env"
fi
# The batch of both training stages (64 x 64 crops; four times as many learned only 0.05 dB more per step,
# docs/RESULTS.md, "Larger crops, a higher learning rate, a larger batch, test-time flips").
BATCH_SIZE=${BATCH_SIZE:-8}
# Extra flags for both training scripts, e.g. TRAIN_FLAGS="--dataloader_num_workers 6" where cores are free.
TRAIN_FLAGS=${TRAIN_FLAGS:-}
# Extra train_teasr_lora.py flags for every distillation run (main and ablations), e.g.
# DISTILL_FLAGS="--lambda_gradient 0.5", to try a loss variant with everything else as the recipe has it.
DISTILL_FLAGS=${DISTILL_FLAGS:-}
# The transformer: 4x4 RGB patches, 2 dual-stream blocks (4 heads x 32), the LQ skip and the token-grid conv path
# (128 channels x 8 residual blocks). Two blocks, not six: at this budget the conv path does the local restoration and
# a thin transformer's steps cost half as much or less, so the recipe runs several times as many
# (docs/RESULTS.md, "A thin transformer").
MODEL_CONFIG=${MODEL_CONFIG:-'{"patch_size": 4, "in_channels": 48, "out_channels": 3, "num_layers": 2,
  "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": 64, "axes_dims_rope": [8, 12, 12],
  "lq_skip": true, "conv_channels": 128, "conv_blocks": 8}'}
# --cache_images: the 108 training images (550 MB decoded) are decoded once per process instead of for every crop (same crops).
COMMON="--train_data_dir $DATA/train --resolution 64 --scale 4 --degradation light --random_flip --seed 0
        --checkpointing_steps 50 --checkpoints_total_limit 2 --report_to tensorboard --lr_scheduler constant
        --cache_images $TRAIN_FLAGS"

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
# The step count of a finished training run in $1 (training_args.json is written last), 0 if none finished there.
trained_steps() {
  $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["max_train_steps"])' "$1/training_args.json" \
    2>/dev/null || echo 0
}
resume_flag() { [ -d "$1" ] && ls -d "$1"/checkpoint-* >/dev/null 2>&1 && echo "--resume_from_checkpoint latest"; }

distil() {  # distil OUTPUT_DIR STEPS [extra flags...]: full fine-tune distillation of the flow base
  # Every generator row on the LQ bridge (three quarters at t = 1, where start="lq" begins), in velocity units with
  # an L1 loss; no flow rows (lambda_flow 0: they compete with the bridge for the shared weights, docs/RESULTS.md),
  # so the base's velocity head is zeroed and the LQ start begins as the bicubic upscale; EMA weights are shipped;
  # flat crops (bokeh, sky: most of these wallpapers) are redrawn, so the model learns detail, not only denoising;
  # a small amplitude-spectrum loss (--lambda_spectral 0.3) asks for the truth's detail energy without asking where
  # it lies (docs/RESULTS.md, "A spectral loss").
  local out=$1 steps=$2
  shift 2
  [ "$(trained_steps "$out")" -ge "$steps" ] && return 0
  # shellcheck disable=SC2086,SC2046
  $ACCELERATE train_scripts/train_teasr_lora.py --pretrained_model_name_or_path "$RUNS/flow_base" --full_finetune \
    $COMMON --train_batch_size "$BATCH_SIZE" --learning_rate 2e-4 --lr_warmup_steps 0 --max_train_steps "$steps" \
    --checkpointing_steps 100 --lq_anchor_prob 0 --lq_bridge_prob 1 --lq_bridge_start_prob 0.75 --lambda_flow 0 \
    --reconstruction_loss l1 --lambda_spectral 0.3 --zero_init_output --use_ema --ema_decay 0.99 \
    --min_crop_gradient 0.01 --output_dir "$out" $(resume_flag "$out") $DISTILL_FLAGS "$@"
}

ablations() {  # each variant and the run it is compared with: same base, same short schedule
  distil "$RUNS/teasr_short" "$ABLATION_STEPS" --reconstruction_only
  distil "$RUNS/coupled" "$ABLATION_STEPS" --reconstruction_only --coupled_timestep
  distil "$RUNS/no_rect" "$ABLATION_STEPS" --reconstruction_only --no_rectification
  distil "$RUNS/critic" "$ABLATION_STEPS"  # with the self-adversarial term (critic heads, lambda_adv 0.1)
}

if has_stage data; then
  # Kept if already built from the current sources and scales; rebuilt if interrupted or built by another recipe.
  $PY train_scripts/teasr_mini/prepare_data.py --output_dir "$DATA" --if_stale
fi

train_base() {  # train_base OUTPUT_DIR STEPS [extra flags...]: the flow-matching base, from scratch
  local out=$1 steps=$2
  shift 2
  # shellcheck disable=SC2086,SC2046
  $ACCELERATE train_scripts/train_flow_sr.py --full_finetune --model_config "$MODEL_CONFIG" --zero_init_output \
    $COMMON --train_batch_size "$BATCH_SIZE" --learning_rate 2e-4 \
    --max_train_steps "$steps" --output_dir "$out" $(resume_flag "$out") "$@"
}

if has_stage base && has_stage distill && [ "$TIME_BUDGET_MINUTES" != 0 ] \
  && [ ! -f "$RUNS/plan.env" ] && [ ! -f "$RUNS/flow_base/model_index.json" ]; then
  # Timing runs (thrown away): PROBE_STEPS base steps on every core, then 3/5 as many distillation steps of two runs
  # side by side on one core each, as the main run and the ablations train; seconds per step from checkpoint times.
  probe=$RUNS/probe
  rm -rf "$probe"
  mkdir -p "$probe"
  train_base "$probe/flow_base" "$PROBE_STEPS" --checkpointing_steps $((PROBE_STEPS / 4)) 2>&1 | tee "$probe/base.log"
  probe_distil() {  # probe_distil NAME: one of the two side-by-side distillation timing runs
    RUNS=$probe DISTILL_FLAGS="$DISTILL_FLAGS --checkpointing_steps $((PROBE_STEPS / 5))" OMP_NUM_THREADS=1 \
      distil "$probe/$1" $((PROBE_STEPS * 3 / 5)) --reconstruction_only
  }
  probe_distil other > "$probe/other.log" 2>&1 &
  probe_distil beside 2>&1 | tee "$probe/beside.log"
  wait $!
  plan=$($PY train_scripts/teasr_mini/plan_steps.py cpu --base_log "$probe/base.log" \
    --beside_log "$probe/beside.log" --budget_minutes "$TIME_BUDGET_MINUTES" \
    --elapsed_seconds $(($(date +%s) - RECIPE_STARTED)) --flow_steps "$FLOW_STEPS" \
    --distill_steps "$DISTILL_STEPS" --ablation_steps "$ABLATION_STEPS")
  echo "$plan" > "$RUNS/plan.env"
  rm -rf "$probe"
  # shellcheck disable=SC1091
  source "$RUNS/plan.env"
  echo "recipe: $plan (time budget $TIME_BUDGET_MINUTES minutes)"
fi
# Main-run steps taken on one core while the four ablations train on the other: about as long as they take (the
# critic's run costs twice the others').
PARALLEL_STEPS=${PARALLEL_STEPS:-$((5 * ABLATION_STEPS))}

if has_stage base && [ "$(trained_steps "$RUNS/flow_base")" -lt "$FLOW_STEPS" ]; then
  train_base "$RUNS/flow_base" "$FLOW_STEPS" --validation_image examples/astronaut_lq.png --validation_steps 1000
fi

distil_main() {  # distil_main STEPS: the release's run, to STEPS steps (resuming from its latest checkpoint)
  distil "$RUNS/teasr" "$1" --reconstruction_only --validation_image examples/astronaut_lq.png --validation_steps 1000
}

# With both stages, the ablations train on the second core while the main run takes its first PARALLEL_STEPS steps on
# the first (two one-core runs take 1.2x the steps per second of one run on both cores: 0.49 s per step each against
# 0.29 s); then the main run resumes on every core.
ablations_pid=""
if has_stage ablations && has_stage distill; then
  OMP_NUM_THREADS=1 ablations &
  ablations_pid=$!
  OMP_NUM_THREADS=1 distil_main $((PARALLEL_STEPS < DISTILL_STEPS ? PARALLEL_STEPS : DISTILL_STEPS))
  wait "$ablations_pid"
elif has_stage ablations; then
  ablations
fi
if has_stage distill; then
  distil_main "$DISTILL_STEPS"
fi

if has_stage choose; then
  # The default start: the best 1-step PSNR on crops of TRAINING photos (never the held-out set), among the LQ start
  # (`lq`) and the noise start at several levels.
  $PY train_scripts/teasr_mini/choose_start.py --model "$RUNS/teasr" --data "$DATA/train" \
    --levels lq 1.0 0.6 0.4 0.3 0.2 0.1 0.05 0.02 \
    | $PY -c 'import json, sys; print(json.load(sys.stdin)["best"])' > "$RUNS/start_timestep.txt"
fi
START=${START:-$(cat "$RUNS/start_timestep.txt" 2>/dev/null || echo 1.0)}
if [ "$START" = lq ]; then START_MODE=lq START_T=1.0; else START_MODE=noise START_T=$START; fi

if has_stage eval; then
  # The distilled model on both protocols at 1/2/4/8 steps with the baselines; the flow base (at its own start
  # level, T = 1) and the ablations, also at 1/2/4/8 steps, on the training degradation family.
  mkdir -p "$RUNS/eval"
  ev() {  # ev NAME PROTOCOL FOLDER STEPS START_MODE START_LEVEL [extra flags...]
    local name=$1 protocol=$2 folder=$3 steps=$4 mode=$5 level=$6
    shift 6
    [ -f "$RUNS/eval/${name}_${protocol}.json" ] && return 0
    # shellcheck disable=SC2086
    $PY -m pipeline_teasr.cli eval --gt "$DATA/heldout" --degradation "$protocol" --seed 0 --model "$folder" \
      --steps $steps --start "$mode" --start-timestep "$level" --json "$RUNS/eval/${name}_${protocol}.json" \
      --name "teasr-mini heldout" --quiet "$@"
  }
  ev teasr light "$RUNS/teasr" "1 2 4 8" "$START_MODE" "$START_T" --baseline bicubic lanczos \
    --save-images "$RUNS/eval/images"
  ev teasr bicubic "$RUNS/teasr" "1 2 4 8" "$START_MODE" "$START_T" --baseline bicubic lanczos
  ev base light "$RUNS/flow_base" "1 2 4 8" noise 1.0
  for model in teasr_short coupled no_rect critic; do
    [ -f "$RUNS/$model/model_index.json" ] && ev "$model" light "$RUNS/$model" "1 2 4 8" "$START_MODE" "$START_T"
  done
fi

if has_stage report; then
  $PY train_scripts/teasr_mini/report.py --runs "$RUNS/eval" --out docs
  # Crops of the scikit-image held-out photos (public domain / CC0) as the evaluation scored them.
  shown=()
  for photo in "$DATA"/heldout/skimage_*.png; do
    [ -f "$photo" ] && shown+=("$(basename "$photo" .png)")
  done
  if [ -d "$RUNS/eval/images" ] && [ ${#shown[@]} -gt 0 ]; then
    $PY train_scripts/teasr_mini/comparison.py --eval_dir "$RUNS/eval/images" --gt "$DATA/heldout" \
      --names "${shown[@]}" --out docs/teasr_mini_comparison.png
  fi
fi

if has_stage export; then
  $PY -m pipeline_teasr.cli export model_card --model "$RUNS/teasr" --overwrite --model-name teasr-mini \
    --card-json "$RUNS/eval/teasr_light.json" "$RUNS/eval/teasr_bicubic.json" \
    --training-recipe train_scripts/teasr_mini/RECIPE.md \
    --card-image docs/teasr_mini_steps.png docs/teasr_mini_comparison.png
  $PY - "$START_MODE" "$START_T" <<'PYTHON'
import sys
from pipeline_teasr import TEASRPipeline
pipe = TEASRPipeline.from_pretrained("model_card")
pipe.register_to_config(default_start=sys.argv[1], default_start_timestep=float(sys.argv[2]))
pipe.save_pretrained("model_card")
PYTHON
fi
