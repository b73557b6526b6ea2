#!/usr/bin/env bash
# Same-lease A/B of kernel source variants.  Builds the checkout as it is ("base"), then the
# checkout with each patch of $FA_AB_PATCHES applied (one at a time, reverted after; only the
# units whose sources or included headers the patch touches recompile, the rest come from the
# shared object cache).  Runs each patched library's tests ($FA_AB_TESTS_<patch name>, else
# $FA_AB_TESTS, if set), then benchmarks/kernel_breakdown.py $FA_PROFILE_ARGS once per library
# (FA_INDUCTOR_LIBRARY pointing at it), variants interleaved round by round ($FA_AB_ROUNDS,
# default 1) so that drift of the machine does not fall on one variant.  Writes
# $OUT/ab_$FA_AB_TAG.json (every variant's kernel_breakdown rows per round; FA_AB_TAG defaults to
# "results") and prints a table of main-kernel times per variant last.
# Timings move by several percent between leases; small changes are decided by same-lease
# comparisons like these.
#   FA_AB_PATCHES=".ab/dsum.patch" FA_AB_TESTS_dsum="tests/gpu/test_kernels_bwd.py -k sm90" \
#     FA_PROFILE_ARGS="--head-dims 128 --seqlens 2048,8192 --peers sdpa_cudnn" bash benchmarks/ab_session.sh
# Patches live in a git-ignored folder carried to the device (e.g. .ab/, listed in
# .git/info/exclude); carrying .cache/fa_inductor/objects from a local build saves the base build.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export FA_INDUCTOR_CACHE=${FA_INDUCTOR_CACHE:-$PWD/.cache/fa_inductor}
. "$(dirname "$0")/device_env.sh"
ARCH=$(device_arch)
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)  arch: $ARCH"

build() {  # prints the library path last
  python3 -m fa_inductor.build --arch "$ARCH" -j "$(nproc)" 2>&1 | tee -a "$OUT/ab_build.log" | tail -1
}
declare -A LIBS
names=(base)
LIBS[base]=$(build) || { echo "base build failed"; exit 1; }
for patch in ${FA_AB_PATCHES:-}; do
  name=$(basename "$patch" .patch)
  git apply "$patch" || { echo "patch $patch does not apply"; exit 1; }
  lib=$(build); rc=$?
  git apply -R "$patch"
  [ $rc -ne 0 ] && { echo "build of $name failed (see ab_build.log)"; exit 1; }
  LIBS[$name]=$lib
  names+=("$name")
done
grep -E "spill" "$OUT/ab_build.log" | grep -v " 0 bytes spill stores" | sort | uniq -c | head -20
for name in "${names[@]}"; do echo "library $name: ${LIBS[$name]}"; done

status=0
# The base is the committed tree, tested on its own; FA_AB_NO_TESTS=1 skips the tests (a second
# profile of libraries tested earlier in the same call).
[ -n "${FA_AB_NO_TESTS:-}" ] || for name in "${names[@]:1}"; do
  var="FA_AB_TESTS_${name//[^A-Za-z0-9]/_}"
  tests=${!var:-${FA_AB_TESTS:-}}
  [ -z "$tests" ] && continue
  # shellcheck disable=SC2086
  FA_INDUCTOR_LIBRARY=${LIBS[$name]} python3 -m pytest $tests -q -p no:cacheprovider > "$OUT/ab_tests_$name.log" 2>&1
  rc=$?
  echo "tests $name ($tests): rc=$rc, $(grep -E '(passed|failed|error)' "$OUT/ab_tests_$name.log" | tail -1)"
  [ $rc -ne 0 ] && { status=1; grep -E "^(FAILED|ERROR)" "$OUT/ab_tests_$name.log" | head -5; }
done
# FA_AB_PROFILE_VARIANTS (e.g. "base sm80_bwd") limits the profile to some of the variants.
read -r -a profiled <<< "${FA_AB_PROFILE_VARIANTS:-${names[*]}}"
for round in $(seq 1 "${FA_AB_ROUNDS:-1}"); do
  for name in "${profiled[@]}"; do
    # shellcheck disable=SC2086
    FA_INDUCTOR_LIBRARY=${LIBS[$name]} timeout "${FA_STEP_TIMEOUT:-300}" python3 benchmarks/kernel_breakdown.py \
      --out "$OUT/kb_${name}_r${round}.json" ${FA_PROFILE_ARGS:-} > "$OUT/ab_profile.log" 2>&1 || status=1
  done
done
python3 - "$OUT" "${profiled[@]}" <<'PY'
import glob, json, os, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
runs = {}
for name in names:
    for path in sorted(glob.glob(f"{out}/kb_{name}_r*.json")):
        runs.setdefault(name, []).append(json.load(open(path)))
        os.remove(path)
with open(f"{out}/ab_{os.environ.get('FA_AB_TAG', 'results')}.json", "w") as f:
    json.dump({"profile_args": os.environ.get("FA_PROFILE_ARGS", ""), "variants": runs}, f)
table = {}
for name, rounds in runs.items():
    for rows in rounds:
        for r in rows:
            key = (r["direction"], r["head_dim"], r["seqlen"], r["causal"], r["impl"])
            table.setdefault(key, {}).setdefault(name, []).append(max(r["kernels_us"].values()))
print("main-kernel us per call (median over rounds); xN = base time / variant time; cN = peer main kernel / variant")
print(f"{'dir':4s} {'D':>4s} {'S':>6s} c  " + "  ".join(f"{n:>22s}" for n in names))
for key in sorted(k for k in table if k[4] == "ours"):
    base = statistics.median(table[key]["base"])
    peers = [k for k in table if k[:4] == key[:4] and k[4] != "ours"]
    ref = statistics.median(m for k in peers for n in table[k] for m in table[k][n]) if peers else float("nan")
    cells = []
    for n in names:
        t = statistics.median(table[key].get(n, [float("nan")]))
        cells.append(f"{t:9.1f} x{base / t:5.3f} c{ref / t:5.3f}")
    print(f"{key[0]:4s} {key[1]:4d} {key[2]:6d} {int(key[3])}  " + "  ".join(f"{c:>22s}" for c in cells))
PY
exit $status
