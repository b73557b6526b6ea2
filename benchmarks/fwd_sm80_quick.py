"""Quick forward timing of our SM80 kernel beside SDPA's flash backend (FlashAttention-2).

The FA3 paper's head-dim-128 grid: 16k tokens per batch (B = 16384 / seqlen), 16 heads
(hidden 2048), seqlen 1k..16k, causal and not; q, k, v as [B, S, H, D] projections viewed as
[B, H, S, D].  TFLOP/s = 4 * S^2 * D * H * B / t (halved when causal); t = median of
triton.testing.do_bench.  Writes JSON to the path given (default $OUT/sm80_fwd.json).

    python benchmarks/fwd_sm80_quick.py [--out FILE] [--head-dim 128] [--seqlens 1024,2048,...]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from fa_inductor import kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "sm80_fwd.json"))
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlens", default="1024,2048,4096,8192,16384")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--label", default="", help="names the variant in the output")
    args = ap.parse_args()

    dev = torch.device("cuda")
    backend = kernels.get_backend(dev)
    assert backend is not None, kernels.unavailable_reason(dev)
    dtype = getattr(torch, args.dtype)
    D = args.head_dim
    H = args.hidden // D
    rows = []
    for S in (int(s) for s in args.seqlens.split(",")):
        B = max(1, args.tokens // S)
        q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dtype).transpose(1, 2) for _ in range(3))
        out = torch.empty(B, S, H, D, device=dev, dtype=dtype).transpose(1, 2)
        lse = torch.empty(B, H, S, device=dev, dtype=torch.float32)
        scale = D ** -0.5
        for causal in (False, True):
            def ours():
                backend.forward(q, k, v, scale, causal, False, -1, -1, 0.0, out, lse)

            def sdpa():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

            ours()
            ref = sdpa()
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            flops = 4 * S * S * D * H * B / (2 if causal else 1)
            t_ours = do_bench(ours, warmup=50, rep=300, return_mode="median")
            t_sdpa = do_bench(sdpa, warmup=50, rep=300, return_mode="median")
            row = {
                "seqlen": S, "batch": B, "heads": H, "head_dim": D, "causal": causal, "dtype": args.dtype,
                "ours_ms": t_ours, "sdpa_flash_ms": t_sdpa,
                "ours_tflops": flops / t_ours * 1e-9, "sdpa_flash_tflops": flops / t_sdpa * 1e-9,
                "speedup": t_sdpa / t_ours, "rel_diff_vs_sdpa": err,
            }
            rows.append(row)
            print(f"{args.label}d={D} S={S:6d} B={B:3d} causal={int(causal)}  ours {row['ours_tflops']:6.1f}  "
                  f"sdpa-flash {row['sdpa_flash_tflops']:6.1f} TFLOP/s  x{row['speedup']:.3f}  diff {err:.1e}",
                  flush=True)
    result = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "kernel": backend.name,
        "label": args.label,
        "library": str(backend.lib.path),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
