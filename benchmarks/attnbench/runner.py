"""Runs the grid: inputs per shape, every implementation in both directions, failures recorded
per point (a refused shape, an OOM, a crash) so one bad point never ends the run."""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import impls as impl_mod
from . import ours as ours_probe
from .grid import (ABLATION_BATCH, ABLATION_HEAD_DIM, ABLATION_HEADS, ABLATION_SEQLEN, Shape,
                   attention_flops, shape_flops, tflops_per_s)
from .results import ERROR, OK, OOM, SKIPPED, UNSUPPORTED, AblationRecord, Record
from .timing import Timing, summarize, warm_up

BWD_RETAINED = "retained-graph"
BWD_SUBTRACT = "fwd+bwd minus fwd"
BWD_METHODS_DOC = (
    f"backward '{BWD_RETAINED}': the forward runs once outside the timed region, then "
    "torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True) is timed alone; "
    f"'{BWD_SUBTRACT}' (fallback where the first fails): time of forward+backward minus "
    "time of forward"
)

# Errors after which the CUDA context is unusable: every later call would fail too.
_STICKY = ("illegal memory access", "unspecified launch failure", "device-side assert",
           "misaligned address", "illegal instruction", "cuda error: unknown error",
           "context is destroyed", "hardware exception")
_UNSUPPORTED = ("no available kernel", "no viable backend", "not supported", "unsupported",
                "only supports", "out of resource", "outofresources", "is not implemented",
                "not implemented for")

# Above this the output is wrong, not rounded: bf16/fp16 kernels land near 1e-3..1e-2.
REL_ERR_LIMIT = 2e-2


@dataclass
class Settings:
    dtype: torch.dtype
    device: str
    layout: str  # bhsd: contiguous [B, H, S, D]; bshd: [B, S, H, D] memory seen as [B, H, S, D]
    fwd_mode: str  # grad (a training forward) or no_grad (inference)
    warmup_calls: int
    seed: int
    check: bool  # compare every implementation against an fp32 SDPA once per point
    budget_s: float | None
    # Timing rounds per point: after the first, every (implementation, direction) of the point
    # is timed again, in reverse order on odd rounds, each round with its own warm-up and a
    # 1/rounds share of the repetitions; the repetitions of all rounds pooled.  A GPU under a
    # power cap runs a long kernel faster for a while after a pause or a lighter peer
    # (benchmarks/clock_drift.py), so one pass in a fixed order would favour whichever
    # implementation comes first.
    rounds: int = 1


