"""Our SM80 backward vs SDPA's flash backward (FlashAttention-2) at head dim 128.

Grid: seqlen 1k..16k at 16k tokens (batch = 16k / seqlen), 16 heads, causal and not, bf16.
TFLOP/s = 2.5 * 4 * s^2 * d * h * B (halved when causal) / time.  Both backwards get the same
q, k, v, dO and the same out/lse (from SDPA's flash forward).  Times: CUDA events, median of
repeats after warm-up.  Prints a table last and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from fa_inductor import kernels


def timed(fn, warmup=3, reps=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="sm80_bwd.json")
    ap.add_argument("--deterministic", action="store_true")
    args = ap.parse_args()
    backend = kernels.get_backend(torch.device("cuda"))
    assert backend is not None, kernels.unavailable_reason("cuda")
    dev = torch.cuda.get_device_name()
    dtype, H, D, tokens = torch.bfloat16, 16, 128, 16384
    rows = []
    for causal in (False, True):
        for S in (1024, 2048, 4096, 8192, 16384):
            B = tokens // S
            q, k, v, do = (torch.randn(B, S, H, D, device="cuda", dtype=dtype).transpose(1, 2)
                           for _ in range(4))
            scale = D ** -0.5
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, causal, False, scale=scale)[:2]
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o_ref = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal,
                                                                         scale=scale)
            sdpa_bwd = lambda: torch.autograd.grad(o_ref, (qq, kk, vv), do, retain_graph=True)  # noqa: E731
            grads = [torch.empty_like(t) for t in (q, k, v)]
            ours = lambda: backend.backward(do, q, k, v, out, lse, scale, causal, False, -1, -1, 0.0,  # noqa: E731
                                            *grads, args.deterministic)
            ref = sdpa_bwd()
            ours()
            torch.cuda.synchronize()
            errs = [((g.float() - r.float()).norm() / r.float().norm()).item() for g, r in zip(grads, ref)]
            t_ours, t_sdpa = timed(ours), timed(sdpa_bwd)
            flops = 2.5 * 4 * S * S * D * H * B / (2 if causal else 1)
            rows.append(dict(device=dev, causal=causal, seqlen=S, batch=B, heads=H, head_dim=D,
                             dtype=str(dtype), deterministic=args.deterministic,
                             ours_ms=t_ours * 1e3, sdpa_flash_ms=t_sdpa * 1e3,
                             ours_tflops=flops / t_ours / 1e12, sdpa_flash_tflops=flops / t_sdpa / 1e12,
                             ratio=t_sdpa / t_ours, rel_diff_vs_sdpa=errs))
            del q, k, v, do, out, lse, qq, kk, vv, o_ref, grads, ref
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"device: {dev}  (bf16, d=128, 16 heads, 16k tokens, deterministic={args.deterministic})")
    print("causal seqlen  ours_TF  sdpa_TF  ratio  max_rel_diff(dq,dk,dv vs sdpa)")
    for r in rows:
        print(f"bwd {int(r['causal'])} S={r['seqlen']:5d} {r['ours_tflops']:7.1f} {r['sdpa_flash_tflops']:7.1f}"
              f" {r['ratio']:5.2f}  {max(r['rel_diff_vs_sdpa']):.2e}")


if __name__ == "__main__":
    main()
