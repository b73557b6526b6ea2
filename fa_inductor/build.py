"""Builds the compiled Flash kernels (``csrc/``) into one shared library with a plain C ABI.

    python -m fa_inductor.build --arch 80,90a [-j N] [--force]

Every ``*.cu``/``*.cpp`` under ``csrc/`` is one translation unit compiled by its own ``nvcc``
process, in parallel, against the CuTe/CUTLASS headers of the installed ``nvidia-cutlass``
package; objects are cached by content, so editing one kernel recompiles only the units that can
see the edit.  The library lands in ``$FA_INDUCTOR_CACHE`` (default ``~/.cache/fa_inductor``)
under a key of sources, archs and nvcc version; ``build.log`` beside it keeps each unit's
``-Xptxas -v`` report (registers, shared memory, spills).

Nothing here imports torch or CUDA: the build runs on machines without a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

LIBRARY_NAME = "libfa_kernels.so"
SOURCE_SUFFIXES = (".cu", ".cpp")
KNOWN_ARCHS = ("80", "86", "89", "90", "90a")
FALLBACK_NVCC = (Path("/usr/local/cuda/bin/nvcc"),)

# Flags every unit shares.  --use_fast_math turns exp2f into ex2.approx, which the softmax wants.
COMMON_FLAGS = (
    "-std=c++17",
    "-O3",
    "-DNDEBUG",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
    "-Xcompiler=-fPIC",
    "-Xcompiler=-fvisibility=hidden",
    "-Xptxas=-v",
    "-lineinfo",
)


class BuildError(RuntimeError):
    """The kernels could not be built; the message says why and what to install."""


def csrc_dir() -> Path:
    """The kernel sources: ``fa_inductor._csrc`` when installed, else the repository's csrc/."""
    spec = importlib.util.find_spec("fa_inductor._csrc")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parent.parent / "csrc"


def cutlass_include_dir() -> Path:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "CUTLASS/CuTe headers not found: the build takes them from the `nvidia-cutlass` "
            "package (pip install 'nvidia-cutlass>=4.2')"
        )
    include = Path(list(spec.submodule_search_locations)[0]) / "source" / "include"
    if not (include / "cute").is_dir():
        raise BuildError(f"nvidia-cutlass is installed but has no CuTe headers under {include}")
    return include


def find_nvcc() -> Path:
    candidates = []
    for var in ("CUDACXX", "NVCC"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    which = shutil.which("nvcc")
    if which:
        candidates.append(Path(which))
    candidates.extend(FALLBACK_NVCC)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise BuildError(
        "nvcc not found (looked at $CUDACXX, $CUDA_HOME/bin, PATH, /usr/local/cuda/bin): "
        "the kernels need the CUDA toolkit's compiler (12.4 or newer)"
    )


def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"release [\d.]+, V([\d.]+)", out.stdout)
    return match.group(1) if match else out.stdout.strip().splitlines()[-1]


