"""What a rewrite pass found: one record per softmax it looked at.

The pattern passes fill these in; ``fa_inductor.explain`` prints them.  A site is either
rewritten (``rewritten=True``, ``variant`` says how) or left alone with ``reason`` saying why.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class Variant:
    """How a rewritten site maps onto the op's arguments (the columns of explain's table)."""

    spelling: str                 # e.g. "matmul", "einsum", "baddbmm", "sdpa"
    scale: Optional[float]        # None when the scale is a runtime tensor folded into q
    mask: str                     # "none" | "causal" | "window" | "additive" | "bool" | ...
    alignment: Optional[str]      # "top-left" | "bottom-right" | None when not causal/windowed
    gqa_ratio: int                # Hq // Hkv (1: plain multi-head)
    dropout_p: float
    softcap: float
    dtype: str                    # e.g. "torch.bfloat16"
    head_dim: Any                 # int, or a SymInt's text under dynamic shapes
    kernel: str                   # what dispatch will pick for these inputs, e.g. "reference"


@dataclasses.dataclass
class Site:
    """One softmax in the graph."""

    source: str                   # "file.py:123 in forward: <the user's line>" (from stack_trace)
    rewritten: bool
    reason: Optional[str] = None  # why it was not rewritten (None when rewritten)
    variant: Optional[Variant] = None
    graph_index: int = 0          # which Dynamo graph (a graph break makes several)


@dataclasses.dataclass
class RewriteReport:
    sites: list[Site] = dataclasses.field(default_factory=list)

    @property
    def matched(self) -> list[Site]:
        return [s for s in self.sites if s.rewritten]

    @property
    def unmatched(self) -> list[Site]:
        return [s for s in self.sites if not s.rewritten]
