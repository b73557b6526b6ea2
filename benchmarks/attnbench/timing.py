"""Timers. Device work is asynchronous, so the GPU timer reads CUDA events; it flushes L2
before every repetition (triton's do_bench does) so no implementation is timed on a warm cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

def back_to_back_us(fn: Callable[[], object], calls: int, warmup: int, sync: Callable[[], None]) -> float:
    """Microseconds per call of ``calls`` calls issued back to back with one sync at the end: where
    a call's host work is longer than its device work, this is the host's time per call."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) * 1e6 / calls


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: tuple[float, ...] = ()  # every repetition's time (ms), for pooling rounds


def warm_up(fn: Callable[[], object], calls: int, sync: Callable[[], None]) -> float:
    """Run fn a few times outside the measurement: compilation, autotuning, cuDNN plan and
    handle creation land here. Returns the seconds it took."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return time.perf_counter() - start


def spin_up_gpu(seconds: float, device: str = "cuda") -> float:
    """Keeps the GPU busy with bf16 GEMMs for about ``seconds`` before anything is timed.  A GPU
    left idle (say during a kernel build) starts the first point at idle clocks: the first point of
    two grid runs measured 0.43-0.46 of what the same kernel gave later in the run.  Returns the
    seconds spent."""
    import torch

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def gpu_timer(warmup_ms: float, rep_ms: float) -> tuple[Callable[..., Timing], str]:
    """A timer taking a callable (and the share of the repetition time to spend, for one of
    several rounds), and the sentence that says how it times."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        def time_fn(fn: Callable, share: float = 1.0) -> Timing:
            return summarize(do_bench(fn, warmup=warmup_ms, rep=rep_ms * share,
                                      return_mode="all"))

        return time_fn, (f"triton.testing.do_bench (CUDA events per repetition, L2 flushed "
                         f"before each; warm-up {warmup_ms:g} ms, repetitions for {rep_ms:g} ms), "
                         "median with 20th-80th percentiles")

    def time_fn(fn: Callable, share: float = 1.0) -> Timing:
        return _cuda_events(fn, warmup_ms, rep_ms * share)

    return time_fn, (f"CUDA events per repetition (triton missing), L2 flushed before each; "
                     f"warm-up {warmup_ms:g} ms, repetitions for {rep_ms:g} ms; median")


def _cuda_events(fn: Callable, warmup_ms: float, rep_ms: float) -> Timing:
    import torch

    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    reps = max(10, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


def cpu_timer(reps: int) -> tuple[Callable[[Callable], Timing], str]:
    """Host clock, for exercising the harness on a machine without a GPU (not for numbers)."""
    def time_fn(fn: Callable, share: float = 1.0) -> Timing:  # share: the GPU timers' only
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return summarize(times)

    return time_fn, (f"host clock on CPU, {reps} repetitions, median "
                     "(harness check, not a benchmark)")


def summarize(times_ms: list[float]) -> Timing:
    """Median and 20th/80th percentiles (inclusive method: exact on small samples)."""
    if not times_ms:
        raise ValueError("no timings")
    samples = tuple(float(t) for t in times_ms)
    if len(samples) == 1:
        return Timing(samples[0], samples[0], samples[0], samples)
    cuts = statistics.quantiles(samples, n=10, method="inclusive")
    return Timing(statistics.median(samples), cuts[1], cuts[7], samples)
