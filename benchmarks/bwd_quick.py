"""Our backward kernel families vs SDPA's cuDNN and flash (FlashAttention-2) backwards.

Grid: seqlen 1k..16k at 16k tokens (batch = 16k / seqlen), 16 heads, causal and not, bf16, head
dims from --head-dims.  TFLOP/s = 2.5 * 4 * s^2 * d * h * B (halved when causal) / time.  Every
backward gets the same q, k, v and dO; ours take out/lse from SDPA's flash forward (the
backward's contract does not depend on which forward produced them), SDPA's backwards run through
autograd on their own forward.  Times: CUDA events, median of repeats after warm-up, each
implementation timed in turn per shape.  Prints what it compared, the device and the ratios, a
table last, and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fa_inductor import kernels

SDPA_BACKENDS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}


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


def sdpa_backward(name, q, k, v, do, causal, scale):
    """fn() running SDPA backend `name`'s backward (on its own forward), or None if it refuses."""
    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
    try:
        with sdpa_kernel(SDPA_BACKENDS[name]):
            o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, scale=scale)
        fn = lambda: torch.autograd.grad(o, (qq, kk, vv), do, retain_graph=True)  # noqa: E731
        fn()
    except RuntimeError:
        return None
    return fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bwd_quick.json")
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--seqlens", default="1024,2048,4096,8192,16384")
    ap.add_argument("--families", default=None, help="comma-separated (default: sm80, and sm90 on Hopper)")
    ap.add_argument("--deterministic", action="store_true")
    args = ap.parse_args()
    backend = kernels.get_backend(torch.device("cuda"))
    assert backend is not None, kernels.unavailable_reason("cuda")
    families = args.families.split(",") if args.families else (
        ["sm80", "sm90"] if backend.backward_name == "sm90" else ["sm80"])
    dev = torch.cuda.get_device_name()
    dtype, H, tokens = torch.bfloat16, 16, 16384
    print(f"backward: ours ({', '.join(families)}) vs SDPA cuDNN and flash on {dev}, bf16, 16 heads, "
          f"16k tokens, deterministic={args.deterministic}", flush=True)
    rows = []
    for D in (int(d) for d in args.head_dims.split(",")):
        for causal in (False, True):
            for S in (int(s) for s in args.seqlens.split(",")):
                B = max(1, tokens // S)
                q, k, v, do = (torch.randn(B, S, H, D, device="cuda", dtype=dtype).transpose(1, 2)
                               for _ in range(4))
                scale = D ** -0.5
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                    q, k, v, 0.0, causal, False, scale=scale)[:2]
                flops = 2.5 * 4 * S * S * D * H * B / (2 if causal else 1)
                row = dict(device=dev, causal=causal, seqlen=S, batch=B, heads=H, head_dim=D, dtype=str(dtype),
                           deterministic=args.deterministic, tflops={}, rel_diff_vs_sdpa_flash={})
                fns = {name: sdpa_backward(name, q, k, v, do, causal, scale) for name in SDPA_BACKENDS}
                ref = fns["sdpa_flash"]() if fns["sdpa_flash"] else None
                for fam in families:
                    if fam == "sm90" and backend.backward_family(q, v, args.deterministic) != "sm90":
                        continue
                    grads = [torch.empty_like(t) for t in (q, k, v)]
                    fn = (lambda grads=grads, fam=fam: backend.backward(  # noqa: E731
                        do, q, k, v, out, lse, scale, causal, False, -1, -1, 0.0, *grads, args.deterministic,
                        family=fam))
                    fn()
                    torch.cuda.synchronize()
                    if ref is not None:
                        row["rel_diff_vs_sdpa_flash"][fam] = max(
                            ((g.float() - r.float()).norm() / r.float().norm()).item() for g, r in zip(grads, ref))
                    fns[fam] = fn
                for name, fn in fns.items():
                    if fn is not None:
                        row["tflops"][name] = flops / timed(fn) / 1e12
                rows.append(row)
                del q, k, v, do, out, lse, fns, ref
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"device: {dev}")
    print("    D causal seqlen  " + "  ".join(f"{n:>10s}" for n in families + list(SDPA_BACKENDS))
          + "  " + "  ".join(f"{f}/cudnn {f}/flash" for f in families) + "  max_rel_diff")
    for r in rows:
        tf = r["tflops"]
        cells = "  ".join(f"{tf.get(n, float('nan')):10.1f}" for n in families + list(SDPA_BACKENDS))
        ratios = "  ".join(
            f"{tf.get(f, float('nan')) / tf.get('sdpa_cudnn', float('nan')):11.2f} "
            f"{tf.get(f, float('nan')) / tf.get('sdpa_flash', float('nan')):11.2f}" for f in families)
        diff = max(r["rel_diff_vs_sdpa_flash"].values(), default=float("nan"))
        print(f"bwd {r['head_dim']:3d} {int(r['causal'])} {r['seqlen']:6d}  {cells}  {ratios}  {diff:.1e}")


if __name__ == "__main__":
    main()
