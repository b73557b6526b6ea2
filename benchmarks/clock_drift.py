"""How an implementation's time drifts while the GPU stays loaded, and whether the SM clock
explains it: the reason the grid warms each implementation up for a while before timing it.

Times our forward and SDPA's cuDNN forward in turn (three turns each, 15 chunks of 10 calls per
turn, L2 flushed before each call as do_bench does) at one long point, stamping each chunk's end
on the host clock, while ``nvidia-smi`` samples the SM clock, power and temperature every 50 ms.
Prints, per chunk, the median call time and the SM clock sampled during it; then per turn its
first and last chunk, and the ratio of cuDNN to ours over the steady chunks (a turn's second half).

    python benchmarks/clock_drift.py [--out results.json] [--seqlen 8192] [--head-dim 128] [--causal]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TURNS, CHUNKS, CALLS = 3, 15, 10


class SmiSampler:
    """nvidia-smi's SM clock (MHz), power (W) and temperature (C) every 50 ms, on host time."""

    def __init__(self):
        self.samples: list[tuple[float, float, float, float]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu",
             "--format=csv,noheader,nounits", "-lms", "50"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                clock, power, temp = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), clock, power, temp))

    def between(self, t0: float, t1: float) -> list[tuple[float, float, float, float]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]

    def stop(self):
        self.proc.terminate()
        self.thread.join(timeout=2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--seqlen", type=int, default=8192)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    import fa_inductor.ops  # noqa: F401  registers torch.ops.fa

    S, D = args.seqlen, args.head_dim
    B, H = max(1, 16384 // S), 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               .requires_grad_() for _ in range(3))

    def ours():
        return torch.ops.fa.attention_forward(q, k, v, None, D ** -0.5, args.causal, False, -1,
                                              -1, 0.0, 0.0, None)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)

    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    for fn in (ours, cudnn):  # plans and handles made outside the turns
        fn()
    torch.cuda.synchronize()
    device = torch.cuda.get_device_name()
    print(f"device: {device}; forward, bf16, B={B} H={H} S={S} D={D} "
          f"{'causal' if args.causal else 'non-causal'}; ours (fa) and SDPA cuDNN in turns of "
          f"{CHUNKS} chunks of {CALLS} calls, L2 flushed before each call")
    smi = SmiSampler()
    time.sleep(0.5)
    chunks = []
    for turn in range(TURNS):
        for name, fn in (("ours", ours), ("cudnn", cudnn)):
            for c in range(CHUNKS):
                t0 = time.time()
                events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                          for _ in range(CALLS)]
                for start, end in events:
                    flush.zero_()
                    start.record()
                    fn()
                    end.record()
                torch.cuda.synchronize()
                t1 = time.time()
                ms = [s.elapsed_time(e) for s, e in events]
                smi_now = smi.between(t0, t1)
                chunks.append(dict(turn=turn, impl=name, chunk=c, t0=t0, t1=t1, ms=ms,
                                   sm_mhz=[s[1] for s in smi_now], watts=[s[2] for s in smi_now],
                                   temp_c=[s[3] for s in smi_now]))
    time.sleep(0.2)
    smi.stop()
    base = chunks[0]["t0"]
    print(f"{'turn':>4} {'impl':>6} {'chunk':>5} {'t (s)':>6} {'median ms':>9} {'SM MHz':>7} {'W':>5}")
    for ch in chunks:
        mhz = f"{statistics.median(ch['sm_mhz']):7.0f}" if ch["sm_mhz"] else "      -"
        watts = f"{statistics.median(ch['watts']):5.0f}" if ch["watts"] else "    -"
        print(f"{ch['turn']:4d} {ch['impl']:>6} {ch['chunk']:5d} {ch['t1'] - base:6.2f} "
              f"{statistics.median(ch['ms']):9.3f} {mhz} {watts}")
    def median_over(name, key, steady_half):
        """Median of `key` over an implementation's chunks: the second half of each turn (steady)
        or each turn's first chunk."""
        values = [x for ch in chunks if ch["impl"] == name
                  and (ch["chunk"] >= CHUNKS // 2 if steady_half else ch["chunk"] == 0) for x in ch[key]]
        return statistics.median(values) if values else float("nan")

    steady = {name: median_over(name, "ms", True) for name in ("ours", "cudnn")}
    first = {name: median_over(name, "ms", False) for name in ("ours", "cudnn")}
    print(f"\nfirst chunk of a turn, median ms: ours {first['ours']:.3f}, cuDNN {first['cudnn']:.3f}")
    print(f"steady (second half of each turn), median ms: ours {steady['ours']:.3f}, "
          f"cuDNN {steady['cudnn']:.3f}; ratio cuDNN/ours {steady['cudnn'] / steady['ours']:.3f}")
    for name in ("ours", "cudnn"):
        print(f"steady {name:>5}: SM clock {median_over(name, 'sm_mhz', True):.0f} MHz, "
              f"power {median_over(name, 'watts', True):.0f} W (nvidia-smi samples in those chunks)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=device, shape=dict(B=B, H=H, S=S, D=D, causal=args.causal),
                           chunks=chunks, steady_ms=steady, first_chunk_ms=first), f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
