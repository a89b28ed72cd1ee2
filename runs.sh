#!/usr/bin/env bash
# Every configuration of both studies, then the figures and tables (plot.py).
#
#   bash runs.sh                         # the whole study at the reference epochs
#   QUICK=1 bash runs.sh                 # every configuration, 2 small batches, 1 epoch: minutes on a CPU
#   ONLY='^vit_L6' bash runs.sh          # only configurations whose name matches (grep -E)
#   DRY_RUN=1 bash runs.sh               # print the commands, run nothing
#   SEEDS="1 2 3" GPUS="0 1" bash runs.sh
#
# Settings (environment variables):
#   QUICK=1        smoke sweep: --limit_batches 2 --epochs 1, small LM windows; logs go to logs/quick
#   EPOCHS_LM      LM epochs (10, as the reference)       EPOCHS_VIT   ViT epochs (50, as the reference)
#   SEEDS          seeds per configuration ("42")         ONLY         a grep -E pattern on the names
#   DRY_RUN=1      print the commands only                DEVICE       auto | cpu | cuda (auto)
#   LOG_DIR        logs (logs/quick with QUICK=1)         PYTHON       the interpreter (python3)
#   LM_DATA        ./data/wikitext2                       VIT_DATA     ./data/cifar10
#   EMBEDDINGS     .npz of pretrained LM embeddings (the reference's frozen GPT-1 embeddings); unset:
#                  embeddings are learned
#   GPUS           "0 1 ...": run configurations in parallel, one per GPU
#   SHARD          i/N: run only every N-th configuration starting at the i-th (0-based), for N machines
#
# A configuration whose summary.json exists (with enough epochs) is skipped; an interrupted one is
# resumed from its checkpoint. A failing configuration does not stop the sweep: the failures are
# listed at the end and the exit code is 1.
set -uo pipefail
cd "$(dirname "$0")" || exit 2

QUICK=${QUICK:-0}
EPOCHS_LM=${EPOCHS_LM:-10}
EPOCHS_VIT=${EPOCHS_VIT:-50}
SEEDS=${SEEDS:-42}
ONLY=${ONLY:-}
DRY_RUN=${DRY_RUN:-0}
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python3}
LM_DATA=${LM_DATA:-./data/wikitext2}
VIT_DATA=${VIT_DATA:-./data/cifar10}
EMBEDDINGS=${EMBEDDINGS:-}
GPUS=${GPUS:-}
SHARD=${SHARD:-0/1}
if [[ $QUICK == 1 ]]; then
  LOG_DIR=${LOG_DIR:-logs/quick}
  EPOCHS_LM=1 EPOCHS_VIT=1
  QUICK_LM=(--limit_batches 2 --batch_size 4 --seq_len 64)
  QUICK_VIT=(--limit_batches 2)
else
  LOG_DIR=${LOG_DIR:-logs}
  QUICK_LM=() QUICK_VIT=()
fi

# name | script | the flags that differ from the script's defaults
CONFIGS=(
  # Language model, the reference study (LSTM, batch 16, lr 1e-3)
  "lm_lstm_L1_adam|train_lm.py|--model lstm --layers 1 --optimizer adam"
  "lm_lstm_L1_adamw|train_lm.py|--model lstm --layers 1 --optimizer adamw"
  "lm_lstm_L1_sgd|train_lm.py|--model lstm --layers 1 --optimizer sgd"
  "lm_lstm_L1_momentum|train_lm.py|--model lstm --layers 1 --optimizer momentum"
  "lm_lstm_L2_adamw|train_lm.py|--model lstm --layers 2 --optimizer adamw"
  "lm_lstm_L4_adamw|train_lm.py|--model lstm --layers 4 --optimizer adamw"
  # ViT, the reference study (batch 128, lr 3e-4)
  "vit_L2_adam|train_vit.py|--layers 2 --optimizer adam"
  "vit_L2_adamw|train_vit.py|--layers 2 --optimizer adamw"
  "vit_L2_sgd|train_vit.py|--layers 2 --optimizer sgd"
  "vit_L2_momentum|train_vit.py|--layers 2 --optimizer momentum"
  "vit_L4_adamw|train_vit.py|--layers 4 --optimizer adamw"
  "vit_L6_adamw|train_vit.py|--layers 6 --optimizer adamw"
  "vit_L6_adamw_postnorm|train_vit.py|--layers 6 --optimizer adamw --block postnorm"
  # Beyond the report: the other cores at LM configurations 1 and 5
  "lm_gru_L1_adam|train_lm.py|--model gru --layers 1 --optimizer adam"
  "lm_gru_L2_adamw|train_lm.py|--model gru --layers 2 --optimizer adamw"
  "lm_transformer_prenorm_L1_adam|train_lm.py|--model transformer --block prenorm --layers 1 --optimizer adam"
  "lm_transformer_prenorm_L2_adamw|train_lm.py|--model transformer --block prenorm --layers 2 --optimizer adamw"
  "lm_transformer_postnorm_L1_adam|train_lm.py|--model transformer --block postnorm --layers 1 --optimizer adam"
  "lm_transformer_postnorm_L2_adamw|train_lm.py|--model transformer --block postnorm --layers 2 --optimizer adamw"
)

