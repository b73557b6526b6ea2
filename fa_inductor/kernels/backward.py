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


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    # A size-1 dim's stride is never multiplied by a nonzero index; 0 keeps the kernel's
    # 16-byte alignment check meaningful for the others.
    return tuple(s if n > 1 else 0 for s, n in zip(t.stride()[:3], t.shape[:3]))


# Head dims (after padding) the SM90 backward is compiled for; its dK and dV accumulators of
# larger head dims do not fit in a warpgroup's registers (csrc/sm90/bwd_sm90_traits.h).
SM90_HEAD_DIMS = (64, 96, 128)


def sm90_covers(head_dim: int, deterministic: bool) -> bool:
    """Whether the SM90 backward takes a call of this (padded) head dim; else the SM80 one runs.
    Both modes: deterministic calls add into each dQ tile in key-block order."""
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


def _out_buffer(t: torch.Tensor, hd: int, aligned) -> torch.Tensor:
    """t itself if the kernel can write it, else a [B,S,H,hd]-ordered scratch to copy back from."""
    if t.size(-1) == hd and aligned(t):
        return t
    B, H, S, _ = t.shape
    return torch.empty((B, S, H, hd), dtype=t.dtype, device=t.device).transpose(1, 2)


def _workspace(shape, device) -> torch.Tensor:
    """fp32 scratch for the kernels, uninitialised: the kernels set every element they read
    (tests swap this for a NaN-filled allocation to check that)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def run_backward(lib, grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                 window_right, softcap, dq, dk, dv, deterministic=False, family="sm80") -> None:
    """Writes dq, dk, dv (preallocated, their inputs' shapes, last dim contiguous) with the
    ``family`` ("sm80" or "sm90") kernels; the SM90 ones must cover the call (``sm90_covers``)."""
    from . import _aligned, _prepare, padded_head_dim  # the forward's tensor rules

    B, Hq, Sq, D = q.shape
    Hkv, Sk, Dv = k.size(1), k.size(2), v.size(-1)
    if B == 0 or Hq == 0:
        return
    if Sq == 0 or Sk == 0:
        # No query, or no key: every gradient is an empty sum.
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return
    hd = padded_head_dim(max(D, Dv))
    if hd is None:
        raise ValueError(f"head dim {max(D, Dv)} too large for the compiled backward")
    if family == "sm90" and not sm90_covers(hd, deterministic):
        raise ValueError(f"the SM90 backward takes head dims {SM90_HEAD_DIMS} (got head dim {hd})")
    if family not in ("sm80", "sm90"):
        raise ValueError(f"unknown kernel family {family!r}")
    q, k, v, out, grad_out = (_prepare(t, hd) for t in (q, k, v, out, grad_out))
    lse = lse.to(torch.float32).contiguous()
    dq_buf, dk_buf, dv_buf = (_out_buffer(t, hd, _aligned) for t in (dq, dk, dv))

    wl = int(window_left) if window_left is not None and window_left >= 0 else -1
    wr = int(window_right) if window_right is not None and window_right >= 0 else -1
    if causal:
        wr = 0 if wr < 0 else min(wr, 0)
    diag = (Sk - Sq) if bottom_right else 0

    splits = 1
    if deterministic and family == "sm80":
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        # One wave: more CTAs than SMs would leave a mostly idle second wave.
        splits = max(1, min(math.ceil(Sk / _MIN_BLOCK_N), sms // (B * Hkv)))
    # Rows padded to 128 (>= any kBlockM): the main kernel adds edge tiles without predicates.
    sq_rounded = -(-Sq // 128) * 128
    dq_accum = _workspace((splits, B, Hq, sq_rounded, hd), q.device)
    # SM90 moves a query tile's row statistics with one bulk copy: rows padded like dq_accum.
    dsum = _workspace((B, Hq, sq_rounded if family == "sm90" else Sq), q.device)
    lse_log2 = _workspace((B, Hq, sq_rounded), q.device) if family == "sm90" else None
    # SM90 deterministic mode: per 64-row tile of dq_accum, 1 + the last key block that added into
    # it, so that they add in a fixed order (the preprocessing kernel zeroes it).
    semaphore = (torch.empty((B, Hq, sq_rounded // 64), dtype=torch.int32, device=q.device)
                 if family == "sm90" and deterministic else None)

    p = FaBwdParams(
        q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(),
        dout=grad_out.data_ptr(), lse=lse.data_ptr(), dq=dq_buf.data_ptr(), dk=dk_buf.data_ptr(),
        dv=dv_buf.data_ptr(), dq_accum=dq_accum.data_ptr(), dsum=dsum.data_ptr(),
        batch=B, heads_q=Hq, heads_kv=Hkv, seqlen_q=Sq, seqlen_k=Sk, head_dim=hd,
        seqlen_q_rounded=sq_rounded,
        scale=float(scale), softcap=float(softcap) if softcap and softcap > 0 else 0.0,
        window_left=wl, window_right=wr, diag_offset=diag, dtype=_DTYPES[q.dtype],
        deterministic=int(bool(deterministic)), num_splits=splits,
        dq_semaphore=semaphore.data_ptr() if semaphore is not None else None,
    )
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out), ("dout", grad_out),
                    ("dq", dq_buf), ("dk", dk_buf), ("dv", dv_buf)):
        getattr(p, f"{name}_strides")[:] = _strides(t)

    fn = _bind(lib.raw, family)
    with torch.cuda.device(q.device):
        stream = ctypes.c_void_p(torch.cuda.current_stream(q.device).cuda_stream)
        if family == "sm90":
            status = fn(ctypes.byref(p), ctypes.c_void_p(lse_log2.data_ptr()), stream)
        else:
            status = fn(ctypes.byref(p), stream)
    lib.check(status, f"fa_bwd_{family}")
    for buf, dst, d in ((dq_buf, dq, D), (dk_buf, dk, D), (dv_buf, dv, Dv)):
        if buf is not dst:
            dst.copy_(buf[..., :d])
