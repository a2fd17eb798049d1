#!/usr/bin/env bash
# The GPU figures in one go, for a machine with a CUDA device (README: "Performance on a GPU"):
# training speed (StarSpace-shaped, document-embedding, SICK hcnn/bilstm), MovieLens (a)/(b),
# serving all three encoders with INFERENCE_PREFERRED_MODE=embedding and =classification, and
# the tests marked `gpu`. Steps run in order of importance under one time budget; each writes its
# whole output to a log under OUT and the last lines of each go to standard output.
#
#   benchmarks/gpu.sh [DATA_DIR (ml-100k/ and sick/; default ../shared/data)] [OUT (default gpu-results)]
#       [BUDGET_SECONDS (default 900)]
set -u
data=${1:-../shared/data}
out=${2:-gpu-results}
deadline=$((SECONDS + ${3:-900}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1

# step NAME LOG LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (less if the budget is
# nearly spent), appending to OUT/LOG; prints its exit status, its time and its last lines.
step() {
    local name=$1 log=$out/$2 limit=$3
    shift 3
    local left=$((deadline - SECONDS - 5))
    if ((left < 20)); then
        echo "== $name: skipped, budget spent" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    local started=$SECONDS
    echo "== $name ($*)" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - started)) s" | tee -a "$log"
    tail -n "${TAIL:-14}" "$log" | grep -v '^== '
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,utilization.gpu --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
    nproc
} >"$out/env.log" 2>&1
cat "$out/env.log"

step "gpu tests" tests.log 90 python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
TAIL=6 step "train_speed starspace" train.log 150 \
    python3 benchmarks/train_speed.py --workload starspace --repeat 1
TAIL=6 step "train_speed docemb" train.log 150 \
    python3 benchmarks/train_speed.py --workload docemb --repeat 1
TAIL=4 step "movielens a,b" movielens.log 240 \
    python3 benchmarks/movielens.py --data "$data/ml-100k" --experiments a,b
for mode in embedding classification; do
    TAIL=16 INFERENCE_PREFERRED_MODE=$mode step "serve $mode" serve.log 240 \
        python3 benchmarks/serve.py --seconds 5
done
for encoder in hcnn bilstm; do
    TAIL=6 step "train_speed sick $encoder" train.log 90 \
        python3 benchmarks/train_speed.py --workload sick --encoder "$encoder" --sick "$data/sick" --repeat 1
done
TAIL=25 step "whole test suite on the GPU machine" tests.log 200 \
    python3 -m pytest -q --maxfail=40 -p no:cacheprovider --continue-on-collection-errors -n 6 tests
