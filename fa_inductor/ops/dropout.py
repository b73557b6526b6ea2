"""The dropout mask of the fa ops: a counter-based hash, so forward and backward (and any kernel)
regenerate the same mask from (seed, b, h, i, j) without storing it.

Definition (all arithmetic on unsigned 32-bit words, wrapping):

    fmix(x):  x ^= x >> 16;  x *= 0x7FEB352D;  x ^= x >> 15;  x *= 0x846CA68B;  x ^= x >> 16
    lo, hi  = low and high 32 bits of the int64 seed (two's complement)
    s       = fmix(lo ^ fmix(hi ^ 0x9E3779B9))
    row     = fmix(fmix(s ^ (b * Hq + h)) ^ fmix(i))
    word    = fmix(row ^ fmix(j))
    keep    = word >= floor(dropout_p * 2**32)

b, h, i, j are absolute indices (h a query head, i a query row, j a key column), so the mask
does not depend on tiling.  P(keep) = 1 - dropout_p up to 2**-32.  A CUDA kernel implements
it with plain uint32 multiplies; here it runs in int64 torch ops, with each 32x32-bit multiply
split into 16-bit halves so no intermediate overflows int64 (on any device).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def fmix(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit finaliser above, on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_word(seed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """s of the definition, as a 0-dim int64 tensor (no host sync)."""
    seed = seed.reshape(()).to(device=device, dtype=torch.int64)
    lo = seed & _MASK32
    hi = (seed >> 32) & _MASK32
    return fmix(lo ^ fmix(hi ^ _GOLDEN))


def threshold(dropout_p: float) -> int:
    return min(int(dropout_p * 2**32), 2**32)


def keep_mask(s: torch.Tensor, heads_q: int, b: torch.Tensor, h: torch.Tensor,
              i: torch.Tensor, j: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Bool keep-mask broadcast from index tensors b [B,1,1,1], h [1,H,1,1], i [1,1,I,1],
    j [1,1,1,J] (int64); s from ``seed_word``."""
    row = fmix(fmix(s ^ (b * heads_q + h)) ^ fmix(i))
    return fmix(row ^ fmix(j)) >= threshold(dropout_p)


def keep_mask_full(seed: torch.Tensor, shape: tuple[int, int, int, int], dropout_p: float,
                   device: torch.device | None = None) -> torch.Tensor:
    """The whole [B, Hq, Sq, Sk] mask (for tests and small problems)."""
    device = device or seed.device
    b, h, sq, sk = shape
    idx = [torch.arange(n, device=device, dtype=torch.int64) for n in shape]
    return keep_mask(seed_word(seed, device), h, idx[0].view(-1, 1, 1, 1),
                     idx[1].view(1, -1, 1, 1), idx[2].view(1, 1, -1, 1),
                     idx[3].view(1, 1, 1, -1), dropout_p)
