"""Each spelling of attention is found and rewritten to fa::attention_forward, computing what
eager computes (outputs and gradients) in training and inference, fp32 and bf16."""
import math

import expecttest
import pytest
import torch
import torch.nn.functional as F

from tests.test_patterns_harness import assert_matches_reference, compile_fn


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def qkv(b=2, hq=3, hk=None, sq=5, sk=7, d=8, seed=0):
    hk = hq if hk is None else hk
    return rnd(b, hq, sq, d, seed=seed), rnd(b, hk, sk, d, seed=seed + 1), \
        rnd(b, hk, sk, d, seed=seed + 2)


def transpose_div(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return F.softmax(s, dim=-1) @ v


def torch_transpose_scaled_q(q, k, v):
    s = torch.matmul(q * 0.25, torch.transpose(k, 2, 3))
    return torch.softmax(s, -1) @ v


def mT_scaled_k(q, k, v):
    return (q @ (k * 0.5).mT).softmax(-1).matmul(v)


def gpt2_permuted_keys(q, k_bshd, v):
    # GPT-2 style: keys handed over already as [B, H, D, S] by permute(0, 2, 3, 1)
    w = torch.matmul(q, k_bshd.permute(0, 2, 3, 1))
    w = w / float(v.size(-1)) ** 0.5
    return torch.matmul(torch.nn.functional.softmax(w, dim=-1), v)


def einsum_bshd(q_bshd, k_bshd, v_bshd):
    s = torch.einsum("bqhd,bkhd->bhqk", q_bshd, k_bshd) * q_bshd.shape[-1] ** -0.5
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(dim=-1), v_bshd)


def bmm_3d(q, k, v):
    s = torch.bmm(q, k.transpose(1, 2)) * 0.3
    return torch.bmm(s.softmax(-1), v)


def rank_2(q, k, v):
    return (q @ k.T * 0.4).softmax(-1) @ v


def baddbmm_alibi(q, k, v, alibi):
    s = torch.baddbmm(alibi, q, k.transpose(1, 2), beta=0.5, alpha=0.2)
    return torch.bmm(F.softmax(s, dim=-1), v)


def fp32_softmax_round_trip(q, k, v):
    s = torch.matmul(q, k.transpose(2, 3)) * 0.3
    p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(p, v)


def float_then_type_as(q, k, v):
    s = (q @ k.transpose(-1, -2)).float() / 3.0
    return s.softmax(-1).type_as(q) @ v


def additive_bias_scale_after(q, k, v, bias):
    # (qk + b) * s: the bias is scaled too
    return (((q @ k.mT) + bias) * 0.3).softmax(-1) @ v


def mask_and_bias(q, k, v, bias, pad):
    s = q @ k.mT * 0.3 + bias
    s = s.masked_fill(pad, float("-inf"))
    return s.softmax(-1) @ v


def finfo_min_fill(q, k, v, pad):
    s = (q @ k.mT) * 0.3
    s = s.masked_fill(~pad, torch.finfo(s.dtype).min)
    return s.softmax(-1) @ v


def where_keep(q, k, v, keep):
    s = torch.where(keep, q @ k.mT, float("-inf"))
    return s.softmax(-1) @ v


def softcap_then_mask(q, k, v, bias):
    w = torch.matmul(q, k.transpose(2, 3)) * 0.3
    w = w / 5.0
    w = torch.tanh(w)
    w = w * 5.0
    w = w + bias
    return torch.matmul(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), v)


def runtime_scale(q, k, v, temperature):
    return ((q @ k.mT) * temperature).softmax(-1) @ v


def repeat_kv(x, n):
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def gqa_repeat_kv(q, k, v):
    n = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n), repeat_kv(v, n)
    return F.softmax(q @ k.transpose(2, 3) * 0.3, dim=-1) @ v


