"""Blockwise (online-softmax) attention in plain PyTorch: the reference implementation of the
fa ops, and the fallback wherever no compiled kernel or SDPA path applies (CPU).

Every feature of the contract in ``fa_inductor.ops`` is implemented.  Work is tiled into
[block_q x block_k] score tiles; no full [Sq, Sk] matrix is ever built, so memory stays
O(Sq * block) and a 32k-token sequence runs on a CPU.  Tiles that causal/window masking
excludes entirely are skipped; tiles entirely inside the allowed band are not masked at all.
GQA/MQA needs no repeated K/V: the G query heads sharing one KV head are stacked along the row
axis of a single matmul.  Accumulation is fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from . import dropout as _dropout

BLOCK_Q = 1024
BLOCK_K = 256
# Upper bound on the elements of one [B, Hq, block_q, block_k] score tile: many heads shrink
# block_q instead of growing the temporaries.
TILE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class _Band:
    """The allowed key range of row i is [i + lo, i + hi] (inclusive, either may be infinite)."""

    lo: float
    hi: float
    sk: int

    @staticmethod
    def of(sq, sk, causal, bottom_right, window_left, window_right) -> "_Band":
        off = (sk - sq) if bottom_right else 0
        hi = math.inf
        if causal:
            hi = 0
        if window_right >= 0:
            hi = min(hi, window_right)
        lo = -window_left if window_left >= 0 else -math.inf
        return _Band(off + lo, off + hi, sk)

    def key_range(self, i0: int, i1: int) -> tuple[int, int]:
        """Keys [j0, j1) that any row of [i0, i1) may see."""
        j0 = 0 if self.lo == -math.inf else max(0, int(i0 + self.lo))
        j1 = self.sk if self.hi == math.inf else min(self.sk, int(i1 - 1 + self.hi) + 1)
        return j0, max(j0, j1)

    def covers(self, i0: int, i1: int, j0: int, j1: int) -> bool:
        """Whether every (i, j) of the tile is allowed (so it needs no mask)."""
        return (self.lo == -math.inf or j0 >= i1 - 1 + self.lo) and (
            self.hi == math.inf or j1 - 1 <= i0 + self.hi
        )

    def mask(self, i0: int, i1: int, j0: int, j1: int, device) -> torch.Tensor:
        i = torch.arange(i0, i1, device=device).view(-1, 1)
        j = torch.arange(j0, j1, device=device).view(1, -1)
        d = j - i
        allowed = torch.ones((i1 - i0, j1 - j0), dtype=torch.bool, device=device)
        if self.lo != -math.inf:
            allowed &= d >= self.lo
        if self.hi != math.inf:
            allowed &= d <= self.hi
        return allowed


@dataclass
class _Problem:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None  # 4-d view (leading 1s added), bias's dtype
    scale: float
    band: _Band
    softcap: float
    dropout_p: float
    seed_word: torch.Tensor | None
    block_q: int
    block_k: int

    @property
    def groups(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    @property
    def acc_dtype(self) -> torch.dtype:
        return torch.float64 if self.q.dtype == torch.float64 else torch.float32

    def tiles(self) -> Iterator[tuple[int, int, Iterator[tuple[int, int, bool]]]]:
        sq, sk = self.q.shape[2], self.k.shape[2]
        for i0 in range(0, sq, self.block_q):
            i1 = min(sq, i0 + self.block_q)
            lo, hi = self.band.key_range(i0, i1)

            def keys(i0=i0, i1=i1, lo=lo, hi=hi):
                for j0 in range(lo, hi, self.block_k):
                    j1 = min(hi, j0 + self.block_k)
                    yield j0, j1, self.band.covers(i0, i1, j0, j1)

            yield i0, i1, keys()

    def rows(self, t: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """t[:, :, i0:i1] of a [B, Hq, S, X] tensor as [B, Hkv, G*(i1-i0), X] in acc dtype."""
        b, hq, _, x = t.shape
        hkv = self.k.shape[1]
        return t[:, :, i0:i1].to(self.acc_dtype).reshape(b, hkv, self.groups * (i1 - i0), x)

    def bias_tile(self, i0, i1, j0, j1) -> torch.Tensor:
        rows = slice(None) if self.bias.shape[2] == 1 else slice(i0, i1)
        cols = slice(None) if self.bias.shape[3] == 1 else slice(j0, j1)
        return self.bias[:, :, rows, cols]

    def scores(self, qs: torch.Tensor, i0, i1, j0, j1, full: bool):
        """Scores of one tile as [B, Hq, I, J] (acc dtype), after scale/softcap/bias/masks.

        Returns (x, capped) where capped = tanh(.) of the softcap (None without softcap), which
        the backward needs for the softcap's derivative.
        """
        b, hq = self.q.shape[:2]
        k = self.k[:, :, j0:j1].to(self.acc_dtype)
        x = torch.matmul(qs, k.transpose(-1, -2)).view(b, hq, i1 - i0, j1 - j0)
        capped = None
        if self.softcap > 0:
            capped = torch.tanh(x.div_(self.softcap))
            x = capped * self.softcap
        if self.bias is not None:
            bt = self.bias_tile(i0, i1, j0, j1)
            if bt.dtype == torch.bool:
                x = x.masked_fill_(~bt, -math.inf)
            else:
                x = x.add_(bt)
        if not full:
            x = x.masked_fill_(~self.band.mask(i0, i1, j0, j1, x.device), -math.inf)
        return x, capped

    def dropout_scale(self, i0, i1, j0, j1, device) -> torch.Tensor | None:
        """keep / (1 - p) for one tile, [B, Hq, I, J], or None without dropout."""
        if self.dropout_p == 0:
            return None
        b, hq = self.q.shape[:2]
        idx = lambda a, z, shape: torch.arange(a, z, device=device).view(shape)  # noqa: E731
        keep = _dropout.keep_mask(
            self.seed_word, hq, idx(0, b, (-1, 1, 1, 1)), idx(0, hq, (1, -1, 1, 1)),
            idx(i0, i1, (1, 1, -1, 1)), idx(j0, j1, (1, 1, 1, -1)), self.dropout_p,
        )
        return keep.to(self.acc_dtype) / (1.0 - self.dropout_p)


def _problem(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
             dropout_p, dropout_seed, block_q, block_k) -> _Problem:
    if bias is not None:
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
    seed = (_dropout.seed_word(dropout_seed, q.device)
            if dropout_p > 0 and dropout_seed is not None else None)
    band = _Band.of(q.shape[2], k.shape[2], causal, bottom_right, window_left, window_right)
    block_k = block_k or BLOCK_K
    if not block_q:
        rows = TILE_ELEMENTS // max(1, q.shape[0] * q.shape[1] * block_k)
        block_q = max(16, min(BLOCK_Q, rows))
    return _Problem(q, k, v, bias, float(scale), band, float(softcap), float(dropout_p), seed,
                    block_q, block_k)


def _safe_max(m: torch.Tensor) -> torch.Tensor:
    """Row maxima with -inf (no key seen yet) replaced by 0, so exp(x - m) never sees inf - inf."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def forward_into(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
                 dropout_p, dropout_seed, out, lse, *, block_q=None, block_k=None) -> None:
    """Write attention into preallocated out [B, Hq, Sq, Dv] and lse [B, Hq, Sq] (fp32)."""
    pb = _problem(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
                  dropout_p, dropout_seed, block_q, block_k)
    b, hq, _, _ = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    acc_t = pb.acc_dtype
    for i0, i1, keys in pb.tiles():
        n = i1 - i0
        qs = pb.rows(q, i0, i1) * pb.scale
        m = torch.full((b, hq, n, 1), -math.inf, dtype=acc_t, device=q.device)
        l = torch.zeros((b, hq, n, 1), dtype=acc_t, device=q.device)
        acc = torch.zeros((b, hkv, pb.groups * n, dv), dtype=acc_t, device=q.device)
        for j0, j1, full in keys:
            x, _ = pb.scores(qs, i0, i1, j0, j1, full)
            m_new = torch.maximum(m, x.amax(dim=-1, keepdim=True))
            shift = _safe_max(m_new)
            p = x.sub_(shift).exp_()  # x is a fresh tile: reuse its memory
            alpha = torch.exp(m - shift)
            l = l * alpha + p.sum(dim=-1, keepdim=True)
            drop = pb.dropout_scale(i0, i1, j0, j1, q.device)
            if drop is not None:
                p = p * drop
            vb = v[:, :, j0:j1].to(acc_t)
            pv = torch.matmul(p.view(b, hkv, pb.groups * n, j1 - j0), vb)
            acc = acc * alpha.view(b, hkv, pb.groups * n, 1) + pv
            m = m_new
        acc = acc.view(b, hq, n, dv)
        empty = l == 0
        o = torch.where(empty, torch.zeros_like(acc), acc / torch.where(empty, 1.0, l))
        out[:, :, i0:i1].copy_(o)
        row_lse = torch.where(empty, -math.inf, m + torch.log(torch.where(empty, 1.0, l)))
        lse[:, :, i0:i1].copy_(row_lse.squeeze(-1))


