"""Argument checks shared by the real implementations and the fake (meta) functions.

Both paths call the same checks so that a bad call fails while tracing with the same
ValueError/TypeError it would raise eagerly, instead of deep inside a kernel.  Size
comparisons go through ``torch._check_with`` so they also work on SymInts (they become
guards, or deferred runtime asserts for unbacked sizes).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class AttentionDims(NamedTuple):  # a tuple: made on every call, and a frozen dataclass costs more
    batch: object  # int or SymInt
    heads_q: object
    heads_kv: object
    seqlen_q: object
    seqlen_k: object
    head_dim: object
    head_dim_v: object


def _check(cond, message: Callable[[], str], error: type[Exception] = ValueError) -> None:
    # The message is a callable so that the hot path (every op call) formats no strings, and
    # concrete sizes (plain bools: every eager call) skip torch._check_with, which only
    # symbolic sizes need and which costs microseconds per check.
    if cond is True:
        return
    if cond is False:
        raise error(message())
    torch._check_with(error, cond, message)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionDims:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fa attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"fa attention: {name} must have rank 4 ([B, H, S, D]), got shape {_shape(t)}"
            )
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fa attention: q must be fp16/bf16/fp32/fp64, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"fa attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise ValueError(
            f"fa attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    b, hq, sq, d = q.shape
    bk, hkv, sk, dk = k.shape
    bv, hv, sv, dv = v.shape
    _check(bk == b and bv == b,
           lambda: f"fa attention: batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    _check(hv == hkv, lambda: f"fa attention: k and v head counts differ: k {_shape(k)}, v {_shape(v)}")
    _check(sv == sk, lambda: f"fa attention: k and v sequence lengths differ: k {_shape(k)}, v {_shape(v)}")
    _check(dk == d, lambda: f"fa attention: q and k head dims differ: q {_shape(q)}, k {_shape(k)}")
    _check(hkv >= 1, lambda: f"fa attention: k has no heads: {_shape(k)}")
    _check(hq % hkv == 0,
           lambda: f"fa attention: query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    return AttentionDims(b, hq, hkv, sq, sk, d, dv)


def check_bias(bias: torch.Tensor | None, dims: AttentionDims, device: torch.device) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"fa attention: bias must be a Tensor or None, got {type(bias).__name__}")
    if bias.dtype != torch.bool and bias.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fa attention: bias must be floating or bool, got {bias.dtype}")
    if bias.device != device:
        raise ValueError(f"fa attention: bias is on {bias.device}, q on {device}")
    target = (dims.batch, dims.heads_q, dims.seqlen_q, dims.seqlen_k)
    if bias.dim() > 4:
        raise ValueError(
            f"fa attention: bias of shape {_shape(bias)} has rank > 4; it must broadcast to "
            f"[B, Hq, Sq, Sk] = {list(target)}"
        )
    for size, want in zip(reversed(bias.shape), reversed(target)):
        _check(size == 1 or size == want,
               lambda: f"fa attention: bias of shape {_shape(bias)} does not broadcast to "
               f"[B, Hq, Sq, Sk] = {list(target)}")


def check_scalars(scale, causal, bottom_right, window_left, window_right, softcap,
                  dropout_p) -> None:
    if (type(scale) is float and type(softcap) is float and type(dropout_p) is float
            and type(causal) is bool and type(bottom_right) is bool
            and type(window_left) is int and type(window_right) is int):
        # The types every call from a graph or the benchmarks has: only the values to check.
        if (window_left >= -1 and window_right >= -1 and math.isfinite(scale)
                and math.isfinite(softcap) and softcap >= 0 and 0.0 <= dropout_p < 1.0):
            return
    for name, x in (("scale", scale), ("softcap", softcap), ("dropout_p", dropout_p)):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"fa attention: {name} must be a float, got {type(x).__name__}")
    for name, x in (("causal", causal), ("bottom_right", bottom_right)):
        if not isinstance(x, bool):
            raise TypeError(f"fa attention: {name} must be a bool, got {type(x).__name__}")
    for name, x in (("window_left", window_left), ("window_right", window_right)):
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"fa attention: {name} must be an int, got {type(x).__name__}")
        if x < -1:
            raise ValueError(f"fa attention: {name} must be >= -1 (-1 = unbounded), got {x}")
    if not math.isfinite(scale):
        raise ValueError(f"fa attention: scale must be finite, got {scale}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"fa attention: softcap must be finite and >= 0 (0 = off), got {softcap}")
    if not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"fa attention: dropout_p must be in [0, 1), got {dropout_p}")


def check_seed(dropout_p: float, dropout_seed: torch.Tensor | None) -> None:
    if dropout_seed is None:
        if dropout_p > 0:
            raise ValueError("fa attention: dropout_p > 0 needs a dropout_seed tensor")
        return
    if not isinstance(dropout_seed, torch.Tensor):
        raise TypeError(
            "fa attention: dropout_seed must be a Tensor or None, got "
            f"{type(dropout_seed).__name__}"
        )
    if dropout_seed.dtype != torch.int64 or dropout_seed.numel() != 1:
        raise ValueError(
            "fa attention: dropout_seed must be an int64 tensor with one element, got "
            f"{dropout_seed.dtype} of shape {_shape(dropout_seed)}"
        )


def check_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                  softcap, dropout_p, dropout_seed) -> AttentionDims:
    dims = check_qkv(q, k, v)
    check_bias(bias, dims, q.device)
    check_scalars(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p)
    check_seed(dropout_p, dropout_seed)
    return dims


def check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                   window_left, window_right, softcap, dropout_p, dropout_seed,
                   bias_requires_grad) -> AttentionDims:
    dims = check_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                         softcap, dropout_p, dropout_seed)
    out_shape = (dims.batch, dims.heads_q, dims.seqlen_q, dims.head_dim_v)
    for name, t in (("grad_out", grad_out), ("out", out)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fa attention backward: {name} must be a Tensor")
        if t.dim() != 4:
            raise ValueError(
                f"fa attention backward: {name} must have shape [B, Hq, Sq, Dv] = "
                f"{list(out_shape)}, got {_shape(t)}"
            )
        _check(t.shape[0] == out_shape[0] and t.shape[1] == out_shape[1]
               and t.shape[2] == out_shape[2] and t.shape[3] == out_shape[3],
               lambda: f"fa attention backward: {name} must have shape [B, Hq, Sq, Dv] = "
               f"{list(out_shape)}, got {_shape(t)}")
    if not isinstance(lse, torch.Tensor) or lse.dim() != 3:
        raise ValueError("fa attention backward: lse must be a [B, Hq, Sq] tensor")
    _check(lse.shape[0] == dims.batch and lse.shape[1] == dims.heads_q
           and lse.shape[2] == dims.seqlen_q,
           lambda: f"fa attention backward: lse must have shape [B, Hq, Sq], got {_shape(lse)}")
    if lse.dtype != torch.float32:
        raise TypeError(f"fa attention backward: lse must be float32, got {lse.dtype}")
    if not isinstance(bias_requires_grad, bool):
        raise TypeError("fa attention backward: bias_requires_grad must be a bool")
    if bias_requires_grad and (bias is None or bias.dtype == torch.bool):
        raise ValueError("fa attention backward: bias_requires_grad needs a floating bias")
    return dims
