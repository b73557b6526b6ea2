"""Host time per call of our attention op against SDPA's (the short points of the grid are bound
by it), and where our call spends it.

For each shape, N calls back to back with one synchronisation at the end: when the GPU work of a
call is shorter than its host work, the time per call is the host's.  Then a cProfile of our
calls (top functions by own time).  Prints the device, what was compared and the ratio.

With ``--layers``, the same for each layer of our call on its own, from the C entry point up to
the op with autograd, so the cost of every layer reads as the difference between two lines; then
the backward as the grid times it (``autograd.grad`` of a retained graph), forward plus backward
with the autograd engine's worker thread and on the calling thread, each beside SDPA's, and
torch.profiler's table of forward plus backward (which sees the engine's thread too).  Run it
with another checkout's package first on PYTHONPATH to compare two versions on one library.

    python benchmarks/host_overhead.py [--calls 300] [--profile-top 25] [--layers]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics

import torch
import torch.nn.functional as F
from attnbench.timing import back_to_back_us


REPEATS = 5


def per_call_us(fn, calls: int) -> float:
    """The median of REPEATS measurements: the host's speed drifts between them (other tenants,
    clocks), by 30% and more on the machines here."""
    return statistics.median(back_to_back_us(fn, calls, 10, torch.cuda.synchronize)
                             for _ in range(REPEATS))


def _capture_launch(backend, name: str):
    """Wraps backend.lib.<name> so that the next call records its (params, stream); returns the
    record and a function that undoes the wrap."""
    record = {}
    original = getattr(backend.lib, name)

    def wrapped(params, stream, *rest):
        record["args"] = (params, stream, *rest)
        return original(params, stream, *rest)

    setattr(backend.lib, name, wrapped)
    return record, lambda: setattr(backend.lib, name, original)


def without_plans(fn):
    """fn with every op call on the full path (``repeat_calls.ENABLED`` off), where the package
    has plans."""
    try:
        from fa_inductor.ops import repeat_calls
    except ImportError:
        return fn

    def run():
        repeat_calls.ENABLED = False
        try:
            return fn()
        finally:
            repeat_calls.ENABLED = True

    return run


def layers(calls: int) -> None:
    """Host time per call of each layer of our forward and backward, innermost first."""
    import fa_inductor
    from fa_inductor import kernels
    from fa_inductor.ops import dispatch, library

    print(f"\npackage: {fa_inductor.__file__}")

    B, H, S, D = 1, 1, 128, 64
    scale, causal = D ** -0.5, True
    q, k, v, g = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                  for _ in range(4))
    backend = kernels.get_backend(q.device)
    args = (q, k, v, None, scale, causal, False, -1, -1, 0.0, 0.0, None)
    out, lse = torch.ops.fa.attention_forward(*args)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    argsg = (qg, kg, vg) + args[3:]
    fwd_entry = "fwd_" + backend.forward_name
    record, undo = _capture_launch(backend, fwd_entry)
    backend.forward(q, k, v, scale, causal, False, -1, -1, 0.0, out, lse)
    undo()
    params, stream = record["args"][:2]
    dev = q.device
    dq, dk, dv, _ = library.empty_backward_outputs(q, k, v, None, False)

    def ours_fwd_bwd():
        return torch.autograd.grad(torch.ops.fa.attention_forward(*argsg)[0], (qg, kg, vg), g)

    def sdpa_fwd_bwd():
        return torch.autograd.grad(F.scaled_dot_product_attention(
            qg, kg, vg, is_causal=causal, scale=scale), (qg, kg, vg), g)

    def single_thread(fn):
        # The autograd engine runs CUDA nodes on a thread of its own; this runs them on the caller's.
        def run():
            with torch.autograd.set_multithreading_enabled(False):
                return fn()
        return run

    out_r = torch.ops.fa.attention_forward(*argsg)[0]
    sdpa_r = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, scale=scale)

    def guard_and_stream():
        with torch.cuda.device(dev):
            return torch.cuda.current_stream(dev).cuda_stream

    rows = [
        ("torch.empty (one CUDA allocation)", lambda: torch.empty((B, S, H, D), device=dev)),
        ("torch.cuda.device + current_stream", guard_and_stream),
        (f"C entry {fwd_entry} (ctypes, params built)",
         lambda: getattr(backend.lib, fwd_entry)(params, stream)),
        ("KernelBackend.forward (outputs given)",
         lambda: backend.forward(q, k, v, scale, causal, False, -1, -1, 0.0, out, lse)),
        ("dispatch.run_forward (select + run)",
         lambda: dispatch.run_forward(*args, out, lse)),
        ("op implementation, full path (validate, allocate, dispatch)",
         without_plans(lambda: library.attention_forward(*args))),
        ("op implementation, planned (allocate, launch)", lambda: library.attention_forward(*args)),
        ("torch.ops.fa.attention_forward, no input needs grad", lambda: torch.ops.fa.attention_forward(*args)),
        ("torch.ops.fa.attention_forward, inputs need grad", lambda: torch.ops.fa.attention_forward(*argsg)),
        ("F.scaled_dot_product_attention, no grad",
         lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)),
        ("F.scaled_dot_product_attention, inputs need grad",
         lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, scale=scale)),
        ("KernelBackend.backward (outputs given)",
         lambda: backend.backward(g, q, k, v, out, lse, scale, causal, False, -1, -1, 0.0, dq, dk, dv)),
        ("dispatch.run_backward (select + run)",
         lambda: dispatch.run_backward(g, q, k, v, out, lse, None, scale, causal, False, -1, -1,
                                       0.0, 0.0, None, dq, dk, dv, None)),
        ("torch.ops.fa.attention_backward, full path",
         without_plans(lambda: torch.ops.fa.attention_backward(
             g, q, k, v, out, lse, None, scale, causal, False, -1, -1, 0.0, 0.0, None, False))),
        ("torch.ops.fa.attention_backward, planned",
         lambda: torch.ops.fa.attention_backward(g, q, k, v, out, lse, None, scale, causal, False,
                                                 -1, -1, 0.0, 0.0, None, False)),
        ("ours: autograd.grad, graph retained (the grid's backward)",
         lambda: torch.autograd.grad(out_r, (qg, kg, vg), g, retain_graph=True)),
        ("SDPA: autograd.grad, graph retained",
         lambda: torch.autograd.grad(sdpa_r, (qg, kg, vg), g, retain_graph=True)),
        ("ours: forward + autograd.grad, backward on the calling thread", single_thread(ours_fwd_bwd)),
        ("SDPA: forward + autograd.grad, backward on the calling thread", single_thread(sdpa_fwd_bwd)),
        ("ours: forward + autograd.grad", ours_fwd_bwd),
        ("SDPA: forward + autograd.grad", sdpa_fwd_bwd),
    ]
    print(f"\nlayers of one call, shape {(B, H, S, D)} causal bf16, kernels {backend!r}; "
          f"host us per call ({calls} calls, one sync)")
    for name, fn in rows:
        try:
            us = f"{per_call_us(fn, calls):8.1f}"
        except Exception as e:  # noqa: BLE001 - a layer whose signature moved: say so, go on
            us = f"failed: {type(e).__name__}: {e}"
        print(f"  {name:<55s} {us}", flush=True)
    trace("ours: forward + autograd.grad", ours_fwd_bwd)
    trace("SDPA: forward + autograd.grad", sdpa_fwd_bwd)


def trace(what: str, fn, calls: int = 50, top: int = 18) -> None:
    """torch.profiler's host-side table for ``calls`` calls of fn: which ops and autograd nodes
    (on every thread, the autograd engine's included) the time goes to."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    print(f"\n{what}: torch.profiler, {calls} calls, by total host time")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=top, max_name_column_width=60))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--layers", action="store_true", help="also time each layer of the call")
    args = ap.parse_args()
    import fa_inductor.ops  # noqa: F401  registers torch.ops.fa

    op = torch.ops.fa.attention_forward
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; host time per forward call (us), {args.calls} calls, one sync; "
          "inputs [B,H,S,D] bf16 views of [B,S,H,D]", flush=True)
    print("ours: repeated calls of one signature (planned launches); full: every call validated "
          "and dispatched (repeat_calls.ENABLED off)")
    print(f"{'shape':>24s} {'grad':>5s} {'ours':>8s} {'full':>8s} {'sdpa':>8s} {'ours/sdpa':>9s}")
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
            t_full = per_call_us(without_plans(ours), args.calls)
            t_sdpa = per_call_us(sdpa, args.calls)
            print(f"{str((B, H, S, D)):>24s} {int(grad):5d} {t_ours:8.1f} {t_full:8.1f} {t_sdpa:8.1f} "
                  f"{t_ours / t_sdpa:9.2f}", flush=True)
    if args.layers:
        layers(args.calls)
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
