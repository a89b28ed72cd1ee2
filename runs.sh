#!/usr/bin/env bash
# Every configuration of both studies, then the figures and tables (plot.py).
#
#   bash runs.sh                         # the whole study at the reference epochs
#   QUICK=1 bash runs.sh                 # every configuration, 2 small batches, 1 epoch: minutes on a CPU
#   ONLY='^vit_L6' bash runs.sh          # only configurations whose name matches (grep -E)
#   DRY_RUN=1 bash runs.sh               # print the commands and the plan, run nothing
#   SEEDS="1 2 3" GPUS="0 1" bash runs.sh
#   RUN_GROUPS=reference bash runs.sh        # only the report's 13 configurations
#
# Groups: reference (the report's 13 configurations), extras (GRU and Transformer LMs), improved
# (ViT-6 pre- and post-norm with the stronger recipe, LSTM-1 with the improved LM flags), norms
# (ViT-6 pre/post-norm x with/without warmup, 3 seeds each, with per-layer gradient norms).
#
# Settings (environment variables):
#   QUICK=1        smoke sweep: --limit_batches 2 --epochs 1, small and narrow LMs, warmups of one
#                  epoch; logs go to logs/quick
#   EPOCHS_LM      LM epochs (10, as the reference)       EPOCHS_VIT   ViT epochs (50, as the reference)
#   RUN_GROUPS     groups to run ("reference extras improved norms")
#   SEEDS          seeds per configuration ("42")         ONLY         a grep -E pattern on the names
#                                                                      (with or without the _s<seed>)
#   NORMS_SEEDS    seeds of the norms group ("1 2 3")
#   DRY_RUN=1      the commands and the plan only         DEVICE       auto | cpu | cuda (cuda with GPUS
#                                                                      or in the image, else auto)
#   LOG_DIR        logs (logs/quick with QUICK=1)         PYTHON       the interpreter (python3)
#   LM_DATA        ./data/wikitext2                       VIT_DATA     ./data/cifar10
#   EMBEDDINGS     the reference group's LM embeddings, frozen: gpt1 (GPT-1's, as the report), an .npz,
#                  or none (learned); auto (default): gpt1 unless LM_DATA holds word-level text only,
#                  or with QUICK
#   GPUS           "0 1 ...": run configurations in parallel, one per GPU (each with its share of
#                  the CPU threads); Ctrl-C stops them all
#   TRAIN_ARGS     flags added to every run after its own, e.g. "--compile" or "--precision fp32"
#   SHARD          i/N: run only every N-th configuration starting at the i-th (0-based), for N machines
#
# Before the first run, plan.py checks the device and the data (fetching it once) and prints the plan:
# runs, device, estimated time and disk. Each run is named as its trainer names it by default. A
# configuration whose summary.json exists (with enough epochs) is skipped; an interrupted one is
# resumed from its checkpoint. A failing configuration does not stop the sweep: the failures are
# listed at the end and the exit code is 1.
set -uo pipefail
cd "$(dirname "$0")" || exit 2

flag() {  # name value -> 1 or 0, or refuse
  case ${2,,} in
    1 | true | yes | on) echo 1 ;;
    0 | false | no | off | "") echo 0 ;;
    *) echo "error: $1 must be 1, true or yes (or 0, false, no), got '$2'" >&2; return 2 ;;
  esac
}
QUICK=$(flag QUICK "${QUICK:-0}") || exit 2
DRY_RUN=$(flag DRY_RUN "${DRY_RUN:-0}") || exit 2
EPOCHS_LM=${EPOCHS_LM:-10}
EPOCHS_VIT=${EPOCHS_VIT:-50}
SEEDS=${SEEDS:-42}
NORMS_SEEDS=${NORMS_SEEDS:-1 2 3}
RUN_GROUPS=${RUN_GROUPS:-reference extras improved norms}
ONLY=${ONLY:-}
GPUS=${GPUS:-}
DEVICE=${DEVICE:-$([[ -n $GPUS ]] && echo cuda || echo auto)}
PYTHON=${PYTHON:-python3}
LM_DATA=${LM_DATA:-./data/wikitext2}
VIT_DATA=${VIT_DATA:-./data/cifar10}
EMBEDDINGS=${EMBEDDINGS:-auto}
TRAIN_ARGS=${TRAIN_ARGS:-}
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

