"""Text and markdown tables of a run: one table per point, the closing summary, the README table.

Ratios are always ours / peer in TFLOP/s at the same point (above 1: ours is faster).
"""

from __future__ import annotations

from collections.abc import Iterable

from .grid import seqlen_label
from .results import OK, Record, Run

OURS = "fa"
PEERS = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex")
ALL_IMPLS = (OURS,) + PEERS
# The peers the issues' bars name, reported on their own beside the best peer.
NAMED_PEERS = ("sdpa-flash", "sdpa-cudnn")

_SHORT_STATUS = {"unsupported": "unsup", "oom": "oom", "error": "err", "skipped": "skip"}

Key = tuple[str, int, int, bool, str]  # impl, head_dim, seqlen, causal, direction


def index(records: Iterable[Record]) -> dict[Key, Record]:
    return {(r.impl, r.head_dim, r.seqlen, r.causal, r.direction): r for r in records}


def mask_name(causal: bool) -> str:
    return "causal" if causal else "non-causal"


def ratio(ours: Record | None, peer: Record | None) -> float | None:
    if ours is None or peer is None or ours.status != OK or peer.status != OK:
        return None
    if not ours.tflops or not peer.tflops:
        return None
    return ours.tflops / peer.tflops


def best_peer(records: Iterable[Record]) -> Record | None:
    ok = [r for r in records if r is not None and r.impl != OURS and r.status == OK and r.tflops]
    return max(ok, key=lambda r: r.tflops) if ok else None


def best_peer_or_ours(records: Iterable[Record | None]) -> Record | None:
    ok = [r for r in records if r is not None and r.status == OK and r.tflops]
    return max(ok, key=lambda r: r.tflops) if ok else None


def _cell(rec: Record | None, value: float | None, fmt: str) -> str:
    """A number, or why there is none: the failing record's status (ours' or the peer's)."""
    if value is not None:
        return format(value, fmt)
    if rec is None:
        return "n/a"
    return _SHORT_STATUS.get(rec.status, rec.status)


def _ratio_cell(ours: Record | None, peer: Record | None) -> str:
    value = ratio(ours, peer)
    if value is not None:
        return f"{value:.2f}"
    if ours is None:
        return "n/a"
    if ours is not None and ours.status != OK:
        return _cell(ours, None, "")
    return _cell(peer, None, "")


def ours_labels(records: Iterable[Record]) -> str:
    """fa(sm80), or fa(sm80|sdpa) where the dispatcher chose differently across points."""
    labels = list(dict.fromkeys(r.label for r in records if r.impl == OURS and r.status == OK))
    if not labels:
        return OURS
    if len(labels) == 1:
        return labels[0]
    inner = [lab[len(OURS) + 1:-1] if lab.startswith(OURS + "(") else lab for lab in labels]
    return f"{OURS}({'|'.join(inner)})"


def header_line(meta: dict) -> str:
    parts = [f"device: {meta.get('device', '?')}", f"torch {meta.get('torch', '?')}",
             str(meta.get("dtype", "?")), str(meta.get("date", "?"))]
    return "  ".join(parts)


def point_table(records: list[Record]) -> str:
    """Every implementation at one point (one shape, one direction), ours first."""
    if not records:
        return ""
    first = records[0]
    order = {impl: i for i, impl in enumerate(ALL_IMPLS)}
    records = sorted(records, key=lambda r: order.get(r.impl, len(order)))
    ours = next((r for r in records if r.impl == OURS), None)
    lines = [
        f"d={first.head_dim} S={seqlen_label(first.seqlen)} B={first.batch} H={first.heads} "
        f"{mask_name(first.causal)} {first.direction}  ({first.flops / 1e9:.1f} GFLOP)",
        f"  {'impl':<18} {'median ms':>10} {'p20-p80 ms':>17} {'TFLOP/s':>9} {'ours/impl':>10}",
    ]
    for r in records:
        if r.status == OK and r.ms is not None and r.tflops is not None:
            spread = (f"{r.ms_p20:.3f}-{r.ms_p80:.3f}" if r.ms_p20 is not None
                      and r.ms_p80 is not None else "")
            rel = "-" if r.impl == OURS else _ratio_cell(ours, r)
            extra = f"  rel_err {r.rel_err:.1e}" if r.rel_err is not None else ""
            lines.append(f"  {r.label:<18} {r.ms:>10.3f} {spread:>17} {r.tflops:>9.1f} "
                         f"{rel:>10}{extra}")
            if r.detail:  # a fallback method, the dispatcher's reason, a failed check
                lines.append(f"  {'':<18} note: {_one_line(r.detail)}")
        else:
            lines.append(f"  {r.label:<18} {r.status}: {_one_line(r.detail)}")
    if ours is not None:
        best = best_peer(records)
        parts = [f"best peer ({best.impl}) {_ratio_cell(ours, best)}" if best
                 else "best peer n/a"]
        by_impl = {r.impl: r for r in records}
        parts += [f"{p} {_ratio_cell(ours, by_impl.get(p))}" for p in NAMED_PEERS
                  if p in by_impl]
        lines.append(f"  {ours.label} / " + ";  / ".join(parts))
    return "\n".join(lines)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def panels(run: Run) -> list[tuple[int, bool, str]]:
    seen = dict.fromkeys(r.panel for r in run.records)
    return sorted(seen, key=lambda p: (p[0], p[1], p[2] != "fwd"))


