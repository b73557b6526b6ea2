"""``fa_inductor.explain``: which attention sites the backend rewrites, and why not the others."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch

from .backend import FlashBackend, collect_reports


@dataclasses.dataclass
class ExplainReport:
    matched: list  # list[patterns.report.Site], rewritten
    unmatched: list  # list[patterns.report.Site], each with .reason
    graphs: int
    graph_breaks: int

    def __str__(self) -> str:
        lines = [
            f"fa_inductor.explain: {len(self.matched)} attention site(s) rewritten, "
            f"{len(self.unmatched)} softmax(es) left as is "
            f"({self.graphs} graph(s), {self.graph_breaks} graph break(s))"
        ]
        if self.matched:
            header = ["#", "source", "spelling", "scale", "mask", "align", "gqa", "dropout",
                      "softcap", "dtype", "head_dim", "kernel"]
            rows = []
            for i, site in enumerate(self.matched):
                v = site.variant
                rows.append([
                    str(i), _short(site.source), v.spelling,
                    "runtime" if v.scale is None else f"{v.scale:.4g}", v.mask,
                    v.alignment or "-", f"{v.gqa_ratio}:1", f"{v.dropout_p:g}",
                    f"{v.softcap:g}" if v.softcap else "-", str(v.dtype).replace("torch.", ""),
                    str(v.head_dim), v.kernel,
                ])
            lines += ["", "Rewritten:"] + _table(header, rows)
        if self.unmatched:
            rows = [[str(i), _short(s.source), s.reason or "?"] for i, s in enumerate(self.unmatched)]
            lines += ["", "Not rewritten:"] + _table(["#", "source", "reason"], rows)
        return "\n".join(lines)

    __repr__ = __str__


def _short(source: str, width: int = 60) -> str:
    source = " ".join(source.split())
    return source if len(source) <= width else "…" + source[-(width - 1):]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


@contextlib.contextmanager
def _roomy_recompile_limit() -> Iterator[None]:
    # explain compiles the user's code once more with a backend of its own; Dynamo counts that
    # as a recompilation, and at its limit it would quietly run eager and we would see nothing.
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    with cfg.patch(**{name: max(getattr(cfg, name), 64)}):
        yield


def explain(model_or_fn: Callable, *args: Any, **kwargs: Any) -> ExplainReport:
    """Run ``model_or_fn(*args, **kwargs)`` once under the `flash` rewrite and report each
    softmax seen: rewritten sites with their variant and chosen kernel, and for the others
    the reason they were left alone.  The model runs eagerly on the rewritten graph (no
    Inductor code generation), so this is cheap."""
    if not callable(model_or_fn):
        raise TypeError(f"fa_inductor.explain expects a function or module, got {type(model_or_fn).__name__}")
    from torch._dynamo.utils import counters

    reports: list = []
    breaks_before = sum(counters["graph_break"].values())
    backend = FlashBackend(options={"flash.compiler": "eager"})
    with collect_reports(reports.append), _roomy_recompile_limit():
        torch.compile(model_or_fn, backend=backend)(*args, **kwargs)
    breaks = sum(counters["graph_break"].values()) - breaks_before
    matched, unmatched = [], []
    for index, report in enumerate(reports):
        for site in report.sites:
            site.graph_index = index
            (matched if site.rewritten else unmatched).append(site)
    return ExplainReport(matched, unmatched, graphs=len(reports), graph_breaks=breaks)
