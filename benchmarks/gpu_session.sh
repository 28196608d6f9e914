#!/usr/bin/env bash
# Every GPU check and timing of tapsc in one command, for a short lease of a CUDA machine:
#   OUT=/tmp/gpu [ONLY="env epoch runner"] bash benchmarks/gpu_session.sh [seconds]   (default budget 540 s)
# 1. env: the environment; 2. epoch: CIFAR-10 epochs, TAPS vs IBP, bf16, tf32 (the default) and
# fp32 (benchmarks/epoch.py); 3. runner: the runner's step against the bare step, profiled
# (benchmarks/runner_step.py); 4. e2e: the CUDA path end to end (quickstart run, certify, export);
# 5. steps: step ratios and memory, eager tf32/bf16; 6. certify: certification throughput;
# 7. compile: torch.compile, with whatever time is left. ONLY picks some of them, in this order.
# Every step has a deadline inside the budget; JSON, log.txt (the summary) and logs.tgz land in $OUT.
# Where the machine lacks lark/pydantic, put their wheels in .whl/ (see docs/benchmarks.md).
set -u
BUDGET=${1:-540}
OUT=${OUT:-/tmp/tapsc-gpu}
mkdir -p "$OUT"
rm -rf /tmp/qs /tmp/qs-export /tmp/epoch-runs  # the folders this script writes: a rerun starts clean
export PYTHONUNBUFFERED=1 TAPSC_OFFLINE=1
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # NO_WHEELS=1 DEVICE=cpu EPOCH_ARGS="--images 64" STEP_ARGS=--quick: a dry run of this script
END=$(( $(date +%s) + BUDGET ))
LOG="$OUT/log.txt"

step() {  # step NAME MAX_SECONDS COMMAND...: run with min(MAX, time left), keep the log's tail in log.txt
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local left=$(( END - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "=== $name skipped (budget spent)" | tee -a "$LOG"; return; fi
  local start; start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.out" 2>&1
  local rc=$?
  { echo "=== $name rc=$rc $(( $(date +%s) - start ))s (limit ${limit}s)"; grep -v -E "^USDT|SyncActivityProfiler" "$OUT/$name.out" | tail -n "${TAIL:-25}"; } | tee -a "$LOG"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
  $PY -c 'import torch, tapsc.language.spec; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
  torch.backends.cudnn.allow_tf32)'"
TAIL=12 step epoch 300 $PY benchmarks/epoch.py --device $DEVICE --precision bf16,tf32,fp32 --out /tmp/epoch-runs \
  --json "$OUT/epoch.json" ${EPOCH_ARGS:-}
TAIL=45 step runner 90 bash -c "$PY benchmarks/runner_step.py --device $DEVICE --amp --profile 5 --json $OUT/runner.json \
  ${RUNNER_ARGS:-} && $PY benchmarks/runner_step.py --device $DEVICE ${RUNNER_ARGS:-} | tail -5"
step e2e 100 bash -c "set -e; $PY -m tapsc run specs/quickstart.taps --device $DEVICE --out /tmp/qs >/tmp/qs.log 2>&1 \
  || { tail -30 /tmp/qs.log; exit 1; }; tail -12 /tmp/qs.log; \
  $PY -m tapsc certify /tmp/qs --device $DEVICE --methods ibp,crown_ibp,crown 2>&1 | tail -12; \
  $PY -m tapsc export /tmp/qs --out /tmp/qs-export --samples 20 2>&1 | tail -6"
step steps 110 $PY benchmarks/train_step.py --device $DEVICE --compile off --amp both --tf32 --reps 5 --no-certify \
  --methods 'natural,ibp,ibp_shi,pgd_steps20,sabr_steps20,taps_relu*_steps20,staps_relu1_steps20,taps_relu1_steps8' \
  --json "$OUT/steps.json" ${STEP_ARGS:-}
step certify 90 $PY benchmarks/certify_throughput.py --device $DEVICE --samples 16 --run-dir /tmp/qs --json "$OUT/certify.json"
step compile 200 $PY benchmarks/train_step.py --device $DEVICE --compile on --amp both --reps 3 --no-certify \
  --shapes cifar10 --methods 'ibp,taps_relu1_steps20' --json "$OUT/compile.json" ${STEP_ARGS:-}
echo "=== done, $(( END - $(date +%s) ))s of the budget left" | tee -a "$LOG"
# the device tool brings back at most 8 files: the JSON, log.txt and one archive of the full logs
tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.out) && rm -f "$OUT"/*.out
