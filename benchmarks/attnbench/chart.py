"""The PNG chart: TFLOP/s bars per seqlen, one panel per head dim x mask x direction.
matplotlib is optional: without it there is no chart, and the caller says so."""

from __future__ import annotations

from pathlib import Path

from .grid import seqlen_label
from .results import OK, Run
from .tables import ALL_IMPLS, OURS, header_line, index, mask_name, ours_labels, panels


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_chart(run: Run, path: Path) -> Path | None:
    """Writes the chart and returns its path, or None when matplotlib is missing."""
    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on the GPU machine
    import matplotlib.pyplot as plt

    idx = index(run.records)
    all_panels = panels(run)
    if not all_panels:
        return None
    head_dims = sorted({p[0] for p in all_panels})
    columns = sorted({(p[1], p[2]) for p in all_panels}, key=lambda c: (c[1] != "fwd", c[0]))
    present = {r.impl for r in run.records}
    impls = [i for i in ALL_IMPLS if i in present] + sorted(present - set(ALL_IMPLS))
    fig, axes = plt.subplots(len(head_dims), len(columns), squeeze=False,
                             figsize=(4.2 * len(columns), 3.2 * len(head_dims)))
    width = 0.8 / max(len(impls), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, d in enumerate(head_dims):
        for col, (causal, direction) in enumerate(columns):
            ax = axes[row][col]
            panel = (d, causal, direction)
            seqlens = sorted({r.seqlen for r in run.records if r.panel == panel})
            for i, impl in enumerate(impls):
                recs = [idx.get((impl, d, s, causal, direction)) for s in seqlens]
                xs = [j + (i - (len(impls) - 1) / 2) * width for j in range(len(seqlens))]
                heights = [r.tflops if r is not None and r.status == OK and r.tflops else 0.0
                           for r in recs]
                name = ours_labels(r for r in recs if r) if impl == OURS else impl
                ax.bar(xs, heights, width, label=name if row == 0 and col == 0 else None,
                       color=colors[i % len(colors)])
                for x, r, h in zip(xs, recs, heights):
                    if r is not None and not h:  # a failed point: mark it, do not draw zero
                        ax.text(x, 0, "x", ha="center", va="bottom", fontsize=7,
                                color=colors[i % len(colors)])
            ax.set_xticks(range(len(seqlens)), [seqlen_label(s) for s in seqlens])
            ax.set_title(f"d={d} {mask_name(causal)} {direction}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row == len(head_dims) - 1:
                tokens = run.meta.get("tokens")
                ax.set_xlabel(f"seqlen (batch x seqlen = {tokens} tokens)" if tokens
                              else "seqlen")
    fig.suptitle("Attention TFLOP/s   " + header_line(run.meta) + "   (x: failed or refused)",
                 fontsize=10)
    fig.legend(loc="lower center", ncol=len(impls), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