# The selected runs, one "exp_id|script|flags" line each: ONLY, then SEEDS, then SHARD.
select_runs() {
  local entry name script args seed index=0 shard_i=${SHARD%/*} shard_n=${SHARD#*/}
  for entry in "${CONFIGS[@]}"; do
    IFS='|' read -r name script args <<<"$entry"
    [[ -z $ONLY ]] || grep -Eq -- "$ONLY" <<<"$name" || continue
    for seed in $SEEDS; do
      if (( index % shard_n == shard_i )); then
        echo "${name}_s${seed}|$script|$args --seed $seed"
      fi
      index=$((index + 1))
    done
  done
}

command_for() {  # exp_id script args -> the full command line, one word per line
  local exp_id=$1 script=$2 args=$3 extra=()
  local -a flags
  read -r -a flags <<<"$args"
  if [[ $script == train_lm.py ]]; then
    extra=(--epochs "$EPOCHS_LM" --data_folder "$LM_DATA" "${QUICK_LM[@]}")
    [[ -z $EMBEDDINGS ]] || extra+=(--embeddings "$EMBEDDINGS")
  else
    extra=(--epochs "$EPOCHS_VIT" --data_folder "$VIT_DATA" "${QUICK_VIT[@]}")
  fi
  printf '%s\n' "$PYTHON" "$script" "${flags[@]}" "${extra[@]}" --device "$DEVICE" \
    --log_dir "$LOG_DIR" --exp_id "$exp_id" --resume --no_progress
}

finished() {  # a summary.json with at least the requested epochs
  local summary=$LOG_DIR/$1/summary.json want=$2 have
  [[ -f $summary ]] || return 1
  have=$(grep -o '"epochs": *[0-9]*' "$summary" | grep -o '[0-9]*$')
  [[ -n $have ]] && (( have >= want ))
}

run_one() {  # exp_id script args [gpu]
  local exp_id=$1 script=$2 args=$3 gpu=${4:-} epochs=$EPOCHS_VIT
  local -a cmd
  [[ $script == train_lm.py ]] && epochs=$EPOCHS_LM
  mapfile -t cmd < <(command_for "$exp_id" "$script" "$args")
  if [[ $DRY_RUN == 1 ]]; then
    echo "${gpu:+CUDA_VISIBLE_DEVICES=$gpu }${cmd[*]}"
    return 0
  fi
  if finished "$exp_id" "$epochs"; then
    echo "== $exp_id: done, skipped"
    return 0
  fi
  echo "== $exp_id${gpu:+ on GPU $gpu}: ${cmd[*]}"
  mkdir -p "$LOG_DIR"
  local status
  if [[ -n $gpu ]]; then
    CUDA_VISIBLE_DEVICES=$gpu "${cmd[@]}" >"$LOG_DIR/$exp_id.log" 2>&1
    status=$?
  else
    "${cmd[@]}" 2>&1 | tee "$LOG_DIR/$exp_id.log"
    status=${PIPESTATUS[0]}
  fi
  if (( status == 130 )); then  # Ctrl-C: stop the sweep; running it again resumes
    echo "== $exp_id: interrupted; run the same command again to resume"
    exit 130
  fi
  if (( status != 0 )); then
    echo "== $exp_id: FAILED (exit $status, log $LOG_DIR/$exp_id.log)"
    echo "$exp_id (exit $status)" >>"$FAILED"
  fi
  return 0
}

main() {
  if ! [[ $SHARD =~ ^[0-9]+/[1-9][0-9]*$ ]] || (( ${SHARD%/*} >= ${SHARD#*/} )); then
    echo "error: SHARD must be i/N with 0 <= i < N, got '$SHARD'" >&2
    exit 2
  fi
  local -a runs
  mapfile -t runs < <(select_runs)
  if (( ${#runs[@]} == 0 )); then
    echo "error: no configuration matches ONLY='$ONLY' (shard $SHARD)" >&2
    exit 2
  fi
  FAILED=$(mktemp)
  trap 'rm -f "$FAILED"' EXIT
  local line exp_id script args
  if [[ -z $GPUS ]]; then
    for line in "${runs[@]}"; do
      IFS='|' read -r exp_id script args <<<"$line"
      run_one "$exp_id" "$script" "$args"
    done
  else
    # One worker per GPU, each taking every k-th run of the list; the workers run in parallel.
    local -a gpus
    read -r -a gpus <<<"$GPUS"
    local k i
    for k in "${!gpus[@]}"; do
      (
        for (( i = k; i < ${#runs[@]}; i += ${#gpus[@]} )); do
          IFS='|' read -r exp_id script args <<<"${runs[i]}"
          run_one "$exp_id" "$script" "$args" "${gpus[k]}"
        done
      ) &
    done
    wait
  fi
  [[ $DRY_RUN == 1 ]] && return 0
  echo "== plots and tables"
  "$PYTHON" plot.py --log_dir "$LOG_DIR" || echo "plot.py failed" >>"$FAILED"
  if [[ -s $FAILED ]]; then
    echo "== failed:"
    sed 's/^/   /' "$FAILED"
    exit 1
  fi
  echo "== all done: $LOG_DIR/report"
}

main