def parse_archs(spec: str | list[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    archs = []
    for item in items:
        arch = item.strip().lower().removeprefix("sm_").removeprefix("sm").replace(".", "")
        if not arch:
            continue
        if arch not in KNOWN_ARCHS:
            raise BuildError(f"unknown arch {item!r}; expected some of {', '.join(KNOWN_ARCHS)}")
        if arch not in archs:
            archs.append(arch)
    if not archs:
        raise BuildError("no arch given")
    return sorted(archs)


def gencode_flags(archs: list[str]) -> list[str]:
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


# Kernel families that only exist for some archs, by their folder under csrc/: the SM90 kernels
# use wgmma and setmaxnreg, which only the sm_90a target has.  Units elsewhere build for every
# requested arch (the SM80 kernels are the fallback on Hopper too).
ARCH_ONLY_FOLDERS = {"sm90": ("90a",)}


def unit_archs(rel: Path, archs: list[str]) -> list[str]:
    """The requested archs a unit (path relative to csrc/) is compiled for; [] means skipped."""
    only = ARCH_ONLY_FOLDERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
    return [a for a in archs if only is None or a in only]


def cache_root() -> Path:
    env = os.environ.get("FA_INDUCTOR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fa_inductor"


def _sources(root: Path) -> list[Path]:
    """Every unit under root, less those matching $FA_BUILD_EXCLUDE (comma-separated globs
    relative to csrc/, e.g. "bwd/*,bwd_api.cpp": a partial library for work on one direction)."""
    excluded = [g.strip() for g in os.environ.get("FA_BUILD_EXCLUDE", "").split(",") if g.strip()]
    units = []
    for p in sorted(root.rglob("*")):
        if p.suffix in SOURCE_SUFFIXES and p.is_file():
            rel = p.relative_to(root)
            if not any(rel.match(g) for g in excluded):
                units.append(p)
    return units


_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)


def _headers_visible_to(unit: Path, root: Path) -> list[Path]:
    """The headers under root that a unit includes, directly or through other headers.

    Quoted includes are followed the way the compiler resolves them here (the including file's
    folder, then root, which is the build's -I); angle includes and quoted ones found nowhere under
    root are outside the sources (CUTLASS, CUDA) and not part of the key.  Every #include line
    counts, conditional or not, so the set can only be too large, never too small.  Keying on this
    instead of on every header of the unit's folder means an edit to a backward header no longer
    recompiles the forward units beside it (a 22-unit rebuild became 7 for the SM90 backward).
    """
    root = root.resolve()
    found: set[Path] = set()
    stack = [unit.resolve()]
    while stack:
        source = stack.pop()
        for name in _QUOTED_INCLUDE.findall(source.read_text(errors="replace")):
            for base in (source.parent, root):
                candidate = (base / name).resolve()
                if candidate.is_file():
                    if root in candidate.parents and candidate not in found:
                        found.add(candidate)
                        stack.append(candidate)
                    break
    return sorted(found)


def _digest(paths: list[Path], extra: list[str], root: Path) -> str:
    h = hashlib.sha256()
    for s in extra:
        h.update(s.encode())
        h.update(b"\0")
    for p in paths:
        h.update(str(p.relative_to(root)).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


class _Plan:
    """Everything that decides what gets compiled and where it goes."""

    def __init__(self, archs: list[str]):
        self.root = csrc_dir().resolve()  # include paths are compared resolved
        self.nvcc = find_nvcc()
        self.include = cutlass_include_dir()
        self.archs = archs
        self.version = nvcc_version(self.nvcc)
        # $FA_NVCC_FLAGS: extra flags for experiments (e.g. -DFA_FWD_RESCALE_THRESHOLD=0); they
        # are part of every cache key.
        self.extra = os.environ.get("FA_NVCC_FLAGS", "").split()
        self.flags = [
            *COMMON_FLAGS,
            *self.extra,
            f"-I{self.root}",
            f"-I{self.include}",
        ]
        self.unit_archs = {
            u: unit_archs(u.relative_to(self.root), archs) for u in _sources(self.root)
        }
        self.units = [u for u, a in self.unit_archs.items() if a]
        if not self.units:
            raise BuildError(f"no kernel sources under {self.root}")
        identity = [self.version, *COMMON_FLAGS, *self.extra]
        self.unit_keys = {
            u: _digest([u, *_headers_visible_to(u, self.root)],
                       [*identity, *gencode_flags(self.unit_archs[u])], self.root)
            for u in self.units
        }
        self.key = hashlib.sha256(
            "".join(str(u.relative_to(self.root)) + self.unit_keys[u] for u in self.units).encode()
        ).hexdigest()[:16]
        self.out_dir = cache_root() / f"{'-'.join('sm' + a for a in archs)}-{self.key}"
        self.obj_dir = cache_root() / "objects"

    @property
    def library(self) -> Path:
        return self.out_dir / LIBRARY_NAME

    def obj(self, unit: Path) -> Path:
        stem = str(unit.relative_to(self.root)).replace(os.sep, "__")
        return self.obj_dir / f"{stem}.{self.unit_keys[unit]}.o"


def library_path(archs: str | list[str]) -> Path:
    """Where the library for these archs and the current sources is (built or not)."""
    return _Plan(parse_archs(archs)).library


def _compile(plan: _Plan, unit: Path) -> tuple[Path, float, str]:
    obj = plan.obj(unit)
    tmp = obj.with_suffix(f".{os.getpid()}.tmp.o")
    cmd = [str(plan.nvcc), *plan.flags, *gencode_flags(plan.unit_archs[unit]), "-c", str(unit), "-o", str(tmp)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    log = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"nvcc failed on {unit.relative_to(plan.root)}:\n{proc.stderr[-6000:]}")
    os.replace(tmp, obj)
    obj.with_suffix(".log").write_text(log)
    return unit, elapsed, log


_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def spill_report(log: str) -> list[str]:
    """Lines of a ptxas -v log that report local-memory spills (nonzero bytes)."""
    lines = []
    function = ""
    for line in log.splitlines():
        if "Compiling entry function" in line or "Function properties for" in line:
            function = line.split("'")[1] if "'" in line else line
        m = _SPILL.search(line)
        if m and (int(m.group(1)) or int(m.group(2))):
            lines.append(f"{function}: {line.strip()}")
    return lines


def find_cuobjdump() -> Path | None:
    """cuobjdump from the CUDA toolkit or the `nvidia-cuda-cuobjdump` wheel (None if absent)."""
    found = []
    which = shutil.which("cuobjdump")
    if which:
        found.append(Path(which))
    nvcc_dir = None
    try:
        nvcc_dir = find_nvcc().parent
    except BuildError:
        pass
    if nvcc_dir is not None:
        found.append(nvcc_dir / "cuobjdump")
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            found.extend(sorted(Path(base).glob("*/bin/cuobjdump")))
    return next((p for p in found if p.is_file()), None)


def dump_sass(binary: Path) -> str:
    """SASS of every kernel in ``binary`` (cuobjdump needs nvdisasm beside it or on PATH)."""
    tool = find_cuobjdump()
    if tool is None:
        raise BuildError("cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)")
    env = dict(os.environ)
    env["PATH"] = f"{tool.parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(tool), "--dump-sass", str(binary)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise BuildError(f"cuobjdump failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def sass_by_function(sass: str) -> dict[str, str]:
    """Splits a cuobjdump SASS listing into {mangled function name: its instructions}."""
    functions: dict[str, list[str]] = {}
    current = None
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            functions.setdefault(current, [])
        elif current is not None:
            functions[current].append(line)
    return {name: "\n".join(lines) for name, lines in functions.items()}


def build(
    archs: str | list[str] = "80",
    jobs: int | None = None,
    force: bool = False,
    progress=print,
) -> Path:
    """Builds (or finds cached) libfa_kernels.so for ``archs``; returns its path."""
    plan = _Plan(parse_archs(archs))
    if plan.library.is_file() and not force:
        return plan.library
    plan.obj_dir.mkdir(parents=True, exist_ok=True)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    todo = [u for u in plan.units if force or not plan.obj(u).is_file()]
    jobs = max(1, jobs or os.cpu_count() or 1)
    progress(
        f"fa_inductor: building {len(plan.units)} units for sm_{', sm_'.join(plan.archs)} "
        f"({len(plan.units) - len(todo)} cached, {len(todo)} to compile, -j {jobs}, nvcc {plan.version})"
    )
    logs: dict[Path, str] = {}
    start = time.monotonic()
    if todo:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_compile, plan, u) for u in todo]
            try:
                for done, fut in enumerate(as_completed(futures), 1):
                    unit, elapsed, log = fut.result()
                    logs[unit] = log
                    progress(f"  [{done}/{len(todo)}] {unit.relative_to(plan.root)} ({elapsed:.0f} s)")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    objs = [str(plan.obj(u)) for u in plan.units]
    fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=plan.out_dir)
    os.close(fd)
    link = [str(plan.nvcc), "-shared", "-cudart=static", *gencode_flags(plan.archs), "-o", tmp_name, *objs]
    proc = subprocess.run(link, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        os.unlink(tmp_name)
        raise BuildError(f"link failed:\n{proc.stderr[-6000:]}")
    # The log covers every unit, cached ones too (their reports are kept beside the objects).
    unit_logs = []
    for u in plan.units:
        saved = plan.obj(u).with_suffix(".log")
        unit_logs.append(logs.get(u) or (saved.read_text() if saved.is_file() else f"(no log for {u})\n"))
    log_path = plan.out_dir / "build.log"
    log_path.write_text("\n".join(unit_logs) + f"\n$ {' '.join(link)}\n{proc.stdout}{proc.stderr}\n")
    os.replace(tmp_name, plan.library)
    spills = spill_report("\n".join(unit_logs))
    for line in spills:
        progress(f"  warning: local-memory spill: {line}")
    progress(f"fa_inductor: built in {time.monotonic() - start:.0f} s; log {log_path}")
    return plan.library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fa_inductor.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="80", help="comma-separated: 80, 86, 89, 90, 90a (default 80)")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel nvcc processes (default: CPU count)")
    parser.add_argument("--force", action="store_true", help="recompile every unit")
    args = parser.parse_args(argv)
    try:
        path = build(args.arch, jobs=args.jobs, force=args.force, progress=lambda s: print(s, flush=True))
    except BuildError as e:
        print(f"fa_inductor.build: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
