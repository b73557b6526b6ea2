"""Under ``dynamic=True`` the graph sees symbolic sequence lengths: the rewrite (mask classification
included) must hold for every length, so a compiled graph serves further lengths with eager's
numbers and without recompiling.

(Dynamo compiles these HF models twice on the way, whatever the backend: a guard of the first
graph fails on the second length ("'NoneType' object has no attribute 'size'"), and AOTAutograd
calls the backend twice for the first frame.  So the test asks that a third length compiles nothing.)"""
from __future__ import annotations

import pytest
import torch

import zoo


def _with_seq(case: zoo.ZooCase, seq: int) -> tuple:
    """The case's inputs cut to ``seq`` positions (token ids and padding masks alike)."""
    return tuple(t[:, :seq].contiguous() for t in case.inputs)


@pytest.mark.parametrize("name", ["llama", "mistral", "bert"])
def test_dynamic_graph_serves_other_lengths(name):
    from fa_inductor.backend import collect_reports

    case = zoo.build(name)
    model = case.model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="flash", options={"flash.compiler": "aot_eager"},
                             fullgraph=True, dynamic=True)
    reports: list = []
    with torch.no_grad(), collect_reports(reports.append):
        for seq in (zoo.SEQ, zoo.SEQ - 5, zoo.SEQ - 7):
            compiled_before = len(reports)
            inputs = _with_seq(case, seq)
            torch.testing.assert_close(compiled(*inputs), model(*inputs), rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"seq {seq}: {m}")
    assert len(reports) == compiled_before, "the third length compiled again: the rewrite specialised a size"
    for report in reports:
        assert [s.reason for s in report.sites if not s.rewritten] == []
        assert len(report.sites) == case.expected_sites