def backward_into(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right, window_left,
                  window_right, softcap, dropout_p, dropout_seed, dq, dk, dv, dbias,
                  *, block_q=None, block_k=None) -> None:
    """Write gradients into preallocated dq, dk, dv (input shapes) and dbias (bias's shape, or
    None when the bias gradient is not wanted)."""
    pb = _problem(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
                  dropout_p, dropout_seed, block_q, block_k)
    b, hq, sq, d = q.shape
    hkv, sk, d_v = k.shape[1], k.shape[2], v.shape[3]
    g = pb.groups
    acc_t = pb.acc_dtype
    dev = q.device
    dk_acc = torch.zeros((b, hkv, sk, d), dtype=acc_t, device=dev)
    dv_acc = torch.zeros((b, hkv, sk, d_v), dtype=acc_t, device=dev)
    dbias_acc = (torch.zeros(pb.bias.shape, dtype=acc_t, device=dev)
                 if dbias is not None else None)
    if acc_t == torch.float64 or lse_lost_precision(lse, bias):
        # The contract's lse is fp32.  fp64 inputs get fp64 gradients only from fp64 row
        # statistics; and a row whose keys all carry a huge finite bias (HF's finfo.min masks)
        # has lse = m + log(l) with log(l) rounded away, so exp(x - lse) would give 1 where
        # eager gives 1/l.  Recomputing m and log(l) separately keeps both exact.
        shift, log_l = _row_stats(pb)
    else:
        # Rows without any key have lse = -inf; +inf there makes exp(x - lse) = 0 for them.
        shift = torch.where(torch.isneginf(lse), math.inf, lse).to(acc_t).unsqueeze(-1)
        log_l = None
    for i0, i1, keys in pb.tiles():
        n = i1 - i0
        q_r = pb.rows(q, i0, i1)
        qs = q_r * pb.scale
        do_r = pb.rows(grad_out, i0, i1)
        # D_i = rowsum(dO * O) = sum_j P_ij dP_ij, also with dropout (O uses the dropped P).
        delta = (grad_out[:, :, i0:i1].to(acc_t) * out[:, :, i0:i1].to(acc_t)).sum(-1, keepdim=True)
        dq_acc = torch.zeros((b, hkv, g * n, d), dtype=acc_t, device=dev)
        for j0, j1, full in keys:
            x, capped = pb.scores(qs, i0, i1, j0, j1, full)
            p = x - shift[:, :, i0:i1]
            p = torch.exp(p if log_l is None else p - log_l[:, :, i0:i1])
            drop = pb.dropout_scale(i0, i1, j0, j1, dev)
            kb = k[:, :, j0:j1].to(acc_t)
            vb = v[:, :, j0:j1].to(acc_t)
            p_dropped = p if drop is None else p * drop
            dv_acc[:, :, j0:j1] += torch.matmul(
                p_dropped.view(b, hkv, g * n, j1 - j0).transpose(-1, -2), do_r)
            dp = torch.matmul(do_r, vb.transpose(-1, -2)).view(b, hq, n, j1 - j0)
            if drop is not None:
                dp = dp * drop
            ds = p * (dp - delta)
            if dbias_acc is not None:
                _accumulate_bias_grad(dbias_acc, ds, i0, i1, j0, j1)
            if capped is not None:
                ds = ds * (1 - capped * capped)
            ds_r = ds.view(b, hkv, g * n, j1 - j0)
            dq_acc += torch.matmul(ds_r, kb)
            dk_acc[:, :, j0:j1] += torch.matmul(ds_r.transpose(-1, -2), qs)
        dq[:, :, i0:i1].copy_(dq_acc.view(b, hq, n, d) * pb.scale)
    dk.copy_(dk_acc)
    dv.copy_(dv_acc)
    if dbias is not None:
        dbias.copy_(dbias_acc.view(dbias.shape))


