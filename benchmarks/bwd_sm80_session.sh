#!/usr/bin/env bash
# One GPU session for the SM80 backward variants (compile-time -D flags, see the top of
# csrc/bwd/flash_bwd_sm80.cuh).  Builds the default library once, then each variant's library
# from the default's objects plus its own recompiled backward units (only the main-kernel units
# read the flags, so the rest is shared: the variants build in parallel in about one round of
# nvcc), runs tests/gpu/test_kernels_bwd.py on every variant and times each against SDPA's
# flash backward (benchmarks/bwd_quick.py).  Logs and JSON under $OUT; a table last.
#   FA_BWD_VARIANTS="default scalar" bash benchmarks/bwd_sm80_session.sh   (names: flags_of)
#   FA_BWD_SANITIZE=1 adds compute-sanitizer memcheck/racecheck on one small case (default build).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
ARCH=$(device_arch)
VARIANTS=${FA_BWD_VARIANTS:-default rowmajor}
TABLE="$OUT/table.txt"
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)  arch: $ARCH" > "$TABLE"

flags_of() {
  case $1 in
    default) echo "" ;;
    rowmajor) echo "-DFA_BWD_DQ_ROWMAJOR" ;;  # the dQ accumulator layout before 2026-11-23
    scalar) echo "-DFA_BWD_DQ_SCALAR" ;;  # scalar dQ atomics on sm_90 (the default there is v4)
    early) echo "-DFA_BWD_P_EARLY" ;;
    double_do) echo "-DFA_BWD_DOUBLE_DO" ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}
# Objects a variant recompiles (name prefixes in the object cache); the rest are the default's.
scope_of() {
  echo "bwd__bwd_sm80_hdim"
}

build_variant() {  # name jobs
  local v=$1 jobs=$2 t0
  t0=$(date +%s)
  FA_INDUCTOR_CACHE=/tmp/fa_cache_$v NVCC_APPEND_FLAGS="$(flags_of "$v")" \
    timeout 400 python3 -m fa_inductor.build --arch "$ARCH" -j "$jobs" > "$OUT/build_$v.log" 2>&1
  echo "[$v] build rc=$? in $(( $(date +%s) - t0 )) s  flags: $(flags_of "$v")" >> "$OUT/builds.txt"
}

: > "$OUT/builds.txt"
build_variant default "$(nproc)"
for v in $VARIANTS; do
  [ "$v" = default ] && continue
  mkdir -p "/tmp/fa_cache_$v/objects"
  scope=$(scope_of "$v")
  for f in /tmp/fa_cache_default/objects/*; do
    case $(basename "$f") in "$scope"*) ;; *) cp "$f" "/tmp/fa_cache_$v/objects/" ;; esac
  done
  build_variant "$v" 10 &
done
wait
cat "$OUT/builds.txt" >> "$TABLE"

export FA_INDUCTOR_NO_BUILD=1
for v in $VARIANTS; do
  export FA_INDUCTOR_CACHE=/tmp/fa_cache_$v
  echo "[$v] d128 main-kernel spills: $(grep "local-memory spill" "$OUT/build_$v.log" | grep "ILi128E" \
    | grep -o "[0-9]* bytes spill stores" | cut -d' ' -f1 | tr '\n' ' ')" >> "$TABLE"
  timeout 90 python3 -m pytest tests/gpu/test_kernels_bwd.py -q -p no:cacheprovider --tb=short --maxfail=10 > "$OUT/pytest_$v.log" 2>&1
  echo "[$v] tests: $(tail -1 "$OUT/pytest_$v.log")" | tee -a "$TABLE"
  grep -E "^FAILED" "$OUT/pytest_$v.log" | head -5 >> "$TABLE"
  timeout 80 python3 benchmarks/bwd_quick.py --families sm80 --out "$OUT/sm80_bwd_$v.json" > "$OUT/bench_$v.log" 2>&1
  grep -E "^bwd" "$OUT/bench_$v.log" | sed "s/^/[$v] /" >> "$TABLE"
  if [ -n "$FA_BWD_SANITIZE" ] && [ "$v" = default ]; then
    SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck; do
      timeout 100 "$SAN" --tool $tool python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_bwd.py \
        -k "test_odd_sizes_one_head and 129 and 65" > "$OUT/sanitizer_${v}_$tool.log" 2>&1
      echo "[$v] $tool: $(grep -E 'SUMMARY' "$OUT/sanitizer_${v}_$tool.log" | tail -1)" >> "$TABLE"
    done
  fi
done
python3 - "$OUT" $VARIANTS >> "$TABLE" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
runs = {}
for n in names:
    try:
        runs[n] = {(r["causal"], r["seqlen"]): r for r in json.load(open(f"{out}/sm80_bwd_{n}.json"))}
    except OSError:
        pass
keys = sorted({k for r in runs.values() for k in r})
print("ratio ours/SDPA-flash (TFLOP/s ours | sdpa), bf16 d=128 16 heads 16k tokens")
print("causal seqlen " + " ".join(f"{n:>22s}" for n in runs))
for k in keys:
    cells = [f"{r[k]['ratio']:5.2f} ({r[k]['ours_tflops']:5.1f}|{r[k]['sdpa_flash_tflops']:5.1f})" if k in r else "-"
             for r in runs.values()]
    print(f"{int(k[0]):6d} {k[1]:6d} " + " ".join(f"{c:>22s}" for c in cells))
PY
# The run tool returns at most 8 files: everything but the table goes back as one archive.
(cd "$OUT" && tar czf /tmp/bwd_logs.tar.gz --exclude=table.txt . && find . -type f ! -name table.txt -delete \
  && mv /tmp/bwd_logs.tar.gz logs.tar.gz)
cat "$TABLE"
