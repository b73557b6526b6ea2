"""SM90 forward at head dim 128 without a mask: 176-key tiles (the ablation's full kernel) against
128-key tiles (its "128-key tiles without a mask" instance) beside SDPA's cuDNN backend, kernel
calls only, at the lengths where the dispatcher picks between them (csrc/sm90/fwd_sm90_config.h).
Each number is the median of 5 rounds of triton's do_bench median, the three in rotated order.

    python benchmarks/fwd_tile_shapes.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from fa_inductor import kernels

SHAPES = ((512, 32), (1024, 16), (2048, 8), (3000, 5), (4096, 4), (8192, 2), (8448, 4), (16384, 1))


def main() -> int:
    dev = torch.device("cuda")
    variants = kernels.ablation_variants(dev)
    if not variants:
        print("no SM90 ablation instances in this library (needs an sm_90a build on Hopper)")
        return 1
    names = list(variants)
    wide, narrow = variants[names[0]], variants[names[5]]
    print(f"device: {torch.cuda.get_device_name()}; bf16, 16 heads of 128, non-causal; "
          f"176 = '{names[0]}', 128 = '{names[5]}'")
    for S, B in SHAPES:
        H, D = 16, 128
        q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
                   for _ in range(3))
        scale = D ** -0.5

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, scale=scale)

        fns = {"176": lambda: wide(q, k, v, scale, False), "128": lambda: narrow(q, k, v, scale, False),
               "cudnn": cudnn}
        ref = cudnn().float()
        for n in ("176", "128"):
            err = (fns[n]().float() - ref).abs().max().item()
            assert err < 2e-2, f"{n}-key tiles differ from cuDNN by {err}"
        times = {n: [] for n in fns}
        order = list(fns)
        for r in range(5):
            for n in order[r % 3:] + order[:r % 3]:
                times[n].append(do_bench(fns[n], warmup=25, rep=100))
        us = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        tflops = {n: 4 * S * S * D * H * B / t / 1e6 for n, t in us.items()}
        print(f"S={S:5d} B={B:2d}  176: {us['176']:7.1f} us {tflops['176']:4.0f} TF   "
              f"128: {us['128']:7.1f} us {tflops['128']:4.0f} TF   cuDNN: {us['cudnn']:7.1f} us "
              f"{tflops['cudnn']:4.0f} TF   time 176/128 {us['176'] / us['128']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
