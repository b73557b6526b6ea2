"""The float64 oracle the fa ops are tested against, and checks of the oracle itself.

``naive_attention`` is the contract of ``fa_inductor.ops`` written as directly as possible: a
full score matrix, explicit masks, repeated K/V heads.  It is differentiable (autograd gives
the reference gradients) and only ever used on small problems.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fa_inductor.ops import dropout as fa_dropout


def naive_attention(q, k, v, bias=None, scale=None, causal=False, bottom_right=False,
                    window_left=-1, window_right=-1, softcap=0.0, dropout_p=0.0,
                    dropout_seed=None):
    """(out, lse) in float64 for inputs of any dtype, per the op contract."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    x = scale * (q @ k.transpose(-1, -2))
    if softcap > 0:
        x = softcap * torch.tanh(x / softcap)
    if bias is not None:
        x = x.masked_fill(~bias, -math.inf) if bias.dtype == torch.bool else x + bias.double()
    off = (sk - sq) if bottom_right else 0
    i = torch.arange(sq).view(-1, 1)
    j = torch.arange(sk).view(1, -1)
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed &= j <= i + off
    if window_left >= 0:
        allowed &= j >= i + off - window_left
    if window_right >= 0:
        allowed &= j <= i + off + window_right
    x = x.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(x, dim=-1)
    has_key = torch.isfinite(lse).unsqueeze(-1)
    # exp(x - lse) is nan on a row without keys (-inf - -inf); the contract says p = 0 there.
    p = torch.where(has_key, torch.exp(x - torch.where(has_key, lse.unsqueeze(-1), 0.0)), 0.0)
    if dropout_p > 0:
        keep = fa_dropout.keep_mask_full(dropout_seed, (b, hq, sq, sk), dropout_p)
        p = p * keep / (1 - dropout_p)
    return p @ v, lse


def rand_qkv(b=2, hq=4, hkv=2, sq=37, sk=29, d=16, dv=None, dtype=torch.float32,
             requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(
            requires_grad)

    return r(b, hq, sq, d), r(b, hkv, sk, d), r(b, hkv, sk, dv)


# ----------------------------------------------------------------------------- oracle checks


def test_naive_matches_torch_sdpa_plain_and_causal():
    q, k, v = rand_qkv(hkv=4, sq=23, sk=23, dtype=torch.float64)
    for causal in (False, True):
        out, _ = naive_attention(q, k, v, causal=causal)
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(out, want)


def test_naive_matches_torch_sdpa_with_float_mask_gqa_and_scale():
    q, k, v = rand_qkv(hq=6, hkv=2, dtype=torch.float64)
    mask = torch.randn(2, 1, q.shape[2], k.shape[2], dtype=torch.float64)
    out, _ = naive_attention(q, k, v, bias=mask, scale=0.37)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.37, enable_gqa=True)
    torch.testing.assert_close(out, want)


def test_naive_lse_is_logsumexp_of_scores():
    q, k, v = rand_qkv(hkv=4, dtype=torch.float64)
    _, lse = naive_attention(q, k, v, scale=0.5)
    torch.testing.assert_close(lse, torch.logsumexp(0.5 * q @ k.transpose(-1, -2), dim=-1))


@pytest.mark.parametrize("bottom_right", [False, True])
def test_naive_causal_alignment(bottom_right):
    # Sq=2, Sk=4: top-left lets row 0 see key 0 only; bottom-right lets it see keys 0..2.
    q, k, v = rand_qkv(b=1, hq=1, hkv=1, sq=2, sk=4, dtype=torch.float64)
    out, _ = naive_attention(q, k, v, causal=True, bottom_right=bottom_right)
    n = 3 if bottom_right else 1
    want = F.scaled_dot_product_attention(q[:, :, :1], k[:, :, :n], v[:, :, :n])
    torch.testing.assert_close(out[:, :, :1], want)
