"""What a backward timed just before does to a forward's timing (issue 4's SM80 point: head dim 128,
non-causal, seqlen 512, batch 32, 16 heads, bf16, inputs that require grad).  In the grid our
forward times 4-8% slower at that point when the backward is timed beside it; this separates the
candidates.  The targets are the grid's own implementations (attnbench.impls: "fa", ours, and
"sdpa-flash", SDPA's flash), each set up and timed as the grid times its forward: Impl.forward
with the Impl's context (the forced SDPA backend) entered around triton's do_bench (L2 flushed
before each call, the grid's timer).  Each target forward is timed right after one of these
preludes, about 150 ms each:

    fwd        the same forward (the steady state)
    ours_bwd   our backward, graph retained, as the grid times it
    ours_bwd_freed   the same, then the graph dropped and the caching allocator emptied
    flash_bwd  SDPA flash's backward, as the grid times it
    gemm       bf16 GEMMs, the grid's spin-up (attnbench.timing.spin_up_gpu: the GPU under load,
               no attention memory in the allocator)
    idle       0.3 s of sleep

Four rounds, preludes in rotated order; medians per (target, prelude) over all repetitions.
The forward family is this device's unless FA_INDUCTOR_FWD_FAMILY says (sm80 for issue 4).

    FA_INDUCTOR_FWD_FAMILY=sm80 FA_INDUCTOR_BWD_FAMILY=sm80 python benchmarks/fwd_after_bwd.py
"""
from __future__ import annotations

import statistics
import time

import torch
from attnbench.impls import make_impl
from attnbench.tables import OURS
from attnbench.timing import spin_up_gpu
from triton.testing import do_bench

from fa_inductor import kernels

B, H, S, D = 32, 16, 512, 128
PRELUDE_S = 0.15


def for_a_while(fn, seconds=PRELUDE_S):
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()


def main() -> int:
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    b = kernels.get_backend(torch.device("cuda"))
    print(f"device: {torch.cuda.get_device_name()}; forward family: {b.forward_name}; "
          f"backward family: {b.backward_name}")

    # The grid's Impl objects, not copies of their calls, so a change to how the grid calls an
    # implementation (scale, op arguments, backend forcing) reaches this probe too.
    impls = {"ours": make_impl(OURS), "flash": make_impl("sdpa-flash")}
    for impl in impls.values():
        impl.setup(q, k, v, causal=False)

    held = {}

    def forward_of(impl):
        return lambda: impl.forward(q, k, v)

    def backward_of(impl):
        # The grid's retained-graph backward (runner.Runner._backward): one forward outside the
        # loop, then autograd.grad over its graph again and again.
        held["out"] = impl.forward(q, k, v)
        return lambda: torch.autograd.grad(held["out"], (q, k, v), grad, retain_graph=True)

    def backward_prelude(impl, free=False):
        def prelude():
            # Only the prelude's own Impl context: the target's forced SDPA backend must not
            # steer our op's dispatch (or the other way round).
            with impl.context():
                for_a_while(backward_of(impl))
            if free:
                held.clear()
                torch.cuda.empty_cache()
        return prelude

    targets = {t: forward_of(impl) for t, impl in impls.items()}
    preludes = {
        "ours_bwd": backward_prelude(impls["ours"]),
        "ours_bwd_freed": backward_prelude(impls["ours"], free=True),
        "flash_bwd": backward_prelude(impls["flash"]),
        "gemm": lambda: spin_up_gpu(PRELUDE_S),
        "idle": lambda: time.sleep(0.3),
    }
    samples = {(t, p): [] for t in targets for p in ["fwd", *preludes]}
    for r in range(4):
        names = list(preludes)[r:] + list(preludes)[:r]
        for t, fwd in targets.items():
            for p in names:
                # The context around the timer, not inside the timed call, as the grid has it.
                with impls[t].context():
                    for_a_while(fwd)
                    samples[(t, "fwd")] += do_bench(fwd, warmup=0, rep=30, return_mode="all")
                preludes[p]()
                with impls[t].context():
                    samples[(t, p)] += do_bench(fwd, warmup=0, rep=30, return_mode="all")
                held.clear()
    print(f"{'target':>6} {'after':>15} {'n':>5} {'p20 ms':>8} {'median':>8} {'p80 ms':>8}  vs steady")
    for t in targets:
        steady = statistics.median(samples[(t, "fwd")])
        for p in ["fwd", *preludes]:
            s = samples[(t, p)]
            cuts = statistics.quantiles(s, n=10, method="inclusive")
            med = statistics.median(s)
            print(f"{t:>6} {p:>15} {len(s):>5} {cuts[1]:>8.4f} {med:>8.4f} {cuts[7]:>8.4f}  {steady / med:>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
