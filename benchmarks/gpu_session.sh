#!/usr/bin/env bash
# One GPU session: install carried wheels, build the kernels, run the GPU tests, benchmark.
#
#   bash benchmarks/gpu_session.sh                     # everything
#   FA_GPU_STEPS="build test" bash benchmarks/gpu_session.sh
#   FA_GPU_TESTS="tests/gpu/test_kernels_fwd.py -x" FA_GPU_ARCH=90a,80 bash benchmarks/gpu_session.sh
#
# Steps (FA_GPU_STEPS, default "build test fwdbench bench"):
#   build     python -m fa_inductor.build --arch $FA_GPU_ARCH (default: the device's own arch)
#   test      pytest $FA_GPU_TESTS (default tests/gpu) -q
#   fwdbench  benchmarks/fwd_quick.py $FA_FWD_ARGS (our forward kernel families vs SDPA cuDNN
#             and flash; e.g. FA_FWD_ARGS="--head-dims 64,128,256 --ablation")
#   bwdbench  benchmarks/bwd_quick.py $FA_BWD_ARGS (our backward kernel families vs SDPA cuDNN
#             and flash; e.g. FA_BWD_ARGS="--head-dims 64,128")
#   profile   benchmarks/kernel_breakdown.py $FA_PROFILE_ARGS (each kernel's time per call, ours
#             beside SDPA's; e.g. FA_PROFILE_ARGS="--head-dims 128 --seqlens 1024,8192")
#   train     benchmarks/train_step.py --out $OUT/train_step.json $FA_TRAIN_ARGS (an HF Llama
#             training step, backend="flash" against the default torch.compile)
#   bench     benchmarks/attention.py --out $OUT $FA_BENCH_ARGS, if it exists (the full harness;
#             e.g. FA_BENCH_ARGS="--budget-s 420 --dims 128")
# The benchmark steps run under FA_STEP_TIMEOUT seconds each (default 300).
# Logs and results go under $OUT (default ./gpu_out); a short table is printed last.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STEPS=${FA_GPU_STEPS:-"build test fwdbench bench"}
# Inside the checkout (git-ignored): a warm machine keeps it for the next call, which then skips the build.
export FA_INDUCTOR_CACHE=${FA_INDUCTOR_CACHE:-$PWD/.cache/fa_inductor}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

. "$(dirname "$0")/device_env.sh"
# Our package is not installed there: the path above lets `import fa_inductor` find the checkout;
# an editable install (offline, no deps) also maps patterns/ and csrc/ as packaged.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/pip_editable.log" 2>&1 \
  || echo "(editable install failed, using PYTHONPATH; see pip_editable.log)"

if [ -z "${FA_GPU_ARCH:-}" ]; then
  FA_GPU_ARCH=$(device_arch)
fi
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
note "device: $DEVICE  arch: $FA_GPU_ARCH  steps: $STEPS"

# A benchmark script with its JSON under $OUT and its table rows copied into the summary.  Each
# runs under a time limit (FA_STEP_TIMEOUT, default 300 s): a hung kernel costs one step, not the
# whole call and the logs of the steps after it.
quick_bench() {  # name script json summary-rows-regex args
  # shellcheck disable=SC2086
  timeout "${FA_STEP_TIMEOUT:-300}" python3 "$2" --out "$OUT/$3" $5 2>&1 | tee "$OUT/$1.log"
  local rc=$?
  note "$1: rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  grep -E "$4" "$OUT/$1.log" >> "$SUMMARY"
  [ $rc -ne 0 ] && status=1
}

status=0
for step in $STEPS; do
  case $step in
    build)
      t0=$(date +%s)
      python3 -m fa_inductor.build --arch "$FA_GPU_ARCH" -j "$(nproc)" 2>&1 | tee "$OUT/build.log"
      rc=$?
      lib=$(tail -1 "$OUT/build.log")
      [ -f "$(dirname "$lib")/build.log" ] && cp "$(dirname "$lib")/build.log" "$OUT/ptxas.log"
      note "build: rc=$rc in $(( $(date +%s) - t0 )) s  ($lib)"
      if [ -f "$OUT/ptxas.log" ]; then
        note "  spills: $(grep -c 'bytes spill stores' "$OUT/ptxas.log") reports, nonzero: $(grep -E '[1-9][0-9]* bytes spill stores' "$OUT/ptxas.log" | wc -l)"
      fi
      [ $rc -ne 0 ] && { status=1; break; }
      ;;
    test)
      t0=$(date +%s)
      # shellcheck disable=SC2086
      python3 -m pytest ${FA_GPU_TESTS:-tests/gpu} -q -rs --tb=short -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
      rc=$?
      note "test: rc=$rc in $(( $(date +%s) - t0 )) s: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$OUT/pytest.log" | tail -1)"
      [ $rc -ne 0 ] && status=1
      ;;
    fwdbench) quick_bench fwdbench benchmarks/fwd_quick.py fwd_quick.json '^device:|^d= *[0-9]+ S=' "${FA_FWD_ARGS:-}" ;;
    bwdbench) quick_bench bwdbench benchmarks/bwd_quick.py bwd_quick.json '^device:|^ +D causal|^bwd ' "${FA_BWD_ARGS:-}" ;;
    profile) quick_bench profile benchmarks/kernel_breakdown.py kernel_breakdown.json '^device:|^ +impl |^ +(ours|sdpa_)' "${FA_PROFILE_ARGS:-}" ;;
    train) quick_bench train benchmarks/train_step.py train_step.json '^device:|^seqlen |^train ' "${FA_TRAIN_ARGS:-}" ;;
    bench)
      if [ -f benchmarks/attention.py ]; then
        # shellcheck disable=SC2086
        python3 benchmarks/attention.py --out "$OUT" ${FA_BENCH_ARGS:-} 2>&1 | tee "$OUT/attention_bench.log"
        note "bench: rc=$?"
      else
        note "bench: benchmarks/attention.py not present, skipped"
      fi
      ;;
    *) note "unknown step $step" ;;
  esac
done

echo
echo "=================== summary ==================="
cat "$SUMMARY"
exit $status
