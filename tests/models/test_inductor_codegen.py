"""One family through full Inductor code generation (the default inner compiler), not aot_eager:
the rewritten graph must survive Inductor's lowering and give eager's numbers, in training too.
Slow on CPU (C++ code generation), hence the marker."""
from __future__ import annotations

import collections

import pytest
import torch

import zoo
import zoo_run


@pytest.mark.inductor
def test_llama_train_step_under_inductor_matches_eager():
    from fa_inductor.backend import collect_reports

    case = zoo.build("llama")
    model = case.model.train()
    eager_out = model(*case.inputs)
    zoo_run._loss((eager_out,)).backward()
    eager_grads = zoo_run._grads(model)
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="flash", fullgraph=True)
    reports: list = []
    with collect_reports(reports.append):
        first = compiled(*case.inputs)
    zoo_run._loss((first,)).backward()      # compiles the backward graph (lazily, on first use)
    model.zero_grad(set_to_none=True)
    sites = [s for r in reports for s in r.sites]
    assert len(sites) == case.expected_sites and all(s.rewritten for s in sites), [s.reason for s in sites]

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = compiled(*case.inputs)
        zoo_run._loss((out,)).backward()
    calls = collections.Counter({e.key: e.count for e in prof.key_averages()})
    assert calls[zoo_run.FORWARD_OP] == case.expected_sites
    assert calls[zoo_run.BACKWARD_OP] == case.expected_sites

    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max().item() for g in eager_grads.values() if g is not None)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m: f"{name}: {m}")
