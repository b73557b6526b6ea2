"""Quick forward timing of our kernel families beside SDPA's cuDNN and flash backends, one device,
one process.  For iterating on kernels; the full comparison (FlexAttention, efficient, backward,
chart) is benchmarks/attention.py.

The FA3 paper's grid: 16k tokens per batch (B = 16384 / seqlen), hidden 2048 (H = 2048 / D),
causal and not; q, k, v as [B, S, H, D] projections viewed as [B, H, S, D].
TFLOP/s = 4 * S^2 * D * H * B / t (halved when causal); t = median over rounds (implementations in
rotated order) of triton.testing.do_bench medians.

    python benchmarks/fwd_quick.py [--out FILE] [--head-dims 64,128,256] [--seqlens 512,...,16384]
        [--families sm90,sm80] [--ablation]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from attnbench.timing import back_to_back_us

from fa_inductor import kernels

PEERS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def tflops(S, D, H, B, causal, ms):
    return 4 * S * S * D * H * B / (2 if causal else 1) / ms * 1e-9


def host_overhead_us(backend, families, dev, dtype, calls: int = 2000) -> dict[str, float]:
    """Wall time per call on a [1, 1, 128, 128] problem: what each call costs the CPU (argument
    checks, descriptors, launch), which the GPU sees as idle time between short kernels."""
    q, k, v = (torch.randn(1, 1, 128, 128, device=dev, dtype=dtype) for _ in range(3))
    out = torch.empty_like(q)
    lse = torch.empty(1, 1, 128, device=dev, dtype=torch.float32)
    impls = {fam: (lambda fam=fam: backend.forward(q, k, v, 0.1, False, False, -1, -1, 0.0, out, lse, family=fam))
             for fam in families}
    impls["sdpa-cudnn"] = lambda: F.scaled_dot_product_attention(q, k, v)
    result = {}
    for name, fn in impls.items():
        ctx = sdpa_kernel(SDPBackend.CUDNN_ATTENTION) if name == "sdpa-cudnn" else contextlib.nullcontext()
        with ctx:
            result[name] = back_to_back_us(fn, calls, 50, torch.cuda.synchronize)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "fwd_quick.json"))
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--families", default="sm90,sm80")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rep-ms", type=int, default=200, help="timing per implementation and point")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ablation", action="store_true",
                    help="also time the SM90 ablation instances (head dim 128 only)")
    args = ap.parse_args()

    dev = torch.device("cuda")
    backend = kernels.get_backend(dev)
    assert backend is not None, kernels.unavailable_reason(dev)
    families = [f for f in args.families.split(",") if f != "sm90" or backend.lib.has("fa_fwd_sm90")]
    ablation = kernels.ablation_variants(dev) if args.ablation else {}
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name}; ours: {', '.join(families)}; peers: SDPA {', '.join(PEERS)}; {args.dtype}", flush=True)
    host_us = host_overhead_us(backend, families, dev, dtype)
    print("host time per call (tiny shape, GPU never the bottleneck): "
          + ", ".join(f"{k} {v:.1f} us" for k, v in host_us.items()), flush=True)
    rows = []
    for D in (int(d) for d in args.head_dims.split(",")):
        H = args.hidden // D
        for S in (int(s) for s in args.seqlens.split(",")):
            B = max(1, args.tokens // S)
            q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dtype).transpose(1, 2) for _ in range(3))
            out = torch.empty(B, S, H, D, device=dev, dtype=dtype).transpose(1, 2)
            lse = torch.empty(B, H, S, device=dev, dtype=torch.float32)
            scale = D ** -0.5
            for causal in (False, True):
                impls = {}
                for fam in families:
                    impls[fam] = (lambda fam=fam: backend.forward(q, k, v, scale, causal, False, -1, -1, 0.0,
                                                                  out, lse, family=fam))
                for peer, sdp in PEERS.items():
                    def run(sdp=sdp):
                        with sdpa_kernel(sdp):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                    impls[peer] = run
                if D == 128:
                    for vname, fn in ablation.items():
                        impls[f"sm90[{vname}]"] = (lambda fn=fn: fn(q, k, v, scale, causal))
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).float()
                row = {"head_dim": D, "seqlen": S, "batch": B, "heads": H, "causal": causal, "dtype": args.dtype}
                for iname, fn in list(impls.items()):
                    try:
                        res = fn()
                        got = (res if res is not None else out).float()
                        row[f"{iname}_diff"] = ((got - ref).norm() / ref.norm()).item()
                    except Exception as e:  # noqa: BLE001 - a peer may not support a shape
                        row[f"{iname}_error"] = f"{type(e).__name__}: {e}"[:200]
                        del impls[iname]
                # Rounds in rotated order: whichever runs first after a pause sees a cooler, faster
                # or slower clock; the median over rounds takes that out of the ratios.
                names = list(impls)
                times = {iname: [] for iname in names}
                for r in range(args.rounds):
                    for iname in names[r % len(names):] + names[: r % len(names)]:
                        times[iname].append(do_bench(impls[iname], warmup=25, rep=args.rep_ms // args.rounds,
                                                     return_mode="median"))
                for iname, ts in times.items():
                    row[f"{iname}_tflops"] = tflops(S, D, H, B, causal, statistics.median(ts))
                rows.append(row)
                cells = "  ".join(f"{i} {row.get(i + '_tflops', float('nan')):6.1f}" for i in impls)
                best_ours = max(row.get(f + "_tflops", 0) for f in families)
                ratio = "  ".join(f"/{p} {best_ours / row[p + '_tflops']:.2f}" for p in PEERS if p + "_tflops" in row)
                print(f"d={D:3d} S={S:5d} causal={int(causal)}  {cells}  | ours{ratio}  "
                      f"diff {max(row.get(f + '_diff', 0) for f in families):.1e}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "families": families, "library": str(backend.lib.path),
                   "host_us_per_call": host_us, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