def gqa_repeat_interleave(q, k, v):
    k = k.repeat_interleave(2, dim=1)
    v = torch.repeat_interleave(v, 2, dim=1)
    return F.softmax(q @ k.transpose(2, 3) * 0.3, dim=-1) @ v


def mqa_broadcast(q, k, v):
    return F.softmax(q @ k.transpose(2, 3) * 0.3, dim=-1) @ v


def sdpa_plain(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_causal_scaled(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2)


def sdpa_float_mask(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def sdpa_gqa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, scale=0.3)


# name -> (fn, inputs)
CASES = {
    "transpose_div": (transpose_div, qkv()),
    "torch_transpose_scaled_q": (torch_transpose_scaled_q, qkv()),
    "mT_scaled_k": (mT_scaled_k, qkv()),
    "gpt2_permuted_keys": (gpt2_permuted_keys, (rnd(2, 3, 5, 8), rnd(2, 7, 3, 8),
                                                rnd(2, 3, 7, 8))),
    "einsum_bshd": (einsum_bshd, (rnd(2, 5, 3, 8), rnd(2, 7, 3, 8), rnd(2, 7, 3, 8))),
    "bmm_3d": (bmm_3d, (rnd(6, 5, 8), rnd(6, 7, 8), rnd(6, 7, 8))),
    "rank_2": (rank_2, (rnd(5, 8), rnd(7, 8), rnd(7, 8))),
    "baddbmm_alibi": (baddbmm_alibi, (rnd(6, 5, 8), rnd(6, 7, 8), rnd(6, 7, 8),
                                      rnd(6, 1, 7))),
    "fp32_softmax_round_trip": (fp32_softmax_round_trip, qkv()),
    "float_then_type_as": (float_then_type_as, qkv()),
    "additive_bias_scale_after": (additive_bias_scale_after, qkv() + (rnd(1, 3, 5, 7),)),
    "mask_and_bias": (mask_and_bias, qkv() + (rnd(2, 1, 5, 7),
                                              rnd(2, 1, 1, 7) > 0.8)),
    "finfo_min_fill": (finfo_min_fill, qkv() + (rnd(2, 1, 5, 7) > -0.8,)),
    "where_keep": (where_keep, qkv() + (rnd(5, 7) > -0.8,)),
    "softcap_then_mask": (softcap_then_mask, qkv() + (rnd(1, 1, 5, 7),)),
    "runtime_scale": (runtime_scale, qkv() + (torch.tensor(0.37, dtype=torch.float64),)),
    "gqa_repeat_kv": (gqa_repeat_kv, qkv(hq=4, hk=2)),
    "gqa_repeat_interleave": (gqa_repeat_interleave, qkv(hq=4, hk=2)),
    "mqa_broadcast": (mqa_broadcast, qkv(hq=4, hk=1)),
    "sdpa_plain": (sdpa_plain, qkv()),
    "sdpa_causal_scaled": (sdpa_causal_scaled, qkv(sk=5)),
    "sdpa_float_mask": (sdpa_float_mask, qkv() + (rnd(2, 3, 5, 7),)),
    "sdpa_gqa": (sdpa_gqa, qkv(hq=6, hk=2)),
}


def bloom_views(q, k, v, alibi, mask):
    # BLOOM: scores on [B*H] rows, viewed as [B, H] for the mask and softmax, and back
    b, h = mask.shape[0], q.shape[0] // mask.shape[0]
    s = alibi.baddbmm(batch1=q, batch2=k.transpose(-1, -2), beta=1.0, alpha=0.25)
    w = s.view(b, h, q.shape[1], -1) + mask
    p = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    p = F.dropout(p, 0.0, False, False)
    return torch.bmm(p.view(b * h, q.shape[1], -1), v).view(b, h, q.shape[1], -1)


def falcon_inplace_div(q, k, v, mask):
    scores = q @ k.transpose(-1, -2)
    scores /= 4.0
    return F.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype) @ v


