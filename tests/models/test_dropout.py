"""Attention dropout in training: rewritten with its probability, random per seed, and the backward
runs.  (Equality with eager cannot be asked: the op draws its own mask.)"""
from __future__ import annotations

import torch

import zoo
import zoo_run

P = 0.5


def _compiled_train_step(model, inputs, seed):
    torch.manual_seed(seed)
    out = model(*inputs)
    zoo_run._loss((out,)).backward()
    return out.detach()


def test_llama_attention_dropout_is_rewritten_and_random_per_seed():
    from fa_inductor.backend import collect_reports

    case = zoo.build("llama", attn_dropout=P)
    model = case.model.train()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="flash", options={"flash.compiler": "aot_eager"}, fullgraph=True)
    reports: list = []
    with collect_reports(reports.append):
        a = _compiled_train_step(compiled, case.inputs, seed=0)
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == case.expected_sites and all(s.rewritten for s in sites), [s.reason for s in sites]
    assert [s.variant.dropout_p for s in sites] == [P] * case.expected_sites

    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    a_again = _compiled_train_step(compiled, case.inputs, seed=0)
    b = _compiled_train_step(compiled, case.inputs, seed=1)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b), "two seeds gave the same dropout mask"
    torch.testing.assert_close(a_again, a, rtol=0, atol=0, msg="one seed, two results: the mask is not seeded by torch's RNG")

    with torch.no_grad():
        no_dropout = model.eval()(*case.inputs)
    assert not torch.allclose(a, no_dropout, atol=1e-4), "dropout had no effect: was it dropped from the rewrite?"
