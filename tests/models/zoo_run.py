"""Run one zoo case eagerly and through ``backend="flash"``, and keep everything a test checks.

Shared by ``test_families.py`` and ``benchmarks/model_census.py``.  What is recorded:

* the RewriteReport(s) the backend produced (through ``fa_inductor.backend.collect_reports``),
* how many times ``fa::attention_forward`` / ``fa::attention_backward`` actually ran, counted
  by the profiler on a second (already compiled) call — independent of what the report claims,
* outputs (and, in training, every parameter's gradient) of eager and compiled runs,
* graph breaks (Dynamo's counter; the compile also uses ``fullgraph=True``).

Training runs use a fixed random projection of the outputs as the loss, so every output
element (and every parameter) gets a gradient of its own.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

import torch

import zoo

FORWARD_OP = "fa::attention_forward"
BACKWARD_OP = "fa::attention_backward"


@dataclasses.dataclass
class Run:
    name: str
    mode: str                                   # "eval" | "train"
    case: zoo.ZooCase
    sites: list = dataclasses.field(default_factory=list)      # patterns.report.Site
    graphs: int = 0
    graph_breaks: int = 0
    eager_out: tuple = ()
    compiled_out: tuple = ()                    # the first (compiling) call
    compiled_out_again: tuple = ()              # the second call, the one the profiler saw
    eager_grads: dict = dataclasses.field(default_factory=dict)
    compiled_grads: dict = dataclasses.field(default_factory=dict)
    op_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def matched(self) -> list:
        return [s for s in self.sites if s.rewritten]

    @property
    def unmatched(self) -> list:
        return [s for s in self.sites if not s.rewritten]


def _as_tuple(out: Any) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _loss(outputs: tuple) -> torch.Tensor:
    g = torch.Generator().manual_seed(99)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outputs)


def _grads(model: torch.nn.Module) -> dict:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def _forward(model, inputs, train: bool) -> tuple:
    if train:
        out = _as_tuple(model(*inputs))
        _loss(out).backward()
        return tuple(o.detach() for o in out)
    with torch.no_grad():
        return _as_tuple(model(*inputs))


def run_case(case: zoo.ZooCase, mode: str, compiler: str = "aot_eager") -> Run:
    from torch._dynamo.utils import counters

    from fa_inductor.backend import collect_reports

    train = mode == "train"
    model = case.model.train(train)
    run = Run(case.name, mode, case)

    run.eager_out = _forward(model, case.inputs, train)
    if train:
        run.eager_grads = _grads(model)
        model.zero_grad(set_to_none=True)

    torch._dynamo.reset()      # every family shares _Adapter.forward: no recompile limit across cases
    breaks_before = sum(counters["graph_break"].values())
    reports: list = []
    compiled = torch.compile(model, backend="flash", options={"flash.compiler": compiler}, fullgraph=True)
    with collect_reports(reports.append):
        run.compiled_out = _forward(compiled, case.inputs, train)
    model.zero_grad(set_to_none=True)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run.compiled_out_again = _forward(compiled, case.inputs, train)
    if train:
        run.compiled_grads = _grads(model)
        model.zero_grad(set_to_none=True)
    run.op_calls = collections.Counter(
        {e.key: e.count for e in prof.key_averages() if e.key in (FORWARD_OP, BACKWARD_OP)})

    run.graph_breaks = sum(counters["graph_break"].values()) - breaks_before
    run.graphs = len(reports)
    for index, report in enumerate(reports):
        for site in report.sites:
            site.graph_index = index
            run.sites.append(site)
    return run


# --------------------------------------------------------------------------- mask kinds

_BIAS_WORDS = {"additive", "bool", "bias", "padding", "alibi", "float", "data"}


def mask_tokens(variant) -> frozenset:
    """A site's mask as a set of {"causal", "window", "bias"} (empty: no mask at all).

    Tolerant of how the variant spells combinations ("causal+additive", "window, bool", ...).
    """
    words = {w for w in re.split(r"[^a-z_]+", (variant.mask or "").lower()) if w}
    tokens = set()
    if words & {"causal"}:
        tokens.add("causal")
    if words & {"window", "sliding", "sliding_window", "local"}:
        tokens.add("window")
    if words & _BIAS_WORDS or any(w.endswith("bias") for w in words):
        tokens.add("bias")
    return frozenset(tokens)


def mask_kinds_summary(sites: list) -> str:
    counts = collections.Counter()
    for s in sites:
        if s.rewritten and s.variant is not None:
            t = mask_tokens(s.variant)
            label = "+".join(sorted(t)) or "none"
            if t & {"causal", "window"} and s.variant.alignment:
                label += f" ({s.variant.alignment})"
            counts[label] += 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))


def first_error_line(exc: BaseException, width: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= width else line[: width - 1] + "…"

