"""The SDPA-internals path of the fa ops: which calls PyTorch's flash / memory-efficient
attention ops can run exactly, and the glue around them (GQA, lse padding, bias alignment,
position masks SDPA's top-left ``is_causal`` cannot express, rows without keys).
"""

from __future__ import annotations

import os

import torch

from . import reference

FLASH = "sdpa_flash"
EFFICIENT = "sdpa_efficient"

# The aten entry points, looked up through this name so CPU tests can stand in for them.
_aten = torch.ops.aten

# Sliding windows and non-square bottom-right causal reach the efficient kernel as an explicit
# [Sq, Sk] mask (broadcast over batch and heads); beyond this many elements the mask's memory is
# not worth it and the call falls through.
BAND_MASK_ELEMENTS = 1 << 26


def needs_band_mask(q, k, causal, bottom_right, window_left, window_right) -> bool:
    """Whether SDPA's own is_causal (top-left) cannot express the call's position mask."""
    return (window_left >= 0 or window_right >= 0
            or (causal and bottom_right and q.shape[2] != k.shape[2]))


def flash_unsupported(q, k, v, bias, band_mask: bool) -> str | None:
    if not torch.backends.cuda.flash_sdp_enabled():
        return "flash SDPA disabled in torch.backends.cuda"
    if torch.cuda.get_device_capability(q.device)[0] < 8:
        return "flash SDPA needs sm80+"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash SDPA needs fp16/bf16, got {q.dtype}"
    if bias is not None:
        return "flash SDPA takes no bias"
    if band_mask:
        return "flash SDPA takes no window or bottom-right causal with Sq != Sk"
    d, dv = q.shape[-1], v.shape[-1]
    if d != dv or d % 8 != 0 or d > 256:
        return f"flash SDPA needs equal head dims, multiple of 8, <= 256 (got D={d}, Dv={dv})"
    return None


def efficient_unsupported(q, k, v, bias, band_mask: bool) -> str | None:
    if not torch.backends.cuda.mem_efficient_sdp_enabled():
        return "efficient SDPA disabled in torch.backends.cuda"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"efficient SDPA needs fp16/bf16/fp32, got {q.dtype}"
    align = 16 // q.element_size()
    d, dv = q.shape[-1], v.shape[-1]
    if d % align != 0 or dv % align != 0:
        return f"efficient SDPA needs head dims that are multiples of {align} (got D={d}, Dv={dv})"
    if band_mask and q.shape[2] * k.shape[2] > BAND_MASK_ELEMENTS:
        return "efficient SDPA: the window / bottom-right mask would be too large"
    return None


def unsupported(q, k, v, bias, causal, bottom_right, window_left, window_right,
                      softcap, dropout_p) -> str | None:
    """Why no SDPA path fits this call (None if one does); the common part of both paths."""
    if os.environ.get("FA_INDUCTOR_DISABLE_SDPA") == "1":
        return "SDPA disabled by FA_INDUCTOR_DISABLE_SDPA"
    if not torch.cuda.is_available():
        return "SDPA needs CUDA, which is not available here"
    if min(q.shape[0], q.shape[1], q.shape[2], k.shape[2]) == 0:
        return "empty problem (left to the reference)"
    if softcap > 0:
        return "SDPA has no softcap"
    if dropout_p > 0:
        return "SDPA dropout differs from the fa dropout hash shared by forward and backward"
    return None


def _bias4(bias: torch.Tensor) -> torch.Tensor:
    return bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))


def efficient_bias(bias: torch.Tensor | None, q: torch.Tensor, sk: int) -> torch.Tensor | None:
    """The bias in the form the efficient kernel takes: q's dtype, 4-d, row stride a multiple
    of 16 elements (padded like SDPA's own mask preprocessing), expanded to [B, Hq, Sq, Sk]."""
    if bias is None:
        return None
    b4 = _bias4(bias)
    if b4.dtype == torch.bool:
        b4 = torch.zeros(b4.shape, dtype=q.dtype, device=q.device).masked_fill_(~b4, -float("inf"))
    else:
        b4 = b4.to(q.dtype)
    # The kernel wants every stride but the last, and the start, 16-element aligned (as SDPA's
    # own mask preprocessing ensures); size-1 dims become stride 0 by the expand below.
    needs_pad = b4.stride(-1) != 1 or b4.storage_offset() % 16 != 0 or any(
        st % 16 != 0 for st, n in zip(b4.stride()[:-1], b4.shape[:-1]) if n != 1)
    if needs_pad:
        pad = (-sk) % 16
        b4 = b4.contiguous()
        if pad:
            b4 = torch.nn.functional.pad(b4, (0, pad))[..., :sk]
    return b4.expand(q.shape[0], q.shape[1], q.shape[2], sk)


def _expand_kv(t: torch.Tensor, heads_q: int) -> torch.Tensor:
    """[B, Hkv, S, X] -> [B, Hq, S, X] (a copy): for SDPA paths without native GQA."""
    b, hkv, s, x = t.shape
    if hkv == heads_q:
        return t
    g = heads_q // hkv
    return t.unsqueeze(2).expand(b, hkv, g, s, x).reshape(b, heads_q, s, x)


