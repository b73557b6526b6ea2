"""Sites the pass must leave alone: the graph keeps computing what eager computes and the
report says why in a short readable reason."""
import pytest
import torch
import torch.nn.functional as F

from tests.test_patterns_harness import assert_matches_reference, compile_fn


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def qkv(d=8, dv=None):
    return rnd(2, 3, 5, d, seed=1), rnd(2, 3, 7, d, seed=2), rnd(2, 3, 7, dv or d, seed=3)


def returns_probabilities(q, k, v):
    p = (q @ k.mT * 0.3).softmax(-1)
    return p @ v, p


def scores_used_twice(q, k, v):
    s = q @ k.mT * 0.3
    return s.softmax(-1) @ v, s.sum()


def plain(q, k, v):
    return (q @ k.mT * 0.3).softmax(-1) @ v


def classifier(x, w):
    return F.softmax(F.linear(x, w), dim=-1)


def softmax_over_queries(q, k, v):
    s = q @ k.mT * 0.3
    return s.softmax(-2).mT @ q


def mask_before_softcap(q, k, v, pad):
    s = (q @ k.mT).masked_fill(pad, float("-inf"))
    s = torch.tanh(s / 5.0) * 5.0
    return s.softmax(-1) @ v


def finite_fill(q, k, v, pad):
    s = (q @ k.mT).masked_fill(pad, -5.0)
    return s.softmax(-1) @ v


CASES = {
    "returns_probabilities": (returns_probabilities, qkv(),
                              "attention probabilities have other users"),
    "scores_used_twice": (scores_used_twice, qkv(), "attention scores have other users"),
    "head_dim_320": (plain, qkv(d=320), "head dim 320 > 256"),
    "head_dims_differ": (plain, qkv(d=8, dv=16), "head dims differ: q/k 8, v 16"),
    "classifier": (classifier, (rnd(4, 16), rnd(10, 16)), "not attention: scores come from "
                                                          "linear"),
    "softmax_over_queries": (softmax_over_queries, qkv(), "softmax not over the last dim"),
    "mask_before_softcap": (mask_before_softcap, qkv() + (rnd(2, 1, 1, 7) > 1.0,),
                            "mask applied before the softcap"),
    "finite_fill": (finite_fill, qkv() + (rnd(2, 1, 1, 7) > 1.0,),
                    "masked_fill with a finite value"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_site_left_alone_with_reason(name):
    fn, inputs, reason = CASES[name]
    compiled, cap = compile_fn(fn)
    assert_matches_reference(compiled, fn, inputs, train=True)
    assert len(cap.graphs) == 1
    [site] = cap.sites
    assert not site.rewritten
    assert site.reason == reason
    assert "fa.attention_forward" not in cap.graphs[0]
    assert site.source.startswith("test_patterns_rejects.py:")


def test_attention_next_to_classifier_softmax():
    def both(q, k, v, x, w):
        return plain(q, k, v), classifier(x, w)

    compiled, cap = compile_fn(both)
    assert_matches_reference(compiled, both, qkv() + (rnd(4, 16), rnd(10, 16)))
    rewritten = [s.rewritten for s in cap.sites]
    assert rewritten == [True, False]
    assert cap.graphs[0].count("fa.attention_forward") == 1