# group | name | script | the flags that differ from the script's defaults. The name is the one the
# script derives from those flags (a test checks it), so a run made by hand finds the sweep's and back.
CONFIGS=(
  # Language model, the reference study (LSTM, batch 16, lr 1e-3)
  "reference|lm_lstm_L1_adam|train_lm.py|--optimizer adam"
  "reference|lm_lstm_L1_adamw|train_lm.py|--optimizer adamw"
  "reference|lm_lstm_L1_sgd|train_lm.py|--optimizer sgd"
  "reference|lm_lstm_L1_momentum|train_lm.py|--optimizer momentum"
  "reference|lm_lstm_L2_adamw|train_lm.py|--layers 2 --optimizer adamw"
  "reference|lm_lstm_L4_adamw|train_lm.py|--layers 4 --optimizer adamw"
  # ViT, the reference study (batch 128, lr 3e-4)
  "reference|vit_L2_adam|train_vit.py|--layers 2 --optimizer adam"
  "reference|vit_L2_adamw|train_vit.py|--layers 2 --optimizer adamw"
  "reference|vit_L2_sgd|train_vit.py|--layers 2 --optimizer sgd"
  "reference|vit_L2_momentum|train_vit.py|--layers 2 --optimizer momentum"
  "reference|vit_L4_adamw|train_vit.py|--layers 4 --optimizer adamw"
  "reference|vit_L6_adamw|train_vit.py|--layers 6 --optimizer adamw"
  "reference|vit_L6_adamw_postnorm|train_vit.py|--layers 6 --optimizer adamw --block postnorm"
  # Beyond the report: the other cores at LM configurations 1 and 5
  "extras|lm_gru_L1_adam|train_lm.py|--model gru --optimizer adam"
  "extras|lm_gru_L2_adamw|train_lm.py|--model gru --layers 2 --optimizer adamw"
  "extras|lm_transformer_L1_adam|train_lm.py|--model transformer --optimizer adam"
  "extras|lm_transformer_L2_adamw|train_lm.py|--model transformer --layers 2 --optimizer adamw"
  "extras|lm_transformer_L1_adam_postnorm|train_lm.py|--model transformer --optimizer adam --block postnorm"
  "extras|lm_transformer_L2_adamw_postnorm|train_lm.py|--model transformer --layers 2 --optimizer adamw --block postnorm"
  # The stronger recipes (--help lists what they set), beside the reference runs they improve on
  "improved|vit_L6_adamw_improved|train_vit.py|--recipe improved --layers 6"
  "improved|vit_L6_adamw_improved_postnorm|train_vit.py|--recipe improved --layers 6 --block postnorm"
  "improved|lm_lstm_L1_adamw_improved|train_lm.py|--recipe improved"
  # Pre- vs post-norm with and without warmup, at the reference settings, with gradient norms (NORMS_SEEDS)
  "norms|vit_L6_adamw_grad_norms|train_vit.py|--layers 6 --grad_norms"
  "norms|vit_L6_adamw_warmup_epochs5_grad_norms|train_vit.py|--layers 6 --warmup_epochs 5 --grad_norms"
  "norms|vit_L6_adamw_postnorm_grad_norms|train_vit.py|--layers 6 --block postnorm --grad_norms"
  "norms|vit_L6_adamw_postnorm_warmup_epochs5_grad_norms|train_vit.py|--layers 6 --block postnorm --warmup_epochs 5 --grad_norms"
)

frozen() {  # group script -> whether the run freezes EMBEDDINGS: the report's LMs did; the others learn theirs
  [[ $1 == reference && $2 == train_lm.py && $EMB != none ]]
}