def _sum_kv_groups(t: torch.Tensor, heads_kv: int) -> torch.Tensor:
    b, hq, s, x = t.shape
    if hq == heads_kv:
        return t
    return t.view(b, heads_kv, hq // heads_kv, s, x).sum(2)


def _clear_rows_without_keys(out, lse, bias: torch.Tensor, causal: bool) -> None:
    """The contract gives a row whose keys are all masked out 0 and lse -inf.  What SDPA's
    kernels leave in such a row's lse is their own convention (the efficient kernel's is
    finite), so the rows are found from the mask itself, not from lse.  A row masked by a
    huge *finite* bias is not empty: eager averages it uniformly, and SDPA does too."""
    keep = _bias4(bias if bias.dtype == torch.bool else ~torch.isneginf(bias))
    if causal:  # SDPA's is_causal is top-left aligned
        sq, sk = lse.shape[-1], keep.shape[-1]
        rows = torch.arange(sq, device=keep.device).view(-1, 1)
        keep = keep & (torch.arange(sk, device=keep.device).view(1, -1) <= rows)
    empty = ~keep.any(dim=-1)
    lse.masked_fill_(empty, -float("inf"))
    out.masked_fill_(empty.unsqueeze(-1), 0)


def with_band_mask(q, k, bias, causal, bottom_right, window_left, window_right):
    """(bias, is_causal) for SDPA: the position mask folded into the bias when SDPA's top-left
    is_causal cannot express it, else the bias as is and the causal flag."""
    if not needs_band_mask(q, k, causal, bottom_right, window_left, window_right):
        return bias, causal
    band = reference._Band.of(q.shape[2], k.shape[2], causal, bottom_right, window_left,
                              window_right)
    allowed = band.mask(0, q.shape[2], 0, k.shape[2], q.device)
    if bias is None:
        return allowed, False
    if bias.dtype == torch.bool:
        return bias & allowed, False
    # where() keeps the bias's values (and its gradient, summed over the broadcast dims later)
    return torch.where(allowed, bias, float("-inf")), False


def forward(name, q, k, v, bias, scale, causal, out, lse) -> None:
    sq, sk = q.shape[2], k.shape[2]
    # Square bottom-right causal equals top-left; other position masks arrive inside the bias.
    if name == FLASH:
        res = _aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        o, l = res[0], res[1][:, :, :sq]  # unpadded today; slicing costs nothing if so
    else:
        hq = q.shape[1]
        res = _aten._scaled_dot_product_efficient_attention(
            q, _expand_kv(k, hq), _expand_kv(v, hq), efficient_bias(bias, q, sk), True, 0.0,
            causal, scale=scale)
        o, l = res[0], res[1][:, :, :sq]  # the efficient kernel pads lse rows to 32
    out.copy_(o)
    lse.copy_(l)
    if bias is not None:
        _clear_rows_without_keys(out, lse, bias, causal)


def backward(name, grad_out, q, k, v, out, lse, bias, scale, causal, dq, dk, dv,
                   dbias) -> None:
    sq, sk = q.shape[2], k.shape[2]
    hq, hkv = q.shape[1], k.shape[1]
    # A row without keys has lse -inf; +inf makes its probabilities exp(x - lse) zero.
    lse = torch.where(torch.isneginf(lse), float("inf"), lse)
    dev = q.device
    if name == FLASH:
        no_rng = torch.zeros((), dtype=torch.int64, device=dev)
        gq, gk, gv = _aten._scaled_dot_product_flash_attention_backward(
            grad_out, q, k, v, out, lse.contiguous(), None, None, sq, sk, 0.0, causal,
            no_rng, no_rng, scale=scale)
        gb = None
    else:
        lse_pad = torch.zeros((q.shape[0], hq, -(-sq // 32) * 32), dtype=torch.float32,
                              device=dev)
        lse_pad[:, :, :sq] = lse
        no_rng = torch.zeros((), dtype=torch.int64, device=dev)
        sdpa_bias = efficient_bias(bias, q, sk)
        gq, gk, gv, gb = _aten._scaled_dot_product_efficient_attention_backward(
            grad_out, q, _expand_kv(k, hq), _expand_kv(v, hq), sdpa_bias, out, lse_pad,
            no_rng, no_rng, 0.0, [True, True, True, dbias is not None], causal, scale=scale)
        gk, gv = _sum_kv_groups(gk, hkv), _sum_kv_groups(gv, hkv)
    dq.copy_(gq)
    dk.copy_(gk)
    dv.copy_(gv)
    if dbias is not None:
        # Sum over the dims the user's bias broadcasts (bias here may carry a band mask too).
        b4 = _bias4(dbias)
        dims = tuple(a for a in range(4) if b4.shape[a] == 1 and gb.shape[a] != 1)
        gb = gb.sum(dim=dims, keepdim=True) if dims else gb
        dbias.copy_(gb.reshape(dbias.shape))
