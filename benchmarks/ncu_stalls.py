"""Where a kernel's warps wait, from an Nsight Compute source page exported as CSV:

    ncu --set full -k regex:fa_bwd_sm90_kernel -c 1 -o rep python3 benchmarks/ncu_bwd.py --head-dim 64
    ncu --import rep.ncu-rep --page source --csv --print-source sass > rep_source.csv
    python benchmarks/ncu_stalls.py rep_source.csv

Prints the share of warp-stall samples per reason over the whole kernel, then the SASS instructions
with the most samples and each one's two main reasons (a sample at an instruction means a warp was
waiting to issue it), so a profile reads as "what waits for what" without the GUI.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
    return list(csv.DictReader(lines[start:]))


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    rows = read_rows(args.csv)
    reasons = [c for c in rows[0] if c.startswith("stall_") and not c.endswith("(Not Issued)")]
    totals = Counter()
    for r in rows:
        for c in reasons:
            totals[c] += number(r[c])
    total = sum(totals.values())
    print(f"{len(rows)} SASS instructions, {total:.0f} stall samples")
    print("| stall reason | samples | share |\n|---|---:|---:|")
    for c, n in totals.most_common():
        if n:
            print(f"| {c[len('stall_'):]} | {n:.0f} | {100 * n / total:.1f}% |")
    print(f"\n| SASS (top {args.top} by samples) | samples | share | main reasons |\n|---|---:|---:|---|")
    ranked = sorted(rows, key=lambda r: -sum(number(r[c]) for c in reasons))
    for r in ranked[: args.top]:
        n = sum(number(r[c]) for c in reasons)
        top = sorted(reasons, key=lambda c: -number(r[c]))[:2]
        why = ", ".join(f"{c[len('stall_'):]} {100 * number(r[c]) / n:.0f}%" for c in top if number(r[c]))
        print(f"| `{r['Address']}: {r['Source'].strip()}` | {n:.0f} | {100 * n / total:.1f}% | {why} |")


if __name__ == "__main__":
    main()
