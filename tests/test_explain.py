"""`fa_inductor.explain`: what was rewritten, and why the rest was not."""
import pytest
import torch

import fa_inductor
from tests._attention_zoo import attention, attention_with_classifier, qkv


def test_reports_a_rewritten_site_with_its_variant():
    torch._dynamo.reset()
    report = fa_inductor.explain(attention, *qkv(d=16))
    assert len(report.matched) == 1 and not report.unmatched
    site = report.matched[0]
    assert "_attention_zoo.py" in site.source
    assert site.variant.scale == pytest.approx(16 ** -0.5)
    assert site.variant.mask == "none" and site.variant.gqa_ratio == 1
    assert site.variant.head_dim == 16 and "float32" in str(site.variant.dtype)
    assert site.variant.kernel == "reference"  # CPU
    assert report.graphs == 1 and report.graph_breaks == 0


def test_reports_why_a_softmax_was_left_alone():
    torch._dynamo.reset()
    q, k, v = qkv()
    report = fa_inductor.explain(attention_with_classifier, q, k, v, torch.randn(4, 10))
    assert len(report.matched) == 1
    assert len(report.unmatched) == 1 and report.unmatched[0].reason
    text = str(report)
    assert "Rewritten:" in text and "Not rewritten:" in text
    assert report.unmatched[0].reason in text


def test_counts_graph_breaks():
    torch._dynamo.reset()

    def two_graphs(q, k, v):
        a = attention(q, k, v)
        torch._dynamo.graph_break()
        return attention(a, k, v)

    report = fa_inductor.explain(two_graphs, *qkv())
    assert report.graph_breaks >= 1 and report.graphs == 2
    assert len(report.matched) == 2
    assert {s.graph_index for s in report.matched} == {0, 1}


def test_rejects_a_non_callable():
    with pytest.raises(TypeError):
        fa_inductor.explain("model")
