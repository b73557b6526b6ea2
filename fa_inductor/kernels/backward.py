"""The attention backward through the C entry points ``fa_bwd_sm80`` (csrc/bwd_api.cpp) and, on
Hopper, ``fa_bwd_sm90`` (csrc/sm90/bwd_api_sm90.cpp).

``run_backward`` prepares the tensors (head dim zero-padded to a kernel size, rows 16-byte
aligned), allocates the fp32 workspaces (dQ accumulator, rowsum(dO * O), and for SM90 lse in
base 2) and launches preprocessing, the main kernel and the dQ conversion on the current stream.
Padding is exact: zero columns of q/k/v/out/dO add nothing to any product and receive zero
gradient.
"""

from __future__ import annotations

import ctypes
import math

import torch

# The forward's tensor rules.
from . import (_ALIGN_BYTES, _kernel_window, _launch_head_dim, _prepared, _row_strides, launch_on,
               padded_head_dim)

FA_BWD_FP16 = 0
FA_BWD_BF16 = 1


class FaBwdParams(ctypes.Structure):
    """Mirror of FaBwdParams (csrc/bwd_params.h); same order, same types."""

    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("dout", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("dq", ctypes.c_void_p),
        ("dk", ctypes.c_void_p),
        ("dv", ctypes.c_void_p),
        ("dq_accum", ctypes.c_void_p),
        ("dsum", ctypes.c_void_p),
        ("q_strides", ctypes.c_int64 * 3),
        ("k_strides", ctypes.c_int64 * 3),
        ("v_strides", ctypes.c_int64 * 3),
        ("out_strides", ctypes.c_int64 * 3),
        ("dout_strides", ctypes.c_int64 * 3),
        ("dq_strides", ctypes.c_int64 * 3),
        ("dk_strides", ctypes.c_int64 * 3),
        ("dv_strides", ctypes.c_int64 * 3),
        ("batch", ctypes.c_int64),
        ("heads_q", ctypes.c_int64),
        ("heads_kv", ctypes.c_int64),
        ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("seqlen_q_rounded", ctypes.c_int64),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("diag_offset", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("deterministic", ctypes.c_int32),
        ("num_splits", ctypes.c_int32),
        ("dq_semaphore", ctypes.c_void_p),
    ]


_DTYPES = {torch.float16: FA_BWD_FP16, torch.bfloat16: FA_BWD_BF16}
# Smallest key block of any head-dim config (csrc/bwd/bwd_configs.h): bounds useful splits.
_MIN_BLOCK_N = 64


def backward_unsupported(q, k, v, bias, causal, bottom_right, window_left, window_right, softcap,
                         dropout_p) -> str | None:
    """None when the backward kernels cover the call (on top of the forward's checks), else why."""
    if bias is not None:
        return "attention bias is not supported by the compiled backward"
    if dropout_p and dropout_p > 0:
        return "dropout is not supported by the compiled backward"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported by the compiled backward"
    if max(q.size(2), k.size(2)) >= 2**30:
        return "sequence too long for the compiled backward"
    return None


# Head dims (after padding) the SM90 backward is compiled for (csrc/sm90/bwd_api_sm90.cpp).
SM90_HEAD_DIMS = (64, 96, 128, 192, 256)
# Head dims at which the SM90 backward adds dQ by atomics (kDqAtomic in bwd_sm90_traits.h), so
# that it has no deterministic mode there.
SM90_ATOMIC_DQ_HEAD_DIMS = (256,)


def sm90_covers(head_dim: int, deterministic: bool) -> bool:
    """Whether the SM90 backward takes a call of this (padded) head dim; else the SM80 one runs.
    Deterministic calls add into each dQ tile in key-block order, except where dQ is added by
    atomics (head dim 256), which the SM80 backward's deterministic mode then takes."""
    if deterministic and head_dim in SM90_ATOMIC_DQ_HEAD_DIMS:
        return False
    return head_dim in SM90_HEAD_DIMS


def _bind(raw: ctypes.CDLL, family: str = "sm80"):
    fn = getattr(raw, f"fa_bwd_{family}")
    if getattr(fn, "_fa_bound", False) is False:
        fn.restype = ctypes.c_int
        if family == "sm90":  # the base-2 lse workspace is its one extra argument
            fn.argtypes = [ctypes.POINTER(FaBwdParams), ctypes.c_void_p, ctypes.c_void_p]
        else:
            fn.argtypes = [ctypes.POINTER(FaBwdParams), ctypes.c_void_p]
        fn._fa_bound = True
    return fn


def _out_buffer(t: torch.Tensor, hd: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """t itself if the kernel can write it, else a [B,S,H,hd]-ordered scratch to copy back from;
    with its row strides."""
    strides = _row_strides(t) if t.shape[3] == hd else None
    if strides is not None:
        return t, strides
    B, H, S, _ = t.shape
    buf = torch.empty((B, S, H, hd), dtype=t.dtype, device=t.device).transpose(1, 2)
    return buf, _row_strides(buf)


def _workspace(shape, device) -> torch.Tensor:
    """fp32 scratch for the kernels, uninitialised: the kernels set every element they read
    (tests swap this for a NaN-filled allocation to check that)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


# Each part of the workspace starts on a 128-byte boundary, as a separate allocation would (the
# kernels' bulk copies need 16).
_PART_ALIGN = 32  # fp32 elements


def _parts(*sizes: int) -> tuple[int, list[int]]:
    """Total fp32 elements and the offset of each part for one allocation holding parts of these
    sizes (0: absent)."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // _PART_ALIGN) * _PART_ALIGN
    return max(total, 1), offsets


class _Layout:
    """What a backward launch takes from its call's sizes, strides and flags, apart from the
    addresses: the params' other fields (positional, FaBwdParams' order) and the workspace's
    parts."""

    __slots__ = ("fields", "total", "offsets", "semaphore")

    def __init__(self, strides, B, Hq, Hkv, Sq, Sk, hd, dtype, scale, causal, bottom_right,
                 window_left, window_right, softcap, deterministic, sm90, device):
        wl, wr = _kernel_window(window_left, window_right, causal)
        diag = (Sk - Sq) if bottom_right else 0
        splits = 1
        if deterministic and not sm90:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            # One wave: more CTAs than SMs would leave a mostly idle second wave.
            splits = max(1, min(math.ceil(Sk / _MIN_BLOCK_N), sms // (B * Hkv)))
        # Rows padded to 128 (>= any kBlockM): the main kernel adds edge tiles without predicates.
        sq_rounded = -(-Sq // 128) * 128
        # One allocation for the scratch (each torch.empty is host time on every call):
        # - the fp32 dQ accumulator [splits, B, Hq, sq_rounded, hd];
        # - rowsum(dO * O) [B, Hq, rows]; SM90 moves a query tile's row statistics with one bulk
        #   copy, so its rows are padded like the accumulator's;
        # - SM90: lse in base 2 [B, Hq, sq_rounded];
        # - SM90 deterministic mode: per 64-row tile of the accumulator, an int32 semaphore (1 +
        #   the last key block that added into it) so that they add in a fixed order (the
        #   preprocessing kernel zeroes it).
        rows = B * Hq * sq_rounded
        self.total, self.offsets = _parts(
            splits * rows * hd, rows if sm90 else B * Hq * Sq, rows if sm90 else 0,
            rows // 64 if sm90 and deterministic else 0)
        self.semaphore = sm90 and deterministic
        arrays = tuple((ctypes.c_int64 * 3)(*s) for s in strides)
        self.fields = (*arrays, B, Hq, Hkv, Sq, Sk, hd, sq_rounded, float(scale),
                       float(softcap) if softcap and softcap > 0 else 0.0, wl, wr, diag,
                       _DTYPES[dtype], int(bool(deterministic)), splits)

    def params(self, q, k, v, out, grad_out, lse, dq, dk, dv, base: int) -> FaBwdParams:
        o_accum, o_dsum, _, o_sem = self.offsets
        return FaBwdParams(q, k, v, out, grad_out, lse, dq, dk, dv, base + 4 * o_accum,
                           base + 4 * o_dsum, *self.fields,
                           base + 4 * o_sem if self.semaphore else None)


def _launch(lib, family: str, layout: _Layout, device, p: FaBwdParams, base: int) -> None:
    fn = _bind(lib.raw, family)
    if family == "sm90":
        lse_log2 = base + 4 * layout.offsets[2]
        status = launch_on(device, lambda stream: fn(ctypes.byref(p), lse_log2, stream))
    else:
        status = launch_on(device, lambda stream: fn(ctypes.byref(p), stream))
    lib.check(status, f"fa_bwd_{family}")


def _checked_family(hd: int | None, D: int, Dv: int, deterministic: bool, family: str) -> bool:
    """Whether ``family`` is SM90 (raising where it cannot take the call)."""
    if hd is None:
        raise ValueError(f"head dim {max(D, Dv)} too large for the compiled backward")
    sm90 = family == "sm90"
    if sm90 and not sm90_covers(hd, deterministic):
        raise ValueError(
            f"the SM90 backward takes head dims {SM90_HEAD_DIMS}, in deterministic mode not "
            f"{SM90_ATOMIC_DQ_HEAD_DIMS} (got head dim {hd}, deterministic={deterministic})")
    if not sm90 and family != "sm80":
        raise ValueError(f"unknown kernel family {family!r}")
    return sm90


def run_backward(lib, grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                 window_right, softcap, dq, dk, dv, deterministic=False, family="sm80") -> None:
    """Writes dq, dk, dv (preallocated, their inputs' shapes, last dim contiguous) with the
    ``family`` ("sm80" or "sm90") kernels; the SM90 ones must cover the call (``sm90_covers``)."""
    B, Hq, Sq, D = q.shape
    _, Hkv, Sk, _ = k.shape
    Dv = v.shape[3]
    if B == 0 or Hq == 0:
        return
    if Sq == 0 or Sk == 0:
        # No query, or no key: every gradient is an empty sum.
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return
    hd = padded_head_dim(max(D, Dv))
    sm90 = _checked_family(hd, D, Dv, deterministic, family)
    q, qs = _prepared(q, hd)
    k, ks = _prepared(k, hd)
    v, vs = _prepared(v, hd)
    out, outs = _prepared(out, hd)
    grad_out, dos = _prepared(grad_out, hd)
    if lse.dtype != torch.float32 or not lse.is_contiguous():
        lse = lse.to(torch.float32).contiguous()
    dq_buf, dqs = _out_buffer(dq, hd)
    dk_buf, dks = _out_buffer(dk, hd)
    dv_buf, dvs = _out_buffer(dv, hd)
    layout = _Layout((qs, ks, vs, outs, dos, dqs, dks, dvs), B, Hq, Hkv, Sq, Sk, hd, q.dtype,
                     scale, causal, bottom_right, window_left, window_right, softcap,
                     deterministic, sm90, q.device)
    workspace = _workspace((layout.total,), q.device)  # held until the launch below is queued
    base = workspace.data_ptr()
    p = layout.params(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                      grad_out.data_ptr(), lse.data_ptr(), dq_buf.data_ptr(), dk_buf.data_ptr(),
                      dv_buf.data_ptr(), base)
    _launch(lib, family, layout, q.device, p, base)
    for buf, dst, d in ((dq_buf, dq, D), (dk_buf, dk, D), (dv_buf, dv, Dv)):
        if buf is not dst:
            dst.copy_(buf[..., :d])


def backward_launcher(lib, grad_out, q, k, v, out, lse, scale, causal, bottom_right,
                      window_left, window_right, softcap, dq, dk, dv, deterministic, family):
    """``launch(grad_out, q, k, v, out, lse, dq, dk, dv) -> bool``: ``run_backward`` for later
    calls whose tensors have these shapes, strides and dtypes, made while this call's are at
    hand; None where those calls need more than a launch (head dims padded, rows copied to align
    them, lse converted, nothing to compute).  ``launch`` reads only the addresses and returns
    False without launching when one of the inputs' is not 16-byte aligned."""
    B, Hq, Sq, _ = q.shape
    _, Hkv, Sk, _ = k.shape
    hd = _launch_head_dim(q, k, v)
    if hd is None:
        return None
    sm90 = _checked_family(hd, hd, hd, deterministic, family)
    strides = tuple(_row_strides(t) for t in (q, k, v, out, grad_out, dq, dk, dv))
    if None in strides or lse.dtype != torch.float32 or not lse.is_contiguous():
        return None
    device = q.device
    layout = _Layout(strides, B, Hq, Hkv, Sq, Sk, hd, q.dtype, scale, causal, bottom_right,
                     window_left, window_right, softcap, deterministic, sm90, device)
    shape = (layout.total,)

    def launch(grad_out, q, k, v, out, lse, dq, dk, dv) -> bool:
        qp, kp, vp, op, gp = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                              grad_out.data_ptr())
        dqp, dkp, dvp = dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
        if (qp | kp | vp | op | gp | dqp | dkp | dvp) % _ALIGN_BYTES:
            return False
        workspace = _workspace(shape, device)  # held until the launch below is queued
        base = workspace.data_ptr()
        _launch(lib, family, layout, device,
                layout.params(qp, kp, vp, op, gp, lse.data_ptr(), dqp, dkp, dvp, base), base)
        return True

    return launch
