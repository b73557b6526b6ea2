"""The `flash` torch.compile backend: rewrite attention on the Dynamo graph, then compile.

Data path: Dynamo hands us its FX graph (torch-level ops, before AOTAutograd) →
``fa_inductor.patterns.rewrite_attention`` replaces each attention site with
``torch.ops.fa.attention_forward`` → the inner compiler (Inductor by default) takes the graph.
Rewriting before AOTAutograd is what lets training work: AOTAutograd traces our op's
registered autograd formula, so the backward graph calls ``fa::attention_backward``.

Registered under the ``torch_dynamo_backends`` entry point group (see pyproject.toml), so
``torch.compile(model, backend="flash")`` needs no import of fa_inductor.  It is deliberately
not also registered with ``register_backend``: Dynamo asserts on a duplicate name.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from . import ops as _ops  # noqa: F401  (registers torch.ops.fa.*)
from .options import FlashOptions, split_options

_report_listeners: list[Callable[[Any], None]] = []


@contextlib.contextmanager
def collect_reports(listener: Callable[[Any], None]) -> Iterator[None]:
    """Call ``listener(report)`` with the RewriteReport of every graph compiled meanwhile."""
    _report_listeners.append(listener)
    try:
        yield
    finally:
        _report_listeners.remove(listener)


def _inner_compile(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    compiler: str,
    inductor_patches: Mapping[str, Any],
) -> Callable:
    if compiler == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=dict(inductor_patches))
    if inductor_patches:
        raise ValueError(
            f"Inductor options {sorted(inductor_patches)} were given but flash.compiler is "
            f"{compiler!r}, which does not run Inductor"
        )
    if compiler == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(gm, example_inputs)
    return gm.forward


def compile_graph(
    gm: torch.fx.GraphModule, example_inputs: Sequence[Any], flash: FlashOptions,
    inductor_patches: Mapping[str, Any],
) -> Callable:
    report = None
    if flash.rewrite:
        from .patterns import rewrite_attention

        report = rewrite_attention(gm, example_inputs)
    compiled = _inner_compile(gm, example_inputs, flash.compiler, inductor_patches)
    # Publish only once the inner compiler accepted the graph: Dynamo may abandon a compile
    # (e.g. to restart analysis with other specialisations) and call us again, and a report
    # of the abandoned graph would count its sites twice.
    if report is not None:
        for listener in list(_report_listeners):
            listener(report)
    return compiled


def flash(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: Optional[str] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Callable:
    """Dynamo backend entry point: ``torch.compile(model, backend="flash", mode=..., options=...)``.

    ``options`` keys starting with ``flash.`` are ours (``flash.compiler``: "inductor",
    "aot_eager" or "eager"; ``flash.rewrite``; ``flash.fp8``); the rest go to Inductor, as do
    the settings of ``mode``.
    """
    flash_options, patches = split_options(mode, options)
    return compile_graph(gm, example_inputs, flash_options, patches)


class FlashBackend:
    """``flash`` with its options bound, for callers that hold both a mode and our options
    (``torch.compile`` refuses mode= together with options=)."""

    def __init__(self, mode: Optional[str] = None, options: Optional[Mapping[str, Any]] = None):
        # Validate now so a bad option fails at decoration time, not at the first call.
        self.flash_options, self.inductor_patches = split_options(mode, options)
        self.mode, self.options = mode, dict(options or {})

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        return compile_graph(gm, example_inputs, self.flash_options, self.inductor_patches)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FlashBackend)
            and self.flash_options == other.flash_options
            and self.inductor_patches == other.inductor_patches
        )

    def __hash__(self) -> int:
        return hash(self.flash_options)
