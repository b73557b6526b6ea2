"""Does the memory order of q, k, v or of the output move the forward kernels' time?

The grid (benchmarks/attention.py) feeds contiguous [B, H, S, D] tensors ("bhsd"), the kernel
benchmarks (kernel_breakdown.py, clock_drift.py) [B, S, H, D] memory seen as [B, H, S, D] ("bshd"),
and the op always writes its output in bshd memory.  At a few grid points this times our forward
(KernelBackend.forward: the SM90 family, and at head dim 128 the SM80 family) with either input
order and either output order, beside SDPA's cuDNN backend (and its flash backend at head dim 128)
on the same inputs: triton's do_bench (L2 flushed before each call), four rounds in alternating
order, medians.  16k tokens, hidden 2048, bf16.

    python benchmarks/output_layout.py
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench
from fa_inductor import kernels


def main() -> int:
    b = kernels.get_backend(torch.device("cuda"))
    points = [(64, 2048, True), (64, 512, False), (256, 512, True), (128, 512, False), (128, 2048, True)]
    print(f"device: {torch.cuda.get_device_name()}")
    print(f"{'D':>4} {'S':>5} c  {'in':>5} {'out':>5}  {'ours ms':>8}  {'cudnn ms':>8}  cudnn/ours")
    for D, S, causal in points:
        B, H = 16384 // S, 2048 // D
        for inl in ("bhsd", "bshd"):
            def mk():
                if inl == "bhsd":
                    return torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
                return torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            q, k, v = mk(), mk(), mk()
            lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
            outs = {"bshd": torch.empty(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2),
                    "bhsd": torch.empty(B, H, S, D, device="cuda", dtype=torch.bfloat16)}
            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            fns = {o: (lambda o=o: b.forward(q, k, v, D ** -0.5, causal, False, -1, -1, 0.0, outs[o], lse)) for o in outs}
            fns["cudnn"] = cudnn
            if D == 128:
                for o in ("bshd", "bhsd"):
                    fns["sm80_" + o] = (lambda o=o: b.forward(q, k, v, D ** -0.5, causal, False, -1, -1, 0.0, outs[o], lse,
                                                              family="sm80"))
                def flash():
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                fns["flash"] = flash
            for f in fns.values():
                f()
            torch.cuda.synchronize()
            t = {n: [] for n in fns}
            for r in range(4):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                for n in order:
                    t[n].append(do_bench(fns[n], warmup=100, rep=60))
            cd = statistics.median(t["cudnn"])
            for o in ("bshd", "bhsd"):
                m = statistics.median(t[o])
                print(f"{D:4d} {S:5d} {int(causal)}  {inl:>5} {o:>5}  {m:8.4f}  {cd:8.4f}  {cd / m:6.3f}", flush=True)
            if D == 128:
                fl = statistics.median(t["flash"])
                for o in ("bshd", "bhsd"):
                    m = statistics.median(t["sm80_" + o])
                    print(f"{D:4d} {S:5d} {int(causal)}  {inl:>5} {o:>5}  sm80 {m:8.4f}  flash {fl:8.4f}  flash/sm80 {fl / m:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
