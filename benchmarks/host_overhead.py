"""Host time per call of our attention op against SDPA's (the short points of the grid are bound
by it), and where our call spends it.

For each shape, N calls back to back with one synchronisation at the end: when the GPU work of a
call is shorter than its host work, the time per call is the host's.  Then a cProfile of our
calls (top functions by own time).  Prints the device, what was compared and the ratio.

    python benchmarks/host_overhead.py [--calls 300] [--profile-top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch
import torch.nn.functional as F
from attnbench.timing import back_to_back_us


def per_call_us(fn, calls: int) -> float:
    return back_to_back_us(fn, calls, 10, torch.cuda.synchronize)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args()
    import fa_inductor.ops  # noqa: F401  registers torch.ops.fa

    op = torch.ops.fa.attention_forward
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; host time per forward call (us), {args.calls} calls, one sync; "
          "inputs [B,H,S,D] bf16 views of [B,S,H,D]", flush=True)
    print(f"{'shape':>24s} {'grad':>5s} {'ours':>8s} {'sdpa':>8s} {'ours/sdpa':>9s}")
    shapes = [(1, 1, 128, 64), (32, 16, 512, 128), (16, 8, 1024, 256)]
    for B, H, S, D in shapes:
        for grad in (False, True):
            q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                       .requires_grad_(grad) for _ in range(3))
            ours = lambda: op(q, k, v, None, D ** -0.5, True, False, -1, -1, 0.0, 0.0, None)  # noqa: E731
            sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
            try:
                t_ours = per_call_us(ours, args.calls)
            except Exception as e:  # noqa: BLE001 - report, go on
                print(f"ours failed: {type(e).__name__}: {e}")
                return 1
            t_sdpa = per_call_us(sdpa, args.calls)
            print(f"{str((B, H, S, D)):>24s} {int(grad):5d} {t_ours:8.1f} {t_sdpa:8.1f} {t_ours / t_sdpa:9.2f}",
                  flush=True)
    q, k, v = (torch.randn(1, 128, 1, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               .requires_grad_() for _ in range(3))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        op(q, k, v, None, 0.125, True, False, -1, -1, 0.0, 0.0, None)
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile_top)
    print(s.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