CASES.update({
    "bloom_views": (bloom_views, (rnd(6, 5, 8), rnd(6, 7, 8), rnd(6, 7, 8), rnd(6, 1, 7),
                                  rnd(2, 1, 5, 7))),
    "falcon_inplace_div": (falcon_inplace_div, qkv(hq=4, hk=1) + (rnd(2, 1, 5, 7),)),
})


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_spelling_is_rewritten_and_matches_eager(name, dtype, train):
    fn, inputs = CASES[name]
    compiled, cap = compile_fn(fn)
    if train:
        assert_matches_reference(compiled, fn, inputs, dtype=dtype, train=True)
    else:
        with torch.no_grad():
            assert_matches_reference(compiled, fn, inputs, dtype=dtype, train=False)
    assert len(cap.graphs) == 1, "graph break or recompilation"
    [site] = cap.sites
    assert site.rewritten, site.reason
    assert "fa.attention_forward" in cap.graphs[0]
    assert "softmax" not in cap.graphs[0]


@pytest.mark.parametrize("name", ["transpose_div", "einsum_bshd", "gqa_repeat_kv",
                                  "mask_and_bias", "bmm_3d", "sdpa_causal_scaled",
                                  "bloom_views", "falcon_inplace_div", "runtime_scale"])
def test_dynamic_shapes_compile_once(name):
    fn, inputs = CASES[name]
    compiled, cap = compile_fn(fn, dynamic=True)
    for extra in (0, 3, 10):
        grown = []
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.dim() >= 2:
                # grow every dim equal to the key length (7) or the query length (5)
                shape = [s + extra if s in (5, 7) else s for s in x.shape]
                if x.dtype == torch.bool:
                    # keep the density (sparse masked-out sets, dense keep-masks): no row of
                    # the scores may end up fully masked (NaN in eager, 0 in the op)
                    y = rnd(*shape) > (0.8 if x.float().mean() < 0.5 else -0.8)
                else:
                    y = rnd(*shape, seed=extra)
                grown.append(y)
            else:
                grown.append(x)
        assert_matches_reference(compiled, fn, grown, train=True)
    assert len(cap.graphs) == 1, "recompiled for a new sequence length"
    assert all(s.rewritten for s in cap.sites), [s.reason for s in cap.sites]