# fp32 carries ~7 significant digits: past this magnitude an lse's log(l) part is below its
# rounding step (~1e-3 here), so probabilities rebuilt from it are off.
LSE_PRECISE_LIMIT = 8192.0


def lse_lost_precision(lse: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether some row's fp32 lse is too large in magnitude to rebuild its probabilities.

    Only a huge finite float bias can do that (scores themselves are far smaller), so calls
    without one pay nothing; with one this reads lse (a device sync on CUDA)."""
    if bias is None or not bias.is_floating_point():
        return False
    finite = torch.isfinite(lse)
    return bool((lse.abs() > LSE_PRECISE_LIMIT).logical_and_(finite).any())


def _row_stats(pb: _Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's score max m and log of its sum l = sum_j exp(x_j - m), apart, in the
    accumulation dtype ([B, Hq, Sq, 1] each).  A row without keys gets m = +inf, log l = 0,
    so exp(x - m - log l) = 0 there."""
    b, hq, sq, _ = pb.q.shape
    m_rows = torch.empty((b, hq, sq, 1), dtype=pb.acc_dtype, device=pb.q.device)
    log_l_rows = torch.empty_like(m_rows)
    for i0, i1, keys in pb.tiles():
        qs = pb.rows(pb.q, i0, i1) * pb.scale
        m = torch.full((b, hq, i1 - i0, 1), -math.inf, dtype=pb.acc_dtype, device=pb.q.device)
        l = torch.zeros_like(m)
        for j0, j1, full in keys:
            x, _ = pb.scores(qs, i0, i1, j0, j1, full)
            m_new = torch.maximum(m, x.amax(dim=-1, keepdim=True))
            shift = _safe_max(m_new)
            l = l * torch.exp(m - shift) + x.sub_(shift).exp_().sum(dim=-1, keepdim=True)
            m = m_new
        empty = l == 0
        m_rows[:, :, i0:i1] = torch.where(empty, math.inf, m)
        log_l_rows[:, :, i0:i1] = torch.log(torch.where(empty, 1.0, l))
    return m_rows, log_l_rows


def _accumulate_bias_grad(dbias_acc: torch.Tensor, ds: torch.Tensor, i0, i1, j0, j1) -> None:
    """Add a tile's dS into the bias gradient, summing over the bias's broadcast dims."""
    dims = tuple(a for a in range(4) if dbias_acc.shape[a] == 1 and ds.shape[a] != 1)
    contrib = ds.sum(dim=dims, keepdim=True) if dims else ds
    rows = slice(None) if dbias_acc.shape[2] == 1 else slice(i0, i1)
    cols = slice(None) if dbias_acc.shape[3] == 1 else slice(j0, j1)
    dbias_acc[:, :, rows, cols] += contrib


def attention(q, k, v, bias=None, scale=None, causal=False, bottom_right=False, window_left=-1,
              window_right=-1, softcap=0.0, dropout_p=0.0, dropout_seed=None, *, block_q=None,
              block_k=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Convenience wrapper: allocate outputs like the op does and run ``forward_into``."""
    from .library import empty_forward_outputs
    from .validation import check_forward

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dims = check_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                         softcap, dropout_p, dropout_seed)
    out, lse = empty_forward_outputs(q, dims)
    forward_into(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
                 dropout_p, dropout_seed, out, lse, block_q=block_q, block_k=block_k)
    return out, lse
