"""Masks built from positions become the op's causal/window flags; anything fed by data stays a
bias (always correct).  Checked on the rewritten graph and against eager."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.test_patterns_harness import assert_matches_reference, compile_fn


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def qkv(sq, sk, b=2, h=3, d=8):
    return rnd(b, h, sq, d, seed=1), rnd(b, h, sk, d, seed=2), rnd(b, h, sk, d, seed=3)


def tril_ones_masked_fill(q, k, v):
    t = q.size(-2)
    mask = torch.tril(torch.ones(t, t, device=q.device)).view(1, 1, t, t)
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    s = s.masked_fill(mask == 0, float("-inf"))
    return F.softmax(s, dim=-1) @ v


def arange_bottom_right(q, k, v):
    sq, sk = q.size(-2), k.size(-2)
    i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=q.device)[None, :]
    s = (q @ k.mT) * 0.3
    s = s.masked_fill(j > i, torch.finfo(s.dtype).min)
    return s.softmax(-1) @ v


def arange_sliding_window(q, k, v):
    t = q.size(-2)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    keep = (j <= i) & (i - j < 3)
    s = torch.where(keep, (q @ k.mT) * 0.3, float("-inf"))
    return s.softmax(-1) @ v


def full_triu_additive(q, k, v):
    t = q.size(-2)
    causal = torch.full((t, t), float("-inf"), device=q.device).triu(1)
    return ((q @ k.mT) * 0.3 + causal).softmax(-1) @ v


def causal_and_padding(q, k, v, pad):
    t = q.size(-2)
    keep = torch.ones(t, t, dtype=torch.bool).tril() & pad
    s = (q @ k.mT * 0.3).masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


class NanoGPTAttention(nn.Module):
    """nanoGPT's manual path: the causal mask is a buffer, sliced to the sequence length."""

    def __init__(self, n_embd=24, n_head=3, block_size=16, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd = n_head, n_embd
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                             .view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


def _op_flags(graph: str) -> str:
    [line] = [ln for ln in graph.splitlines() if ln.startswith("fa.attention_forward")]
    return line


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_tril_of_ones_built_in_graph_is_causal(dynamic):
    compiled, cap = compile_fn(tril_ones_masked_fill, dynamic=dynamic)
    for t in (5, 9, 12) if dynamic else (7,):
        assert_matches_reference(compiled, tril_ones_masked_fill, qkv(t, t))
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert site.variant.mask == "causal", site
    assert ", None, " in _op_flags(cap.graphs[0])  # no bias tensor left
    assert "True, False, -1, -1" in _op_flags(cap.graphs[0])


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_arange_comparison_with_offset_is_bottom_right_causal(dynamic):
    compiled, cap = compile_fn(arange_bottom_right, dynamic=dynamic)
    for sq, sk in ((4, 9), (5, 11), (6, 13)) if dynamic else ((4, 9),):
        assert_matches_reference(compiled, arange_bottom_right, qkv(sq, sk))
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert (site.variant.mask, site.variant.alignment) == ("causal", "bottom-right"), site
    assert "True, True, -1, -1" in _op_flags(cap.graphs[0])


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_arange_window_is_sliding_window(dynamic):
    compiled, cap = compile_fn(arange_sliding_window, dynamic=dynamic)
    for t in (6, 11) if dynamic else (6,):
        assert_matches_reference(compiled, arange_sliding_window, qkv(t, t))
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert site.variant.mask == "window", site
    # keeps j in [i - 2, i]
    assert "True, False, 2, -1" in _op_flags(cap.graphs[0])


def test_additive_triu_of_minus_inf_is_causal():
    compiled, cap = compile_fn(full_triu_additive)
    assert_matches_reference(compiled, full_triu_additive, qkv(7, 7))
    [site] = cap.sites
    assert site.variant.mask == "causal", site
    assert ", None, " in _op_flags(cap.graphs[0])


def hf_style_float_mask(q, k, v, pad):
    # transformers' masking_utils: a bool mask from positions & padding, then
    # where(mask, 0, finfo.min) added to the scores
    t = q.size(-2)
    i = torch.arange(t)[None, None, :, None]
    j = torch.arange(t)[None, None, None, :]
    keep = q.new_ones((), dtype=torch.bool) & (j <= i) & pad[:, None, None, :]
    bias = torch.where(keep.expand(q.size(0), -1, t, t), torch.zeros(()),
                       torch.finfo(torch.float32).min)
    return F.softmax(q @ k.mT * 0.3 + bias, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def test_positional_part_of_a_bool_mask_becomes_causal():
    # keep = causal & padding: causal flag plus the padding part as a bool bias
    pad = rnd(2, 1, 1, 6) > -0.5
    pad[..., 0] = True  # every row keeps its first key (no fully masked row)
    compiled, cap = compile_fn(causal_and_padding)
    assert_matches_reference(compiled, causal_and_padding, qkv(6, 6) + (pad,))
    [site] = cap.sites
    assert site.rewritten and site.variant.mask == "causal+bool", site
    assert "True, False, -1, -1" in _op_flags(cap.graphs[0])


def test_hf_float_mask_mixing_positions_and_padding_stays_one_bias():
    # With left padding a row can be fully masked: eager then averages all values uniformly
    # (finfo.min everywhere), which only the unsplit float bias reproduces.
    pad = rnd(2, 6) > -0.5
    pad[0, :2] = False  # left padding: rows 0 and 1 of batch 0 see no key
    compiled, cap = compile_fn(hf_style_float_mask)
    assert_matches_reference(compiled, hf_style_float_mask, qkv(6, 6) + (pad,), train=True)
    [site] = cap.sites
    assert site.rewritten and site.variant.mask == "additive", site


def test_data_only_float_mask_stays_additive():
    # a padding-only float mask keeps its exact eager meaning (also for fully masked rows)
    def fn(q, k, v, pad):
        bias = torch.where(pad[:, None, None, :], torch.zeros(()), torch.finfo(torch.float32).min)
        return (q @ k.mT * 0.3 + bias).softmax(-1) @ v

    pad = rnd(2, 6) > -0.5
    pad[1] = False  # batch 1: every key padded: eager averages all values uniformly
    compiled, cap = compile_fn(fn)
    assert_matches_reference(compiled, fn, qkv(6, 6) + (pad,), train=True)
    [site] = cap.sites
    assert site.rewritten and site.variant.mask == "additive", site


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_nanogpt_buffer_mask_stays_a_bias(train):
    # The buffer's values are data (they could change between calls): a bool bias, not causal.
    torch.manual_seed(0)
    model = NanoGPTAttention().train(train)
    reference = copy.deepcopy(model).double()
    compiled, cap = compile_fn(model, dynamic=True)
    for t in (5, 9, 13):
        x = rnd(2, t, 24, seed=t)
        got = compiled(x.float())
        torch.testing.assert_close(got, reference(x).float(), atol=2e-5, rtol=1e-4)
        if train:
            got.sum().backward()
            reference(x).sum().backward()
            for (name, p), pr in zip(model.named_parameters(), reference.parameters()):
                torch.testing.assert_close(p.grad, pr.grad.float(), atol=1e-4, rtol=1e-4,
                                           msg=name)
                p.grad = pr.grad = None
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert site.rewritten and site.variant.mask == "bool", site


def sdpa_tril_mask(q, k, v):
    sq, sk = q.size(-2), k.size(-2)
    keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_sdpa_bool_mask_from_positions_is_bottom_right_causal(dynamic):
    compiled, cap = compile_fn(sdpa_tril_mask, dynamic=dynamic)
    for sq, sk in ((4, 9), (5, 11)) if dynamic else ((4, 9),):
        assert_matches_reference(compiled, sdpa_tril_mask, qkv(sq, sk))
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert (site.variant.mask, site.variant.alignment) == ("causal", "bottom-right"), site
    assert ", None, " in _op_flags(cap.graphs[0])


def _band_rules_by_grid(keep, sq, sk):
    """The rules of a keep mask by definition: every band [lo, hi] of d = j - (i + off) that
    equals the mask on the whole grid (the slow form of masks._rules, as the spec)."""
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    out = set()
    for bottom_right in (False, True):
        d = j - (i + ((sk - sq) if bottom_right else 0))
        if not bool(keep.any()):
            return set()
        lo, hi = int(d[keep].min()), int(d[keep].max())
        if not bool((keep == ((d >= lo) & (d <= hi))).all()):
            continue
        wl = -1 if lo == int(d.min()) else -lo
        wr = -1 if hi == int(d.max()) else hi
        if (wl != -1 and lo > 0) or (wr != -1 and hi < 0):
            continue
        out.add((bottom_right, wl, wr))
    return out


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 9), (9, 1), (7, 7), (5, 12), (12, 5), (16, 16)])
def test_rules_from_row_ends_agree_with_the_grid_definition(sq, sk):
    from fa_inductor.patterns import masks

    g = torch.Generator().manual_seed(sq * 100 + sk)
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    cases = [torch.ones(sq, sk, dtype=torch.bool), torch.zeros(sq, sk, dtype=torch.bool)]
    for off in (0, sk - sq):
        d = j - (i + off)
        for lo in range(-sq - 1, 3):
            for hi in range(-2, sk + 1):
                cases.append((d >= lo) & (d <= hi))
    for _ in range(20):  # noise, and bands with a hole or an extra key
        cases.append(torch.rand(sq, sk, generator=g) < 0.5)
        band = (j <= i).clone()
        r, c = int(torch.randint(sq, (1,), generator=g)), int(torch.randint(sk, (1,), generator=g))
        band[r, c] = ~band[r, c]
        cases.append(band)
    for keep in cases:
        assert masks._rules(keep, sq, sk) == _band_rules_by_grid(keep, sq, sk), keep.int()
        assert masks._rules(keep.expand(2, 3, sq, sk), sq, sk) == _band_rules_by_grid(keep, sq, sk)


def test_causal_mask_of_a_long_sequence_is_still_classified():
    # 12k x 12k: above the 2**27 elements the classification once stopped at (16k training
    # runs of HF models kept their causal mask as a bias and left the compiled kernels).
    t = 12288
    compiled, cap = compile_fn(tril_ones_masked_fill)
    q, k, v = (torch.randn(1, 1, t, 8) for _ in range(3))
    compiled(q, k, v)
    [site] = cap.sites
    assert site.variant.mask == "causal", site
    assert ", None, " in _op_flags(cap.graphs[0])  # no bias tensor left