def _seqlens(run: Run, panel) -> list[int]:
    return sorted({r.seqlen for r in run.records if r.panel == panel})


def _impls_present(run: Run) -> list[str]:
    present = {r.impl for r in run.records}
    return [i for i in ALL_IMPLS if i in present] + sorted(present - set(ALL_IMPLS))


def summary(run: Run) -> str:
    """Ours against each peer as ratios, per head dim x mask x direction, one column per seqlen.
    Printed last: the GPU tool hands back only the tail of the output."""
    idx = index(run.records)
    present = _impls_present(run)
    if OURS not in present:
        return _throughput_summary(run, present)
    peers = [i for i in present if i != OURS]
    lines = [
        "=" * 78,
        "SUMMARY  ratio = ours TFLOP/s / peer TFLOP/s at the same point (>1: ours faster)",
        header_line(run.meta),
    ]
    if run.meta.get("timing"):
        lines.append(f"timing: {run.meta['timing']}")
    lines.append("cells: a ratio, or why not: unsup(ported) / oom / err / skip / n/a (not run)")
    for panel in panels(run):
        d, causal, direction = panel
        seqlens = _seqlens(run, panel)
        ours_recs = [idx.get((OURS, d, s, causal, direction)) for s in seqlens]
        ours_name = ours_labels(r for r in ours_recs if r)
        title = f"d={d} {mask_name(causal)} {direction}  [ours = {ours_name}]"
        width = max(len(title), 26)
        lines.append("")
        lines.append(f"{title:<{width}}" + "".join(f"{seqlen_label(s):>8}" for s in seqlens))
        cells = [_cell(r, r.tflops if r is not None and r.status == OK else None, ".1f")
                 for r in ours_recs]
        lines.append(f"{'  ours TFLOP/s':<{width}}" + "".join(f"{c:>8}" for c in cells))
        best_cells = []
        for s, ours in zip(seqlens, ours_recs):
            best = best_peer(idx.get((p, d, s, causal, direction)) for p in peers
                             if (p, d, s, causal, direction) in idx)
            best_cells.append(_ratio_cell(ours, best) if best else "n/a")
        lines.append(f"{'  vs best peer':<{width}}" + "".join(f"{c:>8}" for c in best_cells))
        for p in peers:
            row = [_ratio_cell(ours, idx.get((p, d, s, causal, direction)))
                   for s, ours in zip(seqlens, ours_recs)]
            lines.append(f"{'  vs ' + p:<{width}}" + "".join(f"{c:>8}" for c in row))
    lines.append("")
    lines += _health(run)
    lines.append("=" * 78)
    return "\n".join(lines)


def _throughput_summary(run: Run, impls: list[str]) -> str:
    """Without ours in the run there is no ratio to give: each implementation's TFLOP/s."""
    idx = index(run.records)
    lines = ["=" * 78, "SUMMARY  TFLOP/s per implementation (ours was not run)",
             header_line(run.meta)]
    for panel in panels(run):
        d, causal, direction = panel
        seqlens = _seqlens(run, panel)
        title = f"d={d} {mask_name(causal)} {direction}"
        width = max(len(title), 26)
        lines += ["", f"{title:<{width}}" + "".join(f"{seqlen_label(s):>8}" for s in seqlens)]
        for impl in impls:
            recs = [idx.get((impl, d, s, causal, direction)) for s in seqlens]
            cells = [_cell(r, r.tflops if r is not None and r.status == OK else None, ".1f")
                     for r in recs]
            lines.append(f"{'  ' + impl:<{width}}" + "".join(f"{c:>8}" for c in cells))
    lines.append("")
    lines += _health(run)
    lines.append("=" * 78)
    return "\n".join(lines)


