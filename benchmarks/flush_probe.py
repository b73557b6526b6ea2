"""What in the grid's way of timing (L2 flushed before each call, a 250 ms back-to-back warm-up,
one implementation after another, contiguous inputs, autograd on) moves our forward against SDPA's
cuDNN one (issue 5: head dim 64 causal 2k gives 1.01x cuDNN in kernel time, 0.95-0.98x in the
grid).  Each point runs both implementations (the grid's own, attnbench.impls) under four
preludes before each timed call, the two alternating call by call so drift falls on both
(--blocked: each timed for all its repetitions in a row, as the grid times one implementation
after another):

    warm        nothing: back-to-back calls, inputs partly in L2
    zero        a 256 MB buffer zeroed (triton's do_bench, the grid's timer): L2 full of dirty
                lines of that buffer, which must be written back as the call fills L2
    read        the same buffer summed: L2 full of clean lines, nothing to write back
    zero_wait   zeroed, then the GPU spins about 50 us before the call (torch.cuda._sleep), so
                the call starts behind a stream that has been idle on memory for a while

Times are CUDA events around the call alone; medians over the repetitions; the ratio is
cuDNN's time over ours (above 1: ours faster).  --grad times a training forward as the grid
does by default (inputs that require grad, autograd on); without it, inference.

--layout bhsd makes q, k, v contiguous [B, H, S, D] (the grid's default); bshd (the default here)
makes them [B, S, H, D] projections viewed as [B, H, S, D], as models have them.

--warmup-ms runs each implementation back to back (no flush) that long before its timed calls,
as triton's do_bench does (250 ms in the grid); with --blocked the SM clock and board power NVML
reports right after each block of timed calls (one sample each) are printed beside the times.
--energy-s S then runs prelude and call again for S seconds and prints the board's energy per
call over them (NVML's energy counter, which moves in steps too coarse for a block of 200 calls).

    python benchmarks/flush_probe.py [--reps 60] [--grad] [--blocked] [--layout bhsd] [--warmup-ms 250]
                                     [--energy-s 3]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from attnbench.impls import make_impl
from attnbench.tables import OURS
from attnbench.timing import spin_up_gpu

TOKENS, HIDDEN = 16384, 2048
POINTS = [(64, 2048, True), (64, 512, False), (128, 2048, True)]  # head dim, seqlen, causal
SLEEP_CYCLES = 100_000  # about 50 us at the H100's boost clock


def make_input(b, h, s, d, layout, grad):
    """Fresh normal [B, H, S, D]: contiguous (bhsd) or a view of [B, S, H, D] (bshd)."""
    if layout == "bhsd":
        return torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad)
    return torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=grad).transpose(1, 2)


def back_to_back(fn, ms: float) -> None:
    """fn again and again for about ``ms`` of GPU time (checked every 20 calls)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        for _ in range(20):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) >= ms:
            return


def clock_and_power() -> str:
    """The SM clock (MHz) and board power (W) NVML reports now, where it can."""
    try:
        return f"{torch.cuda.clock_rate()} MHz {torch.cuda.power_draw() / 1000:.0f} W"
    except Exception:  # noqa: BLE001 - no NVML: the times alone
        return "?"


def energy_per_call(prelude, fn, seconds: float) -> str:
    """' N mJ/call': the board's energy over ``seconds`` of prelude-and-call, per call."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        read = functools.partial(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)  # mJ
    except Exception:  # noqa: BLE001 - no NVML
        return ""
    calls = 0
    start, t0 = read(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            prelude()
            fn()
        calls += 20
        torch.cuda.synchronize()
    return f" {(read() - start) / calls:.1f} mJ/call"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--grad", action="store_true", help="a training forward (the grid's default)")
    ap.add_argument("--blocked", action="store_true",
                    help="each implementation's repetitions in a row, not alternating")
    ap.add_argument("--layout", choices=("bshd", "bhsd"), default="bshd")
    ap.add_argument("--warmup-ms", type=float, default=0.0,
                    help="back-to-back calls before each implementation's timed ones (with --blocked)")
    ap.add_argument("--energy-s", type=float, default=0.0,
                    help="with --blocked: energy per call over this many seconds after each block")
    args = ap.parse_args()
    grad_ctx = torch.enable_grad if args.grad else torch.no_grad
    cache = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    preludes = {
        "warm": lambda: None,
        "zero": cache.zero_,
        "read": lambda: cache.sum(),
        "zero_wait": lambda: (cache.zero_(), torch.cuda._sleep(SLEEP_CYCLES)),
    }
    print(f"device: {torch.cuda.get_device_name()}; ours vs SDPA cuDNN, forward, bf16, "
          f"{TOKENS} tokens, hidden {HIDDEN}; {'training' if args.grad else 'inference'} forward; "
          f"{args.reps} repetitions per cell, {'in a row' if args.blocked else 'alternating'}; "
          f"layout {args.layout}")
    spin_up_gpu(2.0)
    print(f"{'D':>4} {'S':>6} {'causal':>6} {'prelude':>10} {'ours us':>9} {'cudnn us':>9} "
          f"{'cudnn/ours':>10}  SM MHz and W after ours / cudnn")
    for d, s, causal in POINTS:
        b, h = TOKENS // s, HIDDEN // d
        q, k, v = (make_input(b, h, s, d, args.layout, args.grad) for _ in range(3))
        impls = {"ours": make_impl(OURS), "cudnn": make_impl("sdpa-cudnn")}
        calls = {n: functools.partial(impl.forward, q, k, v) for n, impl in impls.items()}
        for impl in impls.values():
            impl.setup(q, k, v, causal)
            with impl.context(), grad_ctx():
                for _ in range(5):
                    impl.forward(q, k, v)
        for name, prelude in preludes.items():
            times = {n: [] for n in impls}
            state = {}
            order = ([n for n in impls for _ in range(args.reps)] if args.blocked
                     else [n for _ in range(args.reps) for n in impls])
            for i, n in enumerate(order):
                if args.blocked and args.warmup_ms > 0 and (i == 0 or order[i - 1] != n):
                    with impls[n].context(), grad_ctx():
                        back_to_back(calls[n], args.warmup_ms)
                with impls[n].context(), grad_ctx():
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    prelude()
                    start.record()
                    calls[n]()
                    end.record()
                times[n].append((start, end))
                if args.blocked and (i + 1 == len(order) or order[i + 1] != n):
                    torch.cuda.synchronize()
                    state[n] = clock_and_power()
                    if args.energy_s > 0:
                        with impls[n].context(), grad_ctx():
                            state[n] += energy_per_call(prelude, calls[n], args.energy_s)
            torch.cuda.synchronize()
            med = {n: statistics.median(a.elapsed_time(e) * 1e3 for a, e in pairs)
                   for n, pairs in times.items()}
            print(f"{d:4d} {s:6d} {int(causal):6d} {name:>10} {med['ours']:9.1f} "
                  f"{med['cudnn']:9.1f} {med['cudnn'] / med['ours']:10.3f}  "
                  + " / ".join(state.get(n, "") for n in impls))


if __name__ == "__main__":
    main()
