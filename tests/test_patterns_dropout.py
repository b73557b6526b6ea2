"""Attention dropout becomes the op's dropout_p with a seed drawn in the graph: a new mask
every call, one mask shared by forward and backward; no dropout when not training."""
import pytest
import torch
import torch.nn.functional as F

from tests.test_patterns_harness import assert_matches_reference, compile_fn


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def qkv():
    return rnd(2, 3, 5, 8, seed=1), rnd(2, 3, 7, 8, seed=2), rnd(2, 3, 7, 8, seed=3)


def functional_dropout(training):
    def fn(q, k, v):
        p = F.dropout((q @ k.mT * 0.3).softmax(-1), 0.5, training)
        return p @ v
    return fn


def sdpa_dropout(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)


@pytest.mark.parametrize("fn", [functional_dropout(True), sdpa_dropout],
                         ids=["F.dropout", "sdpa"])
def test_dropout_mask_is_fresh_per_call_and_shared_with_backward(fn):
    compiled, cap = compile_fn(fn)
    q, k, v = (x.float().requires_grad_() for x in qkv())
    out1 = compiled(q, k, v)
    out2 = compiled(q, k, v)
    [site] = cap.sites
    assert site.rewritten and site.variant.dropout_p == 0.5, site
    assert "torch.randint" in cap.graphs[0]
    assert not torch.equal(out1, out2), "the same dropout mask twice"
    # out is linear in v (out = M v with M the dropped probabilities), so
    # <out, g> == <v, dL/dv> holds only if the backward used the forward's mask.
    g = torch.randn_like(out1)
    (grad_v,) = torch.autograd.grad(out1, v, g)
    torch.testing.assert_close((out1 * g).sum(), (v * grad_v).sum(), atol=1e-4, rtol=1e-5)
    # Dropped entries are zero and kept ones scaled by 2: E[out] is the dropout-free output,
    # with per-sample variance sum_j p_ij^2 v_jd^2 (p = 0.5): allow 6 standard errors.
    n = 400
    torch.manual_seed(0)
    with torch.no_grad():
        mean = torch.stack([compiled(q, k, v) for _ in range(n)]).mean(0)
        scale = 0.3 if fn is not sdpa_dropout else 8 ** -0.5
        probs = (q @ k.mT * scale).softmax(-1)
        exact = probs @ v
        stderr = ((probs ** 2) @ (v ** 2)).sqrt() / n ** 0.5
    assert bool(((mean - exact).abs() <= 6 * stderr + 1e-6).all())
    assert not bool(((mean / 2 - exact).abs() <= 6 * stderr).all())  # the 1/(1-p) is there


def test_dropout_when_not_training_is_dropped():
    fn = functional_dropout(False)
    compiled, cap = compile_fn(fn)
    assert_matches_reference(compiled, fn, qkv())
    [site] = cap.sites
    assert site.rewritten and site.variant.dropout_p == 0.0
    assert "randint" not in cap.graphs[0] and "dropout" not in cap.graphs[0]
