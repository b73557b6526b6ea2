"""Dropout of the fa ops: the documented counter hash, and forward/backward sharing one mask."""

from __future__ import annotations

import math

import pytest
import torch

import fa_inductor.ops  # noqa: F401  (registers torch.ops.fa)
from fa_inductor.ops import dropout as fa_dropout
from tests.test_ops_naive import naive_attention, rand_qkv

M32 = 0xFFFFFFFF


def fmix_spec(x: int) -> int:
    """The finaliser exactly as dropout.py's docstring writes it, in Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def keep_spec(seed: int, heads_q: int, b: int, h: int, i: int, j: int, p: float) -> bool:
    lo, hi = seed & M32, (seed >> 32) & M32
    s = fmix_spec(lo ^ fmix_spec(hi ^ 0x9E3779B9))
    row = fmix_spec(fmix_spec(s ^ (b * heads_q + h)) ^ fmix_spec(i))
    return fmix_spec(row ^ fmix_spec(j)) >= math.floor(p * 2**32)


@pytest.mark.parametrize("seed", [0, 1, 123456789, -5, 2**62 + 17, -(2**63)])
def test_mask_is_the_documented_hash(seed):
    shape = (2, 3, 5, 7)
    mask = fa_dropout.keep_mask_full(torch.tensor([seed]), shape, 0.3)
    want = torch.tensor([[[[keep_spec(seed, 3, b, h, i, j, 0.3) for j in range(7)]
                           for i in range(5)] for h in range(3)] for b in range(2)])
    assert torch.equal(mask, want)


def test_keep_rate_is_one_minus_p():
    n = 4 * 8 * 64 * 64
    for p in (0.1, 0.5, 0.9):
        kept = fa_dropout.keep_mask_full(torch.tensor([99]), (4, 8, 64, 64), p).sum().item()
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(kept - n * (1 - p)) < 6 * sigma, (p, kept)


def test_mask_rows_and_heads_are_not_copies():
    mask = fa_dropout.keep_mask_full(torch.tensor([7]), (2, 2, 16, 64), 0.5)
    flat = mask.reshape(-1, 64)
    assert torch.unique(flat, dim=0).shape[0] == flat.shape[0]


def call(q, k, v, seed, p=0.3, bias=None, **kw):
    args = dict(scale=0.4, causal=False, bottom_right=False, window_left=-1, window_right=-1,
                softcap=0.0)
    args.update(kw)
    seed_t = None if seed is None else torch.tensor([seed], dtype=torch.int64)
    return torch.ops.fa.attention_forward(q, k, v, bias, *args.values(), p, seed_t)


def test_same_seed_same_result_and_different_seed_different_result():
    q, k, v = rand_qkv()
    a, lse_a = call(q, k, v, 11)
    b, lse_b = call(q, k, v, 11)
    c, lse_c = call(q, k, v, 12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # The normaliser is that of the undropped softmax: lse does not depend on the mask.
    torch.testing.assert_close(lse_a, lse_c)


def test_forward_matches_oracle_with_the_same_mask():
    q, k, v = rand_qkv(hq=4, hkv=1)
    out, lse = call(q, k, v, 2024, p=0.4, causal=True, bottom_right=True, softcap=2.0)
    want, want_lse = naive_attention(q, k, v, scale=0.4, causal=True, bottom_right=True,
                                     softcap=2.0, dropout_p=0.4,
                                     dropout_seed=torch.tensor([2024]))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)


def test_dropout_preserves_the_mean():
    q, k, v = rand_qkv(b=1, hq=1, hkv=1, sq=3, sk=64, d=8)
    plain, _ = call(q, k, v, None, p=0.0)
    # 400 query heads with identical q over one shared KV head: 400 independent masks at once.
    dropped, _ = call(q.expand(1, 400, 3, 8), k, v, 3, p=0.5)
    std_err = dropped.std(1, keepdim=True) / math.sqrt(400)
    assert (std_err > 1e-3).all()  # the masks really differ between heads
    assert ((dropped.mean(1, keepdim=True) - plain).abs() < 5 * std_err).all()


def test_gradients_are_those_of_the_dropped_forward():
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=6, d=3, dtype=torch.float64,
                       requires_grad=True)
    bias = torch.randn(1, 2, 1, 6, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([31], dtype=torch.int64)

    def f(q, k, v, bias):
        return torch.ops.fa.attention_forward(q, k, v, bias, 0.7, True, True, -1, -1, 0.0, 0.5,
                                              seed)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


def test_mask_does_not_depend_on_tiling():
    from fa_inductor.ops import reference

    q, k, v = rand_qkv(b=1, hq=2, hkv=2, sq=19, sk=23, d=8)
    seed = torch.tensor([5])
    a, _ = reference.attention(q, k, v, dropout_p=0.3, dropout_seed=seed, block_q=4, block_k=5)
    b, _ = reference.attention(q, k, v, dropout_p=0.3, dropout_seed=seed, block_q=64, block_k=64)
    torch.testing.assert_close(a, b)
