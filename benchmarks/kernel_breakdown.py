"""Where an attention call's GPU time goes: each kernel's time per call, ours beside SDPA's.

For every point (head dim, seqlen at 16k tokens, 16 heads or the heads of a hidden size, bf16,
causal and not) and every
implementation (our kernel families called directly, SDPA's cuDNN and flash backends), the
forward and the backward are each run a few times under ``torch.profiler``; the kernels (and
memsets/copies) are summed by name and divided by the number of calls, beside the wall time per
call measured with CUDA events on the same stream (their difference is time the GPU waited).

    python benchmarks/kernel_breakdown.py --head-dims 128 --seqlens 1024,2048,8192 --out x.json

Why: the totals in bwd_quick.py / attention.py do not say whether a gap to cuDNN is the main
kernel or the light kernels around it (preprocessing, dQ conversion), which need different fixes.
"""

from __future__ import annotations

import argparse
import collections
import json
import re

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}


def short_name(name: str, width: int = 90) -> str:
    """A kernel's name without template arguments and parameter lists, cut to ``width``."""
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    text = "".join(out) or name
    if text.startswith("at::native::"):  # generic element-wise kernels: the functor says which
        text = name
    return text[:width]


def profile_calls(fn, calls: int) -> tuple[dict[str, float], float]:
    """({kernel: microseconds per call}, wall microseconds per call) of ``calls`` calls of fn."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = collections.defaultdict(float)
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[short_name(evt.name)] += evt.device_time / calls
    return dict(per_kernel), start.elapsed_time(end) * 1e3 / calls


def sdpa_calls(name, q, k, v, do, causal, scale):
    """(forward fn, backward fn) of SDPA backend ``name``, or None if it refuses the shape."""
    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
    try:
        with sdpa_kernel(SDPA_BACKENDS[name]):
            out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, scale=scale)
    except RuntimeError:
        return None

    def fwd():
        with sdpa_kernel(SDPA_BACKENDS[name]), torch.no_grad():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    return fwd, lambda: torch.autograd.grad(out, (qq, kk, vv), do, retain_graph=True)


def our_calls(backend, family_fwd, family_bwd, q, k, v, do, causal, scale):
    B, H, S, D = q.shape
    out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    grads = [torch.empty_like(t) for t in (q, k, v)]

    def fwd():
        backend.forward(q, k, v, scale, causal, False, -1, -1, 0.0, out, lse, family=family_fwd)

    def bwd():
        backend.backward(do, q, k, v, out, lse, scale, causal, False, -1, -1, 0.0, *grads, False,
                         family=family_bwd)

    fwd()
    return fwd, bwd


def main() -> int:
    from fa_inductor import kernels

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--seqlens", default="1024,2048,8192")
    ap.add_argument("--causal", default="0,1", help="comma-separated 0/1")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=0,
                    help="heads = hidden / head dim, as in the benchmark grid (hidden 2048); default 16 heads")
    ap.add_argument("--out", default="kernel_breakdown.json")
    ap.add_argument("--peers", default=",".join(SDPA_BACKENDS), help="SDPA backends to time beside ours")
    ap.add_argument("--directions", default="fwd,bwd")
    ap.add_argument("--fwd-family", default=None, help="our forward family (default: the dispatcher's)")
    ap.add_argument("--bwd-family", default=None, help="our backward family, sm80 or sm90 (default: the dispatcher's)")
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(SDPA_BACKENDS)
    if unknown:
        raise SystemExit(f"unknown --peers {sorted(unknown)}; choose from {list(SDPA_BACKENDS)}")
    directions = args.directions.split(",")
    backend = kernels.get_backend(torch.device("cuda"))
    if backend is None:
        raise SystemExit(f"no compiled kernels: {kernels.unavailable_reason('cuda')}")
    dev = torch.cuda.get_device_name()
    fwd_family = args.fwd_family or backend.forward_name
    print(f"kernel breakdown on {dev}: ours (fwd {fwd_family}, "
          f"bwd {args.bwd_family or backend.backward_name}) vs "
          f"{', '.join(peers) or 'no peers'}; bf16, {f'hidden {args.hidden}' if args.hidden else '16 heads'}, "
          f"16k tokens, {args.calls} calls per measurement", flush=True)
    rows = []
    tokens = 16384
    for D in (int(x) for x in args.head_dims.split(",")):
        if args.hidden and args.hidden % D:
            raise SystemExit(f"--hidden {args.hidden} is not a multiple of head dim {D}")
        H = args.hidden // D if args.hidden else 16
        for causal in (bool(int(x)) for x in args.causal.split(",")):
            for S in (int(x) for x in args.seqlens.split(",")):
                B = max(1, tokens // S)
                q, k, v, do = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                               for _ in range(4))
                scale = D ** -0.5
                impls = {"ours": our_calls(backend, fwd_family, args.bwd_family or backend.backward_family(q, v),
                                           q, k, v, do, causal, scale)}
                for name in peers:
                    calls = sdpa_calls(name, q, k, v, do, causal, scale)
                    if calls is not None:
                        impls[name] = calls
                for impl, (fwd, bwd) in impls.items():
                    for direction, fn in (("fwd", fwd), ("bwd", bwd)):
                        if direction not in directions:
                            continue
                        kernels_us, wall_us = profile_calls(fn, args.calls)
                        row = dict(device=dev, head_dim=D, seqlen=S, batch=B, heads=H, causal=causal, impl=impl,
                                   direction=direction, wall_us=wall_us, kernels_us=kernels_us)
                        rows.append(row)
                        print(f"\n{impl} {direction} d{D} s{S} causal={int(causal)}: wall {wall_us:.1f} us/call, "
                              f"kernels {sum(kernels_us.values()):.1f} us")
                        for name, us in sorted(kernels_us.items(), key=lambda kv: -kv[1]):
                            print(f"    {us:9.1f} us  {name}")
                del q, k, v, do, impls
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\ndevice: {dev}  (GPU us per call: main = the longest kernel, other = the rest; "
          "speed = peer time / our time, so > 1 means ours is faster)")
    print(f"{'dir':>3s} {'D':>3s} {'S':>6s} c {'ours main':>9s} {'other':>6s} "
          + " ".join(f"{p + ' main':>15s} {'other':>6s}" for p in peers)
          + " " + " ".join(f"{'vs ' + p + ' (all/main)':>26s}" for p in peers))
    split = {}
    for r in rows:
        ks = sorted(r["kernels_us"].values(), reverse=True)
        split[(r["direction"], r["head_dim"], r["seqlen"], r["causal"], r["impl"])] = (ks[0], sum(ks[1:]))
    for key in dict.fromkeys(k[:4] for k in split):
        ours = split.get((*key, "ours"))
        if ours is None:
            continue
        cells, ratios = [], []
        for peer in peers:
            theirs = split.get((*key, peer))
            if theirs is None:
                cells.append(f"{'-':>15s} {'-':>6s}")
                ratios.append(f"{'-':>26s}")
                continue
            cells.append(f"{theirs[0]:15.1f} {theirs[1]:6.1f}")
            ratios.append(f"{sum(theirs) / sum(ours):19.3f}/{theirs[0] / ours[0]:.3f}")
        d, hd, s, c = key
        print(f"{d:>3s} {hd:3d} {s:6d} {int(c)} {ours[0]:9.1f} {ours[1]:6.1f} " + " ".join(cells) + " " + " ".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
