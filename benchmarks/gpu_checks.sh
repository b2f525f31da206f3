#!/usr/bin/env bash
# Every GPU figure of the README's benchmark table, in one run on a CUDA machine (about 8 minutes
# on an H200), each step under its own time limit so that one slow or failing step cannot take
# the others with it:
#
#   0. the doctor (python -m helpers doctor): the GPU, the autocast dtype, the kernels' own
#      self-check on this GPU and the full profile's timed plan with the share a 36-minute
#      budget chooses, as a student's machine shows them;
#   1. the fused kernels compiled on this GPU against the PyTorch path (tests/test_kernels.py -k cuda);
#   2. propagation forward + backward, every implementation side by side (benchmarks/propagation.py);
#   3. where a DySPN and a CSPN step spend their time (propagation.py --breakdown, torch.profiler),
#      and whole refiner training steps of the full profile, DySPN / CSPN (propagation.py --training);
#   4. the lean loading and evaluation path against the DataLoader (benchmarks/loading.py);
#   5. the full profile's whole chain, one seed, the report's setting (benchmarks/quality.py),
#      with its printed estimate against the time it took. If step 1 failed, step 5 runs on the
#      PyTorch path (propagation_backend=torch) so that its figures still come back.
#
#   bash benchmarks/gpu_checks.sh [DATA_ROOT]     # DATA_ROOT: a folder holding oxford-iiit-pet/
#
# Logs go to $OUT (default runs/gpu-checks/), one per step; the chain's checkpoints to $RUNS_DIR
# (default $OUT/runs).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-checks}
mkdir -p "$out"
data=${1:-${PETS_ROOT:-}}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log to $out/NAME.log, report exit status and time
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (at most ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(( $(date +%s) - start )) s"
    return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"

# with the budget a 60-minute Colab session is told to use: its choice on a real GPU, against the
# table of docs/running.md#the-full-profile-on-the-gpus-students-get
step doctor "${LIMIT_DOCTOR:-75}" env WORKBOOK_BUDGET="${BUDGET:-36}" "$py" -m helpers doctor --profile full ${data:+--data-root "$data"}
backend=()
step kernels "${LIMIT_KERNELS:-120}" "$py" -m pytest -o addopts="-p no:cacheprovider" -q -rs tests/test_kernels.py -k cuda \
    || backend=(--set propagation_backend=torch)
step propagation "${LIMIT_PROPAGATION:-150}" "$py" benchmarks/propagation.py
step breakdown "${LIMIT_BREAKDOWN:-60}" bash -c "'$py' benchmarks/propagation.py --breakdown dyspn triton && '$py' benchmarks/propagation.py --breakdown cspn triton"
step training "${LIMIT_TRAINING:-90}" "$py" benchmarks/propagation.py --training
step loading "${LIMIT_LOADING:-45}" "$py" benchmarks/loading.py --profile full ${data:+--data-root "$data"}
step quality "${LIMIT_QUALITY:-300}" "$py" benchmarks/quality.py --profile full --seeds 0 --settings coarse \
    ${data:+--data-root "$data"} --runs-dir "${RUNS_DIR:-$out/runs}" --json "$out/quality.json" ${backend[@]+"${backend[@]}"}
exit 0
