#!/usr/bin/env bash
# One GPU check, ready to run from a fresh clone: the gpu-marked tests, then capture (g2interp vs
# TransformerLens, bf16 and fp32), greedy generation (vs transformers' generate), SAE training (vs
# SAELens) and moderation throughput, ending with one table. Designed to finish in under 8 minutes
# on one GPU, set-up included; each step's full output is kept in $LOG_DIR (default runs/gpu_check).
#
#   bash bench/gpu_check.sh          # CUDA: sets up .venv-gpu (torch pinned first: the CUDA build)
#   bash bench/gpu_check.sh --cpu    # a short version of every step on the CPU (uses .venv, `make setup`)
#   PYTHON=/path/to/python bash bench/gpu_check.sh [--cpu]   # an environment that has the packages
#   THREADS=1 bash bench/gpu_check.sh --cpu                   # torch threads for the benchmarks
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
    "") ;;
    --cpu) MODE=cpu ;;
    *) echo "usage: bash bench/gpu_check.sh [--cpu]" >&2; exit 2 ;;
esac
TORCH_VERSION=2.13.0
LOG_DIR=${LOG_DIR:-runs/gpu_check}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
START=$SECONDS

if [[ -z "${PYTHON:-}" ]]; then
    if [[ $MODE == cpu ]]; then
        make setup >/dev/null || exit 1
        PYTHON=.venv/bin/python
    else
        if [[ ! -x .venv-gpu/bin/python ]]; then
            echo "setting up .venv-gpu (torch==$TORCH_VERSION first, then the locked requirements)"
            python3 -m venv .venv-gpu || exit 1
            .venv-gpu/bin/python -m pip install --quiet --upgrade pip || exit 1
            .venv-gpu/bin/python -m pip install --quiet "torch==$TORCH_VERSION" || exit 1
            .venv-gpu/bin/python -m pip install --quiet -c requirements.lock -e ".[dev]" || exit 1
        fi
        PYTHON=.venv-gpu/bin/python
    fi
fi
if [[ $MODE == gpu ]]; then
    DEVICE=cuda
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "$PYTHON's torch sees no CUDA device; run on a GPU machine, or with --cpu for the CPU version" >&2
        exit 1
    fi
    GPU_NAME=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name())")
    CAPTURE_ARGS=(--batch 32 --seq 256 --repeats 10)
    GENERATE_ARGS=(--repeats 3)
    SAE_ARGS=(--steps 20 --d-sae 16384)
    MODERATION_ARGS=(--threads 1)
else
    DEVICE=cpu
    GPU_NAME="none (CPU version: $(nproc) cores)"
    CAPTURE_ARGS=(--batch 2 --seq 64 --repeats 2)
    GENERATE_ARGS=(--new-tokens 8 --batches 1 2 --repeats 1)
    SAE_ARGS=(--steps 2 --d-sae 2048 --batch 1024)
    MODERATION_ARGS=(--threads 1 --texts 4 --calls 20 --latency-calls 10 --full-logits-texts 1)
fi
THREAD_ARGS=(${THREADS:+--threads "$THREADS"})
echo "gpu_check ($MODE): $("$PYTHON" -c "import torch; print('torch', torch.__version__)"), device: $GPU_NAME"

STEPS=()
STATUS=()
SECS=()
RESULTS=()

# run NAME COMMAND...: the command's output goes to $LOG_DIR/NAME.log; its exit status and time are kept
run() {
    local name=$1
    shift
    local t0=$SECONDS
    echo "[$(date +%H:%M:%S)] $name: $*"
    "$@" >"$LOG_DIR/$name.log" 2>&1
    local rc=$?
    STEPS+=("$name")
    STATUS+=("$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")
    SECS+=("$((SECONDS - t0))")
    RESULTS+=("$(summary "$name" "$LOG_DIR/$name.log")")
}

# summary NAME LOG: the step's headline numbers, read off the tables its script prints
summary() {
    case $1 in
        tests) tail -n 1 "$2" | tr -d '=' | sed 's/^ *//' ;;
        capture-*) awk '/^g2interp run_with_cache/ {printf "%s tok/s, %s TransformerLens, %s of floor", $4, $5, $6}' "$2" ;;
        generate) awk '$2 == "g2interp" && $3 != "full" {printf "batch %s: %s tok/s, %s transformers, step %s floor, %s; ", $1, $3, $4, $6, $7}' "$2" ;;
        sae-train) awk '$2 == "g2interp" {printf "%s: %s tok/s, %s SAELens; ", $1, $3, $6}' "$2" ;;
        moderation) awk -F'|' '$3 ~ /probe heads/ {gsub(/ /, ""); printf "%s policies: %s texts/s (%sx naive); ", $2, $4, $5}
                             /^check_prompt latency/ {sub(/.*: /, ""); printf "check_prompt %s", $0}' "$2" ;;
    esac
}

run tests "$PYTHON" -m pytest -q -m gpu tests
for dtype in bf16:bfloat16 fp32:float32; do
    run "capture-${dtype%%:*}" "$PYTHON" bench/capture.py --device "$DEVICE" --dtype "${dtype#*:}" \
        "${CAPTURE_ARGS[@]}" "${THREAD_ARGS[@]}"
done
GEN_DTYPE=$([[ $MODE == gpu ]] && echo bfloat16 || echo float32)
run generate "$PYTHON" bench/generate.py --device "$DEVICE" --dtype "$GEN_DTYPE" "${GENERATE_ARGS[@]}" "${THREAD_ARGS[@]}"
run sae-train "$PYTHON" bench/sae_train.py --device "$DEVICE" "${SAE_ARGS[@]}" "${THREAD_ARGS[@]}"
run moderation "$PYTHON" bench/moderation.py "${MODERATION_ARGS[@]}"

echo
echo "gpu_check ($MODE) on $GPU_NAME, $((SECONDS - START)) s in all; full outputs in $LOG_DIR/"
printf '| %-12s | %-11s | %5s | %s\n' step status s result
printf '|%s|%s|%s|%s\n' "--------------" "-------------" "-------" "--------"
FAILED=0
for i in "${!STEPS[@]}"; do
    printf '| %-12s | %-11s | %5s | %s\n' "${STEPS[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${RESULTS[$i]}"
    [[ ${STATUS[$i]} == ok ]] || FAILED=1
done
exit $FAILED
