"""Shared checks for the pattern tests (no tests here): compile through the flash backend
with the aot_eager inner compiler, snapshot the rewritten graph, compare with float64 eager."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch.fx import GraphModule, Node

from fa_inductor.backend import collect_reports, flash


def _fmt(a: Any) -> str:
    if isinstance(a, Node):
        return a.name
    if isinstance(a, (tuple, list)):
        inner = ", ".join(_fmt(x) for x in a)
        if isinstance(a, tuple):
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        return f"[{inner}]"
    if isinstance(a, float):
        return f"{a:.6g}"
    if isinstance(a, slice):
        return "::" if a == slice(None) else repr(a)
    return str(a)


def _target_name(n: Node) -> str:
    if n.op == "call_method":
        return "." + n.target
    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.namespace}.{t._schema.name.split('::')[-1]}"
    mod = getattr(t, "__module__", "") or ""
    name = getattr(t, "__name__", str(t))
    return f"{'operator' if mod == '_operator' else 'torch'}.{name}" \
        if mod in ("_operator", "torch") else name


def snapshot(gm: GraphModule) -> str:
    """The call nodes of a graph, one per line: stable across runs, readable in a diff."""
    lines = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method"):
            continue
        args = [_fmt(a) for a in n.args] + [f"{k}={_fmt(v)}" for k, v in n.kwargs.items()]
        lines.append(f"{_target_name(n)}({', '.join(args)})")
    return "\n".join(lines)


@dataclasses.dataclass
class Capture:
    """A backend that runs the real flash backend (aot_eager inside) and records what it did."""

    graphs: list = dataclasses.field(default_factory=list)
    reports: list = dataclasses.field(default_factory=list)

    def __call__(self, gm: GraphModule, example_inputs: Sequence[Any]):
        reports = []
        # Only compiles that succeed count: Dynamo may restart one (e.g. to specialise a float).
        with collect_reports(reports.append):
            compiled = flash(gm, example_inputs, options={"flash.compiler": "aot_eager"})
        self.reports.extend(reports)
        self.graphs.append(snapshot(gm))
        return compiled

    @property
    def sites(self):
        return [s for r in self.reports for s in r.sites]


def compile_fn(fn: Callable, *, dynamic: bool = False) -> tuple[Callable, Capture]:
    torch._dynamo.reset()
    cap = Capture()
    return torch.compile(fn, backend=cap, fullgraph=True, dynamic=dynamic), cap


def _leaves(inputs: Sequence[Any], dtype: torch.dtype, grad: bool) -> list[Any]:
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            x = x.detach().to(dtype).requires_grad_(grad)
        elif isinstance(x, torch.Tensor):
            x = x.clone()
        out.append(x)
    return out


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    return [r for r in result if isinstance(r, torch.Tensor)]


def assert_matches_reference(compiled: Callable, fn: Callable, inputs: Sequence[Any], *,
                             dtype: torch.dtype = torch.float32, train: bool = True) -> None:
    """Compiled outputs (and input gradients when ``train``) against float64 eager."""
    ref_in = _leaves(inputs, torch.float64, train)
    got_in = _leaves(inputs, dtype, train)
    low_in = _leaves(inputs, dtype, train)
    ref, got, low = _outputs(fn(*ref_in)), _outputs(compiled(*got_in)), _outputs(fn(*low_in))
    if dtype == torch.float32:
        atol, rtol = 2e-5, 1e-4
    else:
        atol, rtol = 3e-2, 3e-2
    for r, g, lo in zip(ref, got, low):
        assert g.dtype == lo.dtype and g.shape == lo.shape
        _close(g, r, lo, atol, rtol, "output")
    if not train:
        return
    grads = [torch.randn_like(r) for r in ref]
    torch.autograd.backward(ref, grads)
    torch.autograd.backward(got, [g.to(x.dtype) for g, x in zip(grads, got)])
    torch.autograd.backward(low, [g.to(x.dtype) for g, x in zip(grads, low)])
    for r, g, lo in zip(ref_in, got_in, low_in):
        if isinstance(r, torch.Tensor) and r.requires_grad:
            assert (g.grad is None) == (r.grad is None), "compiled graph lost a gradient"
            if r.grad is None:
                continue
            _close(g.grad, r.grad, lo.grad, atol * 4, rtol * 4, "grad")


def _close(got: torch.Tensor, ref: torch.Tensor, eager_low: torch.Tensor, atol: float,
           rtol: float, what: str) -> None:
    ref = ref.to(torch.float64)
    err = (got.to(torch.float64) - ref).abs().max().item()
    eager_err = (eager_low.to(torch.float64) - ref).abs().max().item()
    # Within tolerance of the exact result, or no worse than eager at the same precision.
    bound = atol + rtol * ref.abs().max().item()
    assert err <= max(bound, 2 * eager_err), f"{what}: max error {err} (eager {eager_err})"