def _health(run: Run) -> list[str]:
    """What did not run, and results that failed their check, counted per implementation."""
    counts: dict[str, dict[str, int]] = {}
    suspicious = []
    for r in run.records:
        if r.status != OK:
            per = counts.setdefault(r.impl, {})
            per[r.status] = per.get(r.status, 0) + 1
        elif "WRONG?" in r.detail:
            suspicious.append(f"{r.label} d={r.head_dim} S={seqlen_label(r.seqlen)} "
                              f"{mask_name(r.causal)} {r.direction} rel_err {r.rel_err:.1e}")
    ok = sum(r.status == OK for r in run.records)
    lines = [f"points timed: {ok} of {len(run.records)}"]
    if counts:
        lines.append("not timed: " + ";  ".join(
            f"{impl} " + ", ".join(f"{n} {status}" for status, n in sorted(per.items()))
            for impl, per in counts.items()) + "  (reasons in the JSON and the tables above)")
    if suspicious:
        lines.append(f"CHECK FAILED (output far from the fp32 reference) at {len(suspicious)} "
                     "points: " + "; ".join(suspicious[:6]))
    if run.meta.get("cuda_context_lost"):
        lines.append(f"CUDA context lost: {run.meta['cuda_context_lost'][:300]}")
    if run.meta.get("elapsed_s") is not None:
        lines.append(f"elapsed {run.meta['elapsed_s']} s")
    return lines


def markdown(run: Run) -> str:
    """The README's table: TFLOP/s of every implementation, with ours / best peer under each
    group, naming the device and the software it ran with."""
    idx = index(run.records)
    impls = _impls_present(run)
    meta = run.meta
    all_seqlens = sorted({r.seqlen for r in run.records})
    out = [
        f"Attention throughput in TFLOP/s (higher is better) on **{meta.get('device', '?')}**, "
        f"torch {meta.get('torch', '?')}, {meta.get('dtype', '?')}, {meta.get('date', '?')}; "
        f"{meta.get('tokens', '?')} tokens (batch = tokens / seqlen), hidden "
        f"{meta.get('hidden', '?')} (heads = hidden / head dim); FLOPs as in the "
        "FlashAttention-3 paper (4·s²·d·h·B forward, halved when causal, backward 2.5×). "
        "Fastest per column in bold. Produced by `benchmarks/attention.py`.",
        "",
        "| direction | mask | head dim | implementation | "
        + " | ".join(seqlen_label(s) for s in all_seqlens) + " |",
        "|---|---|---:|---|" + "---:|" * len(all_seqlens),
    ]
    for panel in panels(run):
        d, causal, direction = panel
        first = True
        fastest = {s: best_peer_or_ours(idx.get((i, d, s, causal, direction)) for i in impls)
                   for s in all_seqlens}
        for impl in impls:
            recs = [idx.get((impl, d, s, causal, direction)) for s in all_seqlens]
            if not any(recs):
                continue
            label = ours_labels(r for r in recs if r) if impl == OURS else impl
            cells = [_cell(r, r.tflops if r is not None and r.status == OK else None, ".0f")
                     for r in recs]
            cells = [f"**{c}**" if r is not None and r is fastest[s] else c
                     for c, r, s in zip(cells, recs, all_seqlens)]
            lead = (f"| {direction} | {mask_name(causal)} | {d} |" if first else "| | | |")
            first = False
            out.append(f"{lead} {label} | " + " | ".join(cells) + " |")
        ratios = []
        for s in all_seqlens:
            ours = idx.get((OURS, d, s, causal, direction))
            best = best_peer(idx.get((p, d, s, causal, direction)) for p in impls
                             if p != OURS and (p, d, s, causal, direction) in idx)
            ratios.append(_ratio_cell(ours, best) if best else "n/a")
        if idx.keys() & {(OURS, d, s, causal, direction) for s in all_seqlens}:
            out.append("| | | | *ours / best peer* | " + " | ".join(f"*{c}*" for c in ratios)
                       + " |")
    if run.ablation:
        out += ["", f"Ablation (FlashAttention-3 paper, Table 2 shape): {run.ablation_note}", "",
                "| variant | mask | TFLOP/s |", "|---|---|---:|"]
        for a in run.ablation:
            value = f"{a.tflops:.0f}" if a.status == OK and a.tflops else a.status
            out.append(f"| {a.variant} | {mask_name(a.causal)} | {value} |")
    return "\n".join(out) + "\n"