# The selected runs, one "exp_id|script|flags|group" line each: RUN_GROUPS, the seeds, ONLY (on the
# configuration's name or the run's, with its seed), then SHARD.
select_runs() {
  local entry group name script args seed seeds file index=0 shard_i=${SHARD%/*} shard_n=${SHARD#*/}
  for entry in "${CONFIGS[@]}"; do
    IFS='|' read -r group name script args <<<"$entry"
    [[ " $RUN_GROUPS " == *" $group "* ]] || continue
    if frozen "$group" "$script"; then  # named as the script names --embeddings: by the file's stem
      file=${EMB##*/}
      name+=_embeddings-${file%.*}
    fi
    seeds=$SEEDS
    [[ $group == norms ]] && seeds=$NORMS_SEEDS
    for seed in $seeds; do
      [[ -z $ONLY ]] || printf '%s\n' "$name" "${name}_s$seed" | grep -Eq -- "$ONLY" || continue
      if (( index % shard_n == shard_i )); then
        echo "${name}_s${seed}|$script|$args --seed $seed|$group"
      fi
      index=$((index + 1))
    done
  done
}

command_for() {  # exp_id script args group -> the full command line, one word per line
  local exp_id=$1 script=$2 args=$3 group=$4 extra=()
  local -a flags train_args
  read -r -a flags <<<"$args"
  read -r -a train_args <<<"$TRAIN_ARGS"
  if [[ $QUICK == 1 ]]; then  # one epoch: a warmup stays a warmup (over both steps), but fits in it
    local i
    for i in "${!flags[@]}"; do
      [[ ${flags[i]} == --warmup_epochs ]] && flags[i+1]=1
    done
    if [[ " ${flags[*]} " == *" --recipe "* && " ${flags[*]} " != *" --warmup_epochs "* ]]; then
      flags+=(--warmup_epochs 1)  # the recipes warm up for longer
    fi
  fi
  if [[ $script == train_lm.py ]]; then
    extra=(--epochs "$EPOCHS_LM" --data_folder "$LM_DATA" "${QUICK_LM[@]}")
    if frozen "$group" "$script"; then
      extra+=(--embeddings "$EMB")
    elif [[ $QUICK == 1 ]]; then  # learned embeddings, narrow: a smoke run's weights take megabytes
      extra+=(--embedding_size 64 --hidden_size 64)
    fi
  else
    extra=(--epochs "$EPOCHS_VIT" --data_folder "$VIT_DATA" "${QUICK_VIT[@]}")
  fi
  printf '%s\n' "$PYTHON" "$script" "${flags[@]}" "${train_args[@]}" "${extra[@]}" --device "$DEVICE" \
    --log_dir "$LOG_DIR" --exp_id "$exp_id" --resume --no_progress
}

finished() {  # a summary.json with at least the requested epochs
  local summary=$LOG_DIR/$1/summary.json want=$2 have
  [[ -f $summary ]] || return 1
  have=$(grep -o '"epochs": *[0-9]*' "$summary" | grep -o '[0-9]*$')
  [[ -n $have ]] && (( have >= want ))
}

run_one() {  # exp_id script args group [gpu]
  local exp_id=$1 script=$2 args=$3 group=$4 gpu=${5:-} epochs=$EPOCHS_VIT
  local -a cmd
  [[ $script == train_lm.py ]] && epochs=$EPOCHS_LM
  mapfile -t cmd < <(command_for "$exp_id" "$script" "$args" "$group")
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
  if (( status == 130 || status == 143 )); then  # Ctrl-C or SIGTERM: stop the sweep; running it again resumes
    echo "== $exp_id: interrupted; run the same command again to resume"
    exit 130
  fi
  if (( status != 0 )); then
    echo "== $exp_id: FAILED (exit $status, log $LOG_DIR/$exp_id.log)"
    echo "$exp_id (exit $status)" >>"$FAILED"
  fi
  return 0
}

check_settings() {
  local v
  for v in $SEEDS $NORMS_SEEDS; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "error: SEEDS and NORMS_SEEDS must be integers, got '$v'" >&2; exit 2; }
  done
  for v in EPOCHS_LM EPOCHS_VIT; do
    [[ ${!v} =~ ^0*[1-9][0-9]*$ ]] || { echo "error: $v must be a positive integer, got '${!v}'" >&2; exit 2; }
  done
  [[ $DEVICE =~ ^(auto|cpu|cuda)$ ]] || { echo "error: DEVICE must be auto, cpu or cuda, got '$DEVICE'" >&2; exit 2; }
  [[ -z $ONLY ]] || grep -Eq -- "$ONLY" <<<"" 2>/dev/null; (( $? < 2 )) \
    || { echo "error: ONLY is not a valid grep -E pattern: '$ONLY'" >&2; exit 2; }
  [[ $SHARD =~ ^0*[0-9]+/0*[1-9][0-9]*$ ]] && SHARD="$((10#${SHARD%/*}))/$((10#${SHARD#*/}))"
}

