"""One grid point's forward timed along the call's path: the kernel alone (KernelBackend.forward),
the op (torch.ops.fa.attention_forward) without and with inputs that require grad (the grid's
"forward (grad)"), the last with Python's garbage collector off, and SDPA's flash backend without
and with grad; triton's do_bench (L2 flushed before each call), four rounds in alternating order,
percentiles of all repetitions, then each path's host time per call (200 calls back to back).
Head dim 128, non-causal, seqlen 512, batch 32, 16 heads, bf16, [B, H, S, D] inputs (the grid's
first point).  The family is this device's (FA_INDUCTOR_FWD_FAMILY=sm80 forces the SM80 kernels).

    python benchmarks/op_paths.py
"""
from __future__ import annotations

import gc
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

import fa_inductor.ops  # noqa: F401  registers torch.ops.fa
from fa_inductor import kernels


def main() -> int:
    B, H, S, D = 32, 16, 512, 128
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    b = kernels.get_backend(torch.device("cuda"))
    print(f"device: {torch.cuda.get_device_name()}; forward family: {b.forward_name}")
    out = torch.empty(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
    sc = D ** -0.5
    def op(a, bb, c):
        return torch.ops.fa.attention_forward(a, bb, c, None, sc, False, False, -1, -1, 0.0, 0.0, None)
    def flash(a, bb, c):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(a, bb, c)
    fns = {
        "kernel": lambda: b.forward(q, k, v, sc, False, False, -1, -1, 0.0, out, lse),
        "op_nograd": lambda: op(q, k, v),
        "op_grad": lambda: op(qg, kg, vg),
        "flash_nograd": lambda: flash(q, k, v),
        "flash_grad": lambda: flash(qg, kg, vg),
    }
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    samples = {n: [] for n in fns}
    samples["op_grad_gc_off"] = []
    for r in range(4):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for n in names:
            samples[n] += do_bench(fns[n], warmup=250, rep=100, return_mode="all")
        gc.disable()
        samples["op_grad_gc_off"] += do_bench(fns["op_grad"], warmup=250, rep=100, return_mode="all")
        gc.enable()
    print(f"{'impl':>16} {'n':>5} {'p10':>7} {'p20':>7} {'p50':>7} {'p80':>7} {'p90':>7}  host us/call")
    for n, s in samples.items():
        qs = statistics.quantiles(s, n=10, method="inclusive")
        f = fns.get(n, fns["op_grad"])
        for _ in range(20):
            f()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            f()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        print(f"{n:>16} {len(s):5d} {qs[0]:7.4f} {qs[1]:7.4f} {statistics.median(s):7.4f} {qs[7]:7.4f} {qs[8]:7.4f}  {(t1 - t0) / 200 * 1e6:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
