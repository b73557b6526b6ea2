"""The launch order of masked (causal, windowed) kernel grids, csrc/common/tile_order.h.

Causal tiles cost from one key block to all of them; the order decides how evenly the GPU's last
wave ends and how much K/V stays in L2.  Its rules are specified by a host program,
tests/cpp/tile_order_check.cu, compiled here with nvcc (no GPU needed) and run over a range of
grid shapes: every tile exactly once, each (head, batch) pair's tiles longest first, the leading
pairs one after another, the last group rank by rank and large enough to fill the tail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fa_inductor import build

ROOT = Path(__file__).resolve().parents[1]


def test_masked_grid_order_rules(tmp_path):
    try:
        nvcc = build.find_nvcc()
    except build.BuildError as e:
        pytest.skip(f"cannot compile the check here: {e}")
    exe = tmp_path / "tile_order_check"
    compiled = subprocess.run(
        [str(nvcc), "-std=c++17", "-x", "cu", "-I", str(ROOT / "csrc"),
         str(ROOT / "tests" / "cpp" / "tile_order_check.cu"), "-o", str(exe)],
        capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith("ok:"), ran.stdout