plan() {  # runs... -> plan.py's input: the name, group and command of each run, one line each
  local line exp_id script args group
  local -a cmd
  for line in "$@"; do
    IFS='|' read -r exp_id script args group <<<"$line"
    mapfile -t cmd < <(command_for "$exp_id" "$script" "$args" "$group")
    printf '%s\t%s\t' "$exp_id" "$group"
    printf '%q ' "${cmd[@]:1}"
    echo
  done
}

descendants() {  # pid -> every process below it, deepest first (from /proc: no procps needed)
  local child
  for child in $(grep -l "^PPid:[[:space:]]*$1\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3); do
    descendants "$child"
    echo "$child"
  done
}

embeddings() {  # EMBEDDINGS, with auto resolved: GPT-1's for the token files (there, or to be fetched)
  if [[ $EMBEDDINGS != auto ]]; then
    echo "$EMBEDDINGS"
  elif [[ $QUICK != 1 && ( -f $LM_DATA/wiki.train.npz || ! -f $LM_DATA/train.txt ) ]]; then
    echo gpt1
  else
    echo none
  fi
}

interrupted() {  # Ctrl-C or TERM: stop every run, the parallel workers' too
  trap '' INT TERM
  echo "== interrupted: stopping every run; run the same command again to resume" >&2
  local pids
  pids=$(descendants $$)
  # shellcheck disable=SC2086
  [[ -z $pids ]] || kill -TERM $pids 2>/dev/null
  wait
  exit 130
}

main() {
  check_settings
  EMB=$(embeddings)
  if ! [[ $SHARD =~ ^[0-9]+/[1-9][0-9]*$ ]] || (( ${SHARD%/*} >= ${SHARD#*/} )); then
    echo "error: SHARD must be i/N with 0 <= i < N, got '$SHARD'" >&2
    exit 2
  fi
  local g
  for g in $RUN_GROUPS; do
    if ! [[ $g =~ ^(reference|extras|improved|norms)$ ]]; then
      echo "error: unknown group '$g' in RUN_GROUPS; choose from reference extras improved norms" >&2
      exit 2
    fi
  done
  local -a runs
  mapfile -t runs < <(select_runs | awk -F'|' '!seen[$1]++')  # a repeated seed is one run, run once
  if (( ${#runs[@]} == 0 )); then
    echo "error: no configuration matches ONLY='$ONLY' in RUN_GROUPS='$RUN_GROUPS' (shard $SHARD)" >&2
    exit 2
  fi
  local -a gpus
  read -r -a gpus <<<"$GPUS"
  # the device, the data and the embeddings checked (fetched once) before any run starts, and the cost
  if [[ $DRY_RUN != 1 ]]; then
    plan "${runs[@]}" | "$PYTHON" plan.py --workers "${#gpus[@]}" || exit 2
  fi
  FAILED=$(mktemp)
  trap 'rm -f "$FAILED"' EXIT
  trap interrupted INT TERM
  local line exp_id script args group
  if [[ -z $GPUS ]]; then
    for line in "${runs[@]}"; do
      IFS='|' read -r exp_id script args group <<<"$line"
      run_one "$exp_id" "$script" "$args" "$group"
    done
  else
    # One worker per GPU, each taking every k-th run of the list; the workers run in parallel.
    local k i threads
    threads=$(( $(nproc) / ${#gpus[@]} ))
    for k in "${!gpus[@]}"; do
      (
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}
        for (( i = k; i < ${#runs[@]}; i += ${#gpus[@]} )); do
          IFS='|' read -r exp_id script args group <<<"${runs[i]}"
          run_one "$exp_id" "$script" "$args" "$group" "${gpus[k]}"
        done
      ) &
    done
    wait
  fi
  if [[ $DRY_RUN == 1 ]]; then  # the same plan, from what is in place (nothing is fetched)
    plan "${runs[@]}" | "$PYTHON" plan.py --workers "${#gpus[@]}" --dry_run
    return
  fi
  if (( $(wc -l <"$FAILED") == ${#runs[@]} )); then
    echo "== every run failed (logs in $LOG_DIR/*.log); no report"
    exit 1
  fi
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
