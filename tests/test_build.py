"""The kernel build, compile-only (CI runs this on CPU machines; nothing needs a GPU).

Builds every unit under csrc/ for sm_80 into a temporary cache when nvcc and the CUTLASS headers
are present (else skips, saying which is missing), then checks the library's C ABI answers
without a GPU and that the SM80 kernels' SASS really uses the tensor cores (HMMA) and cp.async
(LDGSTS) without local-memory spills in the forward kernels.  The SM90 kernels are built for
sm_90a (without recompiling the SM80 kernels for it, to keep CI short) and their SASS must show
wgmma (HGMMA) and TMA loads (UTMALDG), with no spills.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fa_inductor import build

pytestmark = pytest.mark.kernel_build


def _toolchain_missing() -> str | None:
    try:
        build.find_nvcc()
        build.cutlass_include_dir()
    except build.BuildError as e:
        return str(e)
    return None


def _build_into_cache(tmp_path_factory, arch: str, exclude: str = ""):
    """(library path, build log text) of a build into a fresh temporary cache, or into
    $FA_TEST_BUILD_CACHE when set (CI may keep that folder between runs: objects are keyed by
    content, so only changed units recompile)."""
    missing = _toolchain_missing()
    if missing:
        pytest.skip(f"cannot compile the kernels here: {missing}")
    cache = os.environ.get("FA_TEST_BUILD_CACHE") or str(tmp_path_factory.mktemp("fa_cache"))
    saved = {var: os.environ.get(var) for var in ("FA_INDUCTOR_CACHE", "FA_BUILD_EXCLUDE")}
    os.environ["FA_INDUCTOR_CACHE"] = cache
    os.environ["FA_BUILD_EXCLUDE"] = exclude
    try:
        lib = build.build(arch, jobs=os.cpu_count(), progress=lambda s: print(s, file=sys.stderr))
    finally:
        for var, value in saved.items():
            if value is None:
                del os.environ[var]
            else:
                os.environ[var] = value
    assert lib.is_relative_to(cache)
    return lib, (lib.parent / "build.log").read_text()


@pytest.fixture(scope="module")
def sm80_build(tmp_path_factory):
    return _build_into_cache(tmp_path_factory, "80")


@pytest.fixture(scope="module")
def sm90_build(tmp_path_factory):
    """An sm_90a build of the SM90 units (the SM80 kernel units are left out: they are the same
    code as in sm80_build, and compiling them again would double CI's build time).  The library
    is only inspected, not loaded: it lacks the SM80 entry points' kernels."""
    return _build_into_cache(tmp_path_factory, "90a", exclude="fwd/fwd_hdim*,bwd/bwd_sm80_hdim*")


def test_library_is_built_into_the_cache(sm80_build):
    lib, log = sm80_build
    assert lib.is_file() and lib.name == build.LIBRARY_NAME
    # every unit's ptxas report is kept in the log
    for unit in (build.csrc_dir() / "fwd").glob("*.cu"):
        assert str(unit) in log, f"{unit.name} missing from the build log"
    assert "Used" in log and "registers" in log


def test_c_abi_answers_without_a_gpu(sm80_build):
    from fa_inductor.kernels import library

    lib = library.Library(sm80_build[0])
    assert lib.raw.fa_abi_version() == library.ABI_VERSION
    status = lib.raw.fa_fwd_sm80(None, None)
    assert status == 1  # FA_ERR_INVALID_ARGUMENT
    assert "params is null" in lib.last_error()
    params = library.FwdParams()
    status = lib.raw.fa_fwd_sm80(ctypes.byref(params), None)
    assert status == 1 and "null tensor pointer" in lib.last_error()


def test_params_mirror_matches_the_header():
    """library.FwdParams lists the fields of FaFwdParams in the same order."""
    from fa_inductor.kernels import library

    header = (build.csrc_dir() / "common" / "fa_params.h").read_text()
    body = header[header.index("typedef struct FaFwdParams") : header.index("} FaFwdParams;")]
    body = re.sub(r"//[^\n]*", "", body)
    names = re.findall(r"\b([a-z_][a-z0-9_]*)\s*[,;]", body)
    assert names == [name for name, _ in library.FwdParams._fields_]


def test_forward_kernels_use_tensor_cores_and_cp_async(sm80_build):
    lib, _ = sm80_build
    if build.find_cuobjdump() is None:
        pytest.skip("cuobjdump not available (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    try:
        functions = build.sass_by_function(build.dump_sass(lib))
    except build.BuildError as e:
        pytest.skip(str(e))
    fwd = {name: body for name, body in functions.items() if "fwd" in name}
    # 5 head dims x 2 dtypes x (local, softcap) variants
    assert len(fwd) == 40, sorted(fwd)
    for name, body in fwd.items():
        assert "HMMA" in body, f"{name}: no tensor-core instructions"
        assert "LDGSTS" in body, f"{name}: no cp.async"
        assert "LDSM" in body, f"{name}: no ldmatrix"


# FA2's head-dim-128 shape (128x64 tile, 4 warps) needs a few more than 255 registers in the P.V
# phase; FA2 itself spills there.  Bounded, so that it cannot quietly grow; every other forward
# kernel must be spill-free.
KNOWN_SPILLS = {"FwdTraitsILi128ELi128ELi64ELi4E": 256}


def test_forward_kernels_do_not_spill(sm80_build):
    _, log = sm80_build
    unexpected = []
    for line in build.spill_report(log):
        if "fwd" not in line:
            continue
        stores = int(re.search(r"(\d+) bytes spill stores", line).group(1))
        bound = next((b for key, b in KNOWN_SPILLS.items() if key in line), 0)
        if stores > bound:
            unexpected.append(line)
    assert not unexpected, "\n".join(unexpected)


def _sass_functions(lib):
    if build.find_cuobjdump() is None:
        pytest.skip("cuobjdump not available (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    try:
        return build.sass_by_function(build.dump_sass(lib))
    except build.BuildError as e:
        pytest.skip(str(e))


def test_sm90_units_build_for_sm90a_only():
    assert build.unit_archs(Path("sm90/fwd_sm90_hdim128_bf16.cu"), ["80", "90a"]) == ["90a"]
    assert build.unit_archs(Path("sm90/fwd_sm90_hdim128_bf16.cu"), ["80"]) == []
    assert build.unit_archs(Path("fwd/fwd_hdim128_bf16.cu"), ["80", "90a"]) == ["80", "90a"]
    assert build.unit_archs(Path("api.cpp"), ["80"]) == ["80"]


def test_sm90_forward_uses_wgmma_and_tma(sm90_build):
    lib, _ = sm90_build
    fwd = {name: body for name, body in _sass_functions(lib).items() if "fa_fwd_sm90" in name}
    # 5 head dims x 2 dtypes x (local, softcap); the tiles for few keys (2 dtypes x softcap) of
    # head dims 64, 128 and 256, each with a mask and without one, and head dim 64's for fewest
    # keys with a mask; the ablation instances (head dim 128 bf16): 4 variants x (causal or not)
    # (its full kernel and its dense one with the causal tile shape are instances above)
    assert len(fwd) == 40 + 8 + 8 + 8 + 4 + 4 * 2, sorted(fwd)
    for name, body in fwd.items():
        assert "fwd" in name
        assert "HGMMA" in body, f"{name}: no wgmma"
        assert "UTMALDG" in body, f"{name}: no TMA loads"
        assert "UTMASTG" in body, f"{name}: no TMA store"
        assert "USETMAXREG" in body or "ScheduleILb0ELb1ELb0E" in name, f"{name}: no register reallocation"
        assert not re.search(r"\b(LDL|STL)\b", body), f"{name}: local memory"


def test_sm90_forward_does_not_spill(sm90_build):
    _, log = sm90_build
    spills = [line for line in build.spill_report(log) if "fa_fwd_sm90" in line]
    assert not spills, "\n".join(spills)


def test_sm90_backward_uses_wgmma_and_tma(sm90_build):
    lib, log = sm90_build
    bwd = {name: body for name, body in _sass_functions(lib).items() if "fa_bwd_sm90_kernel" in name}
    # head dims 64, 96, 128, 192, 256 x 2 dtypes x (local, softcap)
    assert len(bwd) == 5 * 2 * 4, sorted(bwd)
    for name, body in bwd.items():
        assert "bwd" in name
        assert "HGMMA" in body, f"{name}: no wgmma"
        assert "UTMALDG" in body, f"{name}: no TMA loads"
        assert "UBLKCP" in body, f"{name}: no bulk copy of the row statistics"
        assert "UTMASTG" in body, f"{name}: no TMA store of dK, dV"
        assert "USETMAXREG" in body, f"{name}: no register reallocation"
        assert "ATOMG" not in body, f"{name}: atomics that return a value"
        if "ILi256E" in name:  # BwdTraits<256, ...>: no room to stage dQ, 16-byte vector atomics
            assert "REDG.E.ADD.F32x4" in body and "UBLKRED" not in body, f"{name}: dQ not by vector atomics"
        else:
            assert "UBLKRED" in body, f"{name}: no bulk reduce-add of dQ"
            assert "REDG" not in body, f"{name}: dQ added by per-thread atomics"
        # S^T = K Q^T and dP^T = V dO^T with K and V from registers (A operand a register, B a
        # descriptor read untransposed): head dim 64 only (BwdTraits::kKVInRegisters).
        kv_in_registers = re.findall(r"HGMMA\.64x64x16\.F32(?:\.\w+)? R\d+, R\d+, gdesc\[UR\d+\], ", body)
        if "BwdTraitsILi64E" in name:
            assert len(kv_in_registers) >= 8, f"{name}: S^T and dP^T do not read K and V from registers"
        else:
            assert not kv_in_registers, f"{name}: K or V read from registers"
    # A few bytes spill: loop state of the producer warpgroup (24 registers) outside its loads,
    # and at head dim 128 a word or two of the consumers' (dK, dV, dQ accumulators).  Bounded
    # so that growth shows up (see benchmarks/results/sm90_bwd_h100.md).  40 bytes in the head
    # dim 128 causal softcap instance: 36 since the causal launch order (tile_order.h) made head
    # and batch computed values (SASS: one 8-byte store and reload per 64-row query tile in the
    # producer thread's loop, beside two 16 KB TMA loads, and six words of consumer set-up), 4
    # more for the deterministic mode's semaphore in the dQ writer warp.
    spills = [line for line in build.spill_report(log) if "fa_bwd_sm90_kernel" in line]
    worst = max((int(m) for line in spills for m in re.findall(r"(\d+) bytes spill stores", line)), default=0)
    assert worst <= 40, "\n".join(spills)


def test_missing_nvcc_is_a_clear_error(monkeypatch):
    for var in ("CUDACXX", "NVCC", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(build, "FALLBACK_NVCC", ())
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.build("80")


def test_missing_cutlass_is_a_clear_error(monkeypatch):
    real = build.importlib.util.find_spec
    monkeypatch.setattr(build.importlib.util, "find_spec",
                        lambda name, *a: None if name == "cutlass_library" else real(name, *a))
    with pytest.raises(build.BuildError, match="nvidia-cutlass"):
        build.cutlass_include_dir()


def test_arch_list():
    assert build.parse_archs("90a,80") == ["80", "90a"]
    assert build.parse_archs("sm_80, 80") == ["80"]
    assert build.gencode_flags(["80", "90a"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
    ]
    with pytest.raises(build.BuildError, match="unknown arch"):
        build.parse_archs("75")


def test_importing_the_kernels_builds_nothing(tmp_path):
    """No GPU, no build: the package imports and reports no backend, leaving the cache empty."""
    code = (
        "import fa_inductor.kernels as k\n"
        "assert k.get_backend('cpu') is None\n"
        "print(k.unavailable_reason('cpu'))\n"
    )
    env = dict(os.environ, FA_INDUCTOR_CACHE=str(tmp_path / "cache"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(build.__file__).parent.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not a CUDA device" in proc.stdout
    assert not (tmp_path / "cache").exists()


def test_cache_keys_follow_the_includes_of_each_unit(tmp_path):
    """A unit's object is keyed on the headers it includes (transitively, quoted includes resolved
    like the compiler: the including file's folder, then csrc/), not on every header beside it:
    editing one kernel's header recompiles the units that include it and no others."""
    root = tmp_path / "csrc"
    (root / "common").mkdir(parents=True)
    (root / "fam").mkdir()
    (root / "common" / "shared.h").write_text("#pragma once\n")
    (root / "top.h").write_text('#pragma once\n#include "common/shared.h"\n')
    (root / "fam" / "a.h").write_text('#pragma once\n#include "../top.h"\n#include <cute/tensor.hpp>\n')
    (root / "fam" / "b.h").write_text('#pragma once\n#include "common/shared.h"\n#include "cutlass/not_ours.h"\n')
    (root / "fam" / "a.cu").write_text('#include "a.h"\n')
    (root / "fam" / "b.cu").write_text('  #  include "b.h"\n')
    rel = lambda unit: sorted(str(p.relative_to(root)) for p in build._headers_visible_to(root / unit, root))  # noqa: E731
    assert rel("fam/a.cu") == ["common/shared.h", "fam/a.h", "top.h"]
    assert rel("fam/b.cu") == ["common/shared.h", "fam/b.h"]


def test_sm90_forward_units_do_not_see_backward_headers():
    root = build.csrc_dir().resolve()
    seen = {p.name for p in build._headers_visible_to(root / "sm90" / "fwd_sm90_hdim128_bf16.cu", root)}
    assert "fwd_sm90_mainloop.h" in seen and "sm90_utils.h" in seen
    assert not any(name.startswith("bwd_") for name in seen), seen