def classify(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return OOM
    if isinstance(exc, NotImplementedError):
        return UNSUPPORTED
    text = (_root_cause(exc) or str(exc)).lower()
    if text.startswith("raised exception notimplementederror"):
        return UNSUPPORTED
    return UNSUPPORTED if any(s in text for s in _UNSUPPORTED) else ERROR


def is_sticky(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in _STICKY)


def context_still_works() -> bool:
    """After an error that usually poisons the CUDA context: whether it really did."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.cuda.synchronize()
        (torch.ones(1, device="cuda") + 1).item()
    except Exception:  # noqa: BLE001
        return False
    return True


def _root_cause(exc: BaseException) -> str:
    """torch.compile wraps the exception raised while tracing in a long explanation; the
    original is on its 'Developer debug context' line."""
    text = str(exc)
    marker = "Developer debug context:"
    at = text.find(marker)
    if at < 0:
        return ""
    return " ".join(text[at + len(marker):].splitlines()[0].split())


def describe(exc: BaseException, caught_warnings=()) -> str:
    """The exception's first lines plus the warnings that explain a refusal (SDPA says why a
    forced backend declined only through warnings)."""
    root = _root_cause(exc)
    head = f"{type(exc).__name__}: " + (f"{root[:400]} (while compiling) " if root else "") + \
        " ".join(str(exc).split())[:400 if not root else 120]
    reasons = list(dict.fromkeys(" ".join(str(w.message).split())[:300] for w in caught_warnings))
    return head + ("" if not reasons else " | reasons: " + " | ".join(reasons[:4]))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    denom = torch.linalg.vector_norm(ref).item()
    num = torch.linalg.vector_norm(x.float() - ref).item()
    return num / denom if denom else float("inf") if num else 0.0


class Runner:
    def __init__(self, settings: Settings, timer: Callable[[Callable], Timing],
                 sync: Callable[[], None], on_record: Callable[[Record], None] | None = None,
                 flex_dynamic: bool = False):
        self.s = settings
        self.timer = timer
        self.sync = sync
        self.on_record = on_record or (lambda r: None)
        self.flex_dynamic = flex_dynamic
        self.lost: str | None = None  # the sticky error that ended GPU work, if any
        self.deadline = (time.monotonic() + settings.budget_s) if settings.budget_s else None
        self._impls: dict[str, impl_mod.Impl] = {}
        self._retimes: list[_Retime] = []  # this point's timings, for the later rounds

    # ---- inputs --------------------------------------------------------------------------

    def make_inputs(self, shape: Shape, requires_grad: bool):
        """Fresh normal q, k, v (never zeros: they hide unwritten outputs and run faster) and
        the output gradient, seeded per shape so reruns see the same data."""
        seed = (self.s.seed * 1_000_003 + shape.head_dim * 100_003 + shape.seqlen * 2
                + int(shape.causal))
        gen = torch.Generator(device=self.s.device).manual_seed(seed)
        b, h, s, d = shape.batch, shape.heads, shape.seqlen, shape.head_dim
        dims = (b, h, s, d) if self.s.layout == "bhsd" else (b, s, h, d)

        def one():
            t = torch.randn(dims, generator=gen, dtype=self.s.dtype, device=self.s.device)
            t.requires_grad_(requires_grad)  # on the leaf; bshd hands out a view of it
            return t if self.s.layout == "bhsd" else t.transpose(1, 2)

        q, k, v = one(), one(), one()
        grad_out = torch.randn((b, h, s, d), generator=gen, dtype=self.s.dtype,
                               device=self.s.device)
        return q, k, v, grad_out

    # ---- one shape -----------------------------------------------------------------------

    def run_shape(self, shape: Shape, impl_ids: list[str],
                  directions: tuple[str, ...]) -> list[Record]:
        records: list[Record] = []
        skip = self._skip_reason()
        if skip:
            return [self._emit(self._record(shape, i, i, d, SKIPPED, detail=skip))
                    for i in impl_ids for d in directions]
        try:
            # A forward timed "with grad" is a training step's: its inputs require grad whether or
            # not the backward is timed here too (without, the forward would skip autograd).
            grad = "bwd" in directions or ("fwd" in directions and self.s.fwd_mode == "grad")
            q, k, v, grad_out = self.make_inputs(shape, requires_grad=grad)
        except Exception as e:  # noqa: BLE001 - even the inputs may not fit
            self._after_failure(e)
            return [self._emit(self._record(shape, i, i, d, classify(e), detail=describe(e)))
                    for i in impl_ids for d in directions]
        reference = _LazyReference(q, k, v, grad_out, shape.causal)
        for impl_id in impl_ids:
            records += self._run_impl(shape, impl_id, directions, q, k, v, grad_out, reference)
        self._later_rounds()
        del q, k, v, grad_out, reference
        self._free()
        return records

    def _run_impl(self, shape, impl_id, directions, q, k, v, grad_out, reference) -> list[Record]:
        skip = self._skip_reason()
        if skip:
            return [self._emit(self._record(shape, impl_id, impl_id, d, SKIPPED, detail=skip))
                    for d in directions]
        impl = self._impls.get(impl_id) or self._impls.setdefault(
            impl_id, impl_mod.make_impl(impl_id, self.flex_dynamic))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                impl.setup(q, k, v, shape.causal)
        except Exception as e:  # noqa: BLE001
            self._after_failure(e)
            return [self._emit(self._record(shape, impl_id, impl_id, d, classify(e),
                                            detail="setup: " + describe(e, caught)))
                    for d in directions]
        out = []
        for direction in directions:
            skip = self._skip_reason()
            label = impl.label(direction)
            if skip:
                out.append(self._emit(self._record(shape, impl_id, label, direction, SKIPPED,
                                                   detail=skip)))
                continue
            fn = self._forward if direction == "fwd" else self._backward
            rec = fn(shape, impl, label, q, k, v, grad_out)
            if rec.status == OK and self.s.check:
                self._check(rec, impl, q, k, v, grad_out, reference)
            note = impl.note(direction)
            if note:
                rec.detail = f"{rec.detail}; {note}" if rec.detail else note
            out.append(self._emit(rec))
        return out

    def _forward(self, shape, impl, label, q, k, v, grad_out) -> Record:
        grad_ctx = torch.enable_grad if self.s.fwd_mode == "grad" else torch.no_grad

        def fn():
            return impl.forward(q, k, v)

        return self._measure(shape, impl, label, "fwd", fn, grad_ctx,
                             f"forward ({self.s.fwd_mode})")

    def _backward(self, shape, impl, label, q, k, v, grad_out) -> Record:
        inputs = (q, k, v)
        holder = {}

        def prepare():
            holder["out"] = impl.forward(q, k, v)

        def bwd():
            return torch.autograd.grad(holder["out"], inputs, grad_out, retain_graph=True)

        rec = self._measure(shape, impl, label, "bwd", bwd, torch.enable_grad, BWD_RETAINED,
                            prepare=prepare, cleanup=holder.clear)
        holder.clear()
        if rec.status != ERROR or self.lost:
            return rec

        first_failure = rec.detail

        def fwd():
            return impl.forward(q, k, v)

        def fwd_bwd():
            return torch.autograd.grad(impl.forward(q, k, v), inputs, grad_out)

        # One round: the difference of two pooled timings would not be the backward's.
        fwd_rec = self._measure(shape, impl, label, "fwd", fwd, torch.enable_grad, "forward",
                                rounds=False)
        both = self._measure(shape, impl, label, "bwd", fwd_bwd, torch.enable_grad, BWD_SUBTRACT,
                             rounds=False)
        if both.status != OK or fwd_rec.status != OK:
            both.detail = f"{BWD_RETAINED} failed: {first_failure}; {BWD_SUBTRACT}: " + (
                both.detail or fwd_rec.detail)
            return both
        ms = both.ms - fwd_rec.ms
        if ms <= 0:
            both.status = ERROR
            both.detail = (f"{BWD_SUBTRACT} gave no time: forward+backward {both.ms:.4f} ms, "
                           f"forward {fwd_rec.ms:.4f} ms; {BWD_RETAINED} failed: {first_failure}")
            both.ms = both.ms_p20 = both.ms_p80 = None
            return both
        both.ms, both.ms_p20, both.ms_p80 = ms, None, None
        both.tflops = tflops_per_s(both.flops, ms)
        both.detail = f"{BWD_RETAINED} failed ({first_failure})"
        return both

    def _measure(self, shape, impl, label, direction, fn, grad_ctx, method, prepare=None,
                 cleanup=None, rounds=True) -> Record:
        rec = self._record(shape, impl.id, label, direction, OK, method=method)
        caught = []
        share = 1 / self.s.rounds if rounds else 1.0
        try:
            with warnings.catch_warnings(record=True) as caught, impl.context(), grad_ctx():
                warnings.simplefilter("always")
                if prepare is not None:
                    prepare()
                rec.warmup_s = warm_up(fn, self.s.warmup_calls, self.sync)
                timing = self.timer(fn, share)
                # An asynchronous kernel fault is charged to the implementation that made it.
                self.sync()
        except Exception as e:  # noqa: BLE001
            self._after_failure(e)
            rec.status, rec.detail = classify(e), describe(e, caught)
            return rec
        self._set_timing(rec, timing)
        if rounds and self.s.rounds > 1:
            self._retimes.append(_Retime(rec, impl, fn, grad_ctx, prepare, cleanup,
                                         list(timing.samples)))
        return rec

    @staticmethod
    def _set_timing(rec: Record, timing: Timing) -> None:
        rec.ms, rec.ms_p20, rec.ms_p80 = timing.median_ms, timing.p20_ms, timing.p80_ms
        rec.tflops = tflops_per_s(rec.flops, rec.ms)

    def _later_rounds(self) -> None:
        """Rounds 2..N of this point's timings (see Settings.rounds); a round that fails or
        finds the budget spent leaves a record with the rounds it had."""
        retimes, self._retimes = self._retimes, []
        for round_ in range(1, self.s.rounds):
            for rt in (retimes[::-1] if round_ % 2 else retimes):
                if rt.failed or self._skip_reason():
                    continue
                try:
                    with warnings.catch_warnings(), rt.impl.context(), rt.grad_ctx():
                        warnings.simplefilter("ignore")
                        if rt.prepare is not None:
                            rt.prepare()
                        timing = self.timer(rt.fn, 1 / self.s.rounds)
                        self.sync()
                except Exception as e:  # noqa: BLE001
                    self._after_failure(e)
                    rt.failed = True
                    rt.rec.detail = (rt.rec.detail + "; " if rt.rec.detail else "") + (
                        f"timing round {round_ + 1} failed: {describe(e)}")
                    continue
                finally:
                    if rt.cleanup is not None:
                        rt.cleanup()
                rt.samples += timing.samples
                rt.done += 1
        for rt in retimes:
            self._set_timing(rt.rec, summarize(rt.samples))
            rt.rec.rounds = rt.done

    def _check(self, rec, impl, q, k, v, grad_out, reference) -> None:
        """Each implementation against an fp32 SDPA on the same inputs, in the same mode it was
        timed in: a fast wrong result is no result, and the peers' errors say what rounding
        alone gives."""
        grad_ctx = (torch.no_grad if rec.direction == "fwd" and self.s.fwd_mode == "no_grad"
                    else torch.enable_grad)
        try:
            # The reference first, outside the implementation's context: a forced SDPA backend
            # would refuse fp32.
            ref = reference.out() if rec.direction == "fwd" else reference.grads()
            with impl.context(), grad_ctx():
                out = impl.forward(q, k, v)
                if rec.direction == "fwd":
                    rec.rel_err = rel_err(out, ref)
                else:
                    grads = torch.autograd.grad(out, (q, k, v), grad_out)
                    rec.rel_err = max(rel_err(g, r) for g, r in zip(grads, ref))
            del out
        except Exception as e:  # noqa: BLE001
            self._after_failure(e)
            rec.detail = (rec.detail + "; " if rec.detail else "") + "check failed: " + describe(e)
            return
        if not rec.rel_err <= REL_ERR_LIMIT:  # NaN included
            rec.detail = (rec.detail + "; " if rec.detail else "") + (
                f"WRONG? rel_err {rec.rel_err:.2e} against fp32 SDPA exceeds {REL_ERR_LIMIT:g}")

    # ---- ablation ------------------------------------------------------------------------

    def run_ablation(self, causals: tuple[bool, ...], shape: Shape | None = None
                     ) -> tuple[list[AblationRecord], str]:
        """The SM90 forward with one idea switched off at a time, on the paper's Table 2 shape
        (batch 4, seqlen 8448, 16 heads, head dim 128) unless told otherwise."""
        variants, note = ours_probe.ablation_variants(torch.device(self.s.device))
        if not variants:
            return [], note
        shape = shape or Shape(ABLATION_HEAD_DIM, ABLATION_SEQLEN, False, ABLATION_BATCH,
                               ABLATION_HEADS)
        records = []
        try:
            q, k, v, _ = self.make_inputs(shape, requires_grad=False)
        except Exception as e:  # noqa: BLE001
            self._after_failure(e)
            return [AblationRecord(name, c, classify(e), detail=describe(e))
                    for c in causals for name in variants], note
        scale = shape.head_dim ** -0.5
        for causal in causals:
            flops = attention_flops(shape.batch, shape.heads, shape.seqlen, shape.head_dim,
                                    causal, "fwd")
            for name, variant in variants.items():
                skip = self._skip_reason()
                if skip:
                    records.append(AblationRecord(name, causal, SKIPPED, detail=skip))
                    continue

                def fn(variant=variant, causal=causal):
                    return variant(q, k, v, scale, causal)

                try:
                    with torch.no_grad():
                        warm_up(fn, self.s.warmup_calls, self.sync)
                        timing = self.timer(fn)
                        self.sync()
                except Exception as e:  # noqa: BLE001
                    self._after_failure(e)
                    records.append(AblationRecord(name, causal, classify(e), detail=describe(e)))
                    continue
                records.append(AblationRecord(name, causal, OK, timing.median_ms,
                                              tflops_per_s(flops, timing.median_ms)))
        note += (f"; shape batch {shape.batch}, seqlen {shape.seqlen}, {shape.heads} heads, "
                 f"head dim {shape.head_dim}, forward")
        return records, note

    # ---- helpers -------------------------------------------------------------------------

    def _record(self, shape: Shape, impl_id, label, direction, status, method="", detail=""):
        return Record(impl=impl_id, label=label, head_dim=shape.head_dim, seqlen=shape.seqlen,
                      causal=shape.causal, direction=direction, batch=shape.batch,
                      heads=shape.heads, status=status, flops=shape_flops(shape, direction),
                      method=method, detail=detail)

    def _emit(self, rec: Record) -> Record:
        self.on_record(rec)
        return rec

    def _skip_reason(self) -> str | None:
        if self.lost:
            return f"not run: the CUDA context was lost earlier ({self.lost[:200]})"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return f"not run: time budget (--budget-s {self.s.budget_s:g}) spent"
        return None

    def _after_failure(self, exc: BaseException) -> None:
        if is_sticky(exc) and not context_still_works():
            self.lost = describe(exc)
            return
        self._free()

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available() and not self.lost:
            try:
                torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001
                if is_sticky(e):
                    self.lost = describe(e)


@dataclass
class _Retime:
    """A timing of the point's first round, for the later rounds to add to."""

    rec: Record
    impl: object
    fn: Callable
    grad_ctx: Callable
    prepare: Callable | None
    cleanup: Callable | None
    samples: list[float]
    done: int = 1
    failed: bool = False


class _LazyReference:
    """fp32 SDPA on upcast inputs (a memory-efficient backend, no S x S matrix), computed on
    first use and kept for the other direction."""

    def __init__(self, q, k, v, grad_out, causal):
        self.inputs = (q, k, v)
        self.grad_out = grad_out
        self.causal = causal
        self._out = None
        self._grads = None

    def _run(self, need_grads: bool):
        q, k, v = (t.detach().float().requires_grad_(need_grads) for t in self.inputs)
        with torch.enable_grad():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            if need_grads:
                self._grads = torch.autograd.grad(out, (q, k, v), self.grad_out.float())
        self._out = out.detach()

    def out(self):
        if self._out is None:
            # One pass gives both when the backward will want the gradients too.
            self._run(need_grads=self.inputs[0].requires_grad)
        return self._out

    def grads(self):
        if self._grads is None:
            self._run(need_grads=True)
        return self._grads