class TestRewrittenGraphs(expecttest.TestCase):
    def graph_of(self, name, dynamic=False):
        fn, inputs = CASES[name]
        compiled, cap = compile_fn(fn, dynamic=dynamic)
        with torch.no_grad():
            compiled(*[x.float() if x.is_floating_point() else x for x in inputs])
        return cap.graphs[0]

    def test_transpose_div(self):
        self.assertExpectedInline(self.graph_of("transpose_div"), """\
fa.attention_forward(l_q_, l_k_, l_v_, None, 0.353553, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_gpt2_permuted_keys(self):
        self.assertExpectedInline(self.graph_of("gpt2_permuted_keys"), """\
.permute(l_k_bshd_, 0, 2, 1, 3)
fa.attention_forward(l_q_, permute_1, l_v_, None, 0.353553, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_einsum_bshd(self):
        self.assertExpectedInline(self.graph_of("einsum_bshd"), """\
.permute(l_q_bshd_, 0, 2, 1, 3)
.permute(l_k_bshd_, 0, 2, 1, 3)
.permute(l_v_bshd_, 0, 2, 1, 3)
fa.attention_forward(permute, permute_1, permute_2, None, 0.353553, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)
.permute(getitem, 0, 2, 1, 3)""")

    def test_bmm_3d(self):
        self.assertExpectedInline(self.graph_of("bmm_3d"), """\
.unsqueeze(l_q_, 0)
.unsqueeze(l_k_, 0)
.unsqueeze(l_v_, 0)
fa.attention_forward(unsqueeze, unsqueeze_1, unsqueeze_2, None, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)
operator.getitem(getitem, 0)""")

    def test_rank_2(self):
        self.assertExpectedInline(self.graph_of("rank_2"), """\
.unsqueeze(l_q_, 0)
.unsqueeze(unsqueeze, 0)
.unsqueeze(l_k_, 0)
.unsqueeze(unsqueeze_2, 0)
.unsqueeze(l_v_, 0)
.unsqueeze(unsqueeze_4, 0)
fa.attention_forward(unsqueeze_1, unsqueeze_3, unsqueeze_5, None, 0.4, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)
operator.getitem(getitem, (0, 0))""")

    def test_baddbmm_alibi(self):
        self.assertExpectedInline(self.graph_of("baddbmm_alibi"), """\
.unsqueeze(l_q_, 0)
.unsqueeze(l_k_, 0)
.unsqueeze(l_v_, 0)
operator.mul(l_alibi_, 0.5)
fa.attention_forward(unsqueeze, unsqueeze_1, unsqueeze_2, mul, 0.2, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)
operator.getitem(getitem, 0)""")

    def test_mask_and_bias(self):
        self.assertExpectedInline(self.graph_of("mask_and_bias"), """\
torch.logical_not(l_pad_)
torch.where(logical_not, l_bias_, -inf)
fa.attention_forward(l_q_, l_k_, l_v_, where, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_finfo_min_fill(self):
        self.assertExpectedInline(self.graph_of("finfo_min_fill"), """\
fa.attention_forward(l_q_, l_k_, l_v_, l_pad_, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_where_keep(self):
        self.assertExpectedInline(self.graph_of("where_keep"), """\
fa.attention_forward(l_q_, l_k_, l_v_, l_keep_, 1, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_softcap_then_mask(self):
        self.assertExpectedInline(self.graph_of("softcap_then_mask"), """\
fa.attention_forward(l_q_, l_k_, l_v_, l_bias_, 0.3, False, False, -1, -1, 5, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_runtime_scale(self):
        self.assertExpectedInline(self.graph_of("runtime_scale"), """\
operator.mul(l_q_, l_temperature_)
fa.attention_forward(mul_1, l_k_, l_v_, None, 1, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_gqa_repeat_kv(self):
        self.assertExpectedInline(self.graph_of("gqa_repeat_kv"), """\
fa.attention_forward(l_q_, l_k_, l_v_, None, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_gqa_repeat_interleave(self):
        self.assertExpectedInline(self.graph_of("gqa_repeat_interleave"), """\
fa.attention_forward(l_q_, l_k_, l_v_, None, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_sdpa_gqa(self):
        self.assertExpectedInline(self.graph_of("sdpa_gqa"), """\
fa.attention_forward(l_q_, l_k_, l_v_, None, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")

    def test_fp32_softmax_round_trip(self):
        self.assertExpectedInline(self.graph_of("fp32_softmax_round_trip"), """\
fa.attention_forward(l_q_, l_k_, l_v_, None, 0.3, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")


class TestMoreGraphs(expecttest.TestCase):
    def test_bloom_views(self):
        self.assertExpectedInline(TestRewrittenGraphs.graph_of(self, "bloom_views"), """\
.unflatten(l_q_, 0, (2, 3))
.unflatten(l_k_, 0, (2, 3))
.unflatten(l_v_, 0, (2, 3))
.unflatten(l_alibi_, 0, (2, 3))
operator.add(l_mask_, unflatten_3)
fa.attention_forward(unflatten, unflatten_1, unflatten_2, add_1, 0.25, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)
.flatten(getitem, 0, 1)
.view(flatten, 2, 3, 5, -1)""")

    def test_falcon_inplace_div(self):
        self.assertExpectedInline(TestRewrittenGraphs.graph_of(self, "falcon_inplace_div"),
                                  """\
fa.attention_forward(l_q_, l_k_, l_v_, l_mask_, 0.25, False, False, -1, -1, 0, 0, None)
operator.getitem(attention_forward_default, 0)""")
