"""Census of the model zoo: how many attention sites ``fa_inductor.explain`` rewrites per family.

    python benchmarks/model_census.py [--numerics] [--out benchmarks/results/model_census.md] [family ...]

For every family of ``tests/models/zoo.py``, in eval (under ``no_grad``, as inference runs) and
in train mode, it runs ``fa_inductor.explain`` and tabulates sites rewritten / total (the total
counted from the model's structure, not from explain), the mask kinds explain reports, graph
breaks, and the reasons given for sites left alone.  ``--numerics`` also compiles each case with
``flash.compiler="aot_eager"`` and adds the largest error against eager for outputs and (train)
gradients.  Prints the markdown table and writes it to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "models"))

import zoo  # noqa: E402
import zoo_run  # noqa: E402


def _explain(case: zoo.ZooCase, mode: str):
    import fa_inductor

    model = case.model.train(mode == "train")
    torch._dynamo.reset()
    if mode == "train":
        return fa_inductor.explain(model, *case.inputs)
    with torch.no_grad():
        return fa_inductor.explain(model, *case.inputs)


def _max_err(pairs) -> float:
    errs = [(a.double() - b.double()).abs().max().item() for a, b in pairs if a is not None and b is not None]
    return max(errs) if errs else float("nan")


def census_row(name: str, mode: str, numerics: bool) -> dict:
    case = zoo.build(name)
    row = {"family": name, "mode": mode, "total": case.expected_sites}
    start = time.time()
    try:
        report = _explain(case, mode)
        row.update(rewritten=len(report.matched), left=len(report.unmatched), breaks=report.graph_breaks,
                   masks=zoo_run.mask_kinds_summary(report.matched) or "-",
                   reasons="; ".join(sorted({(s.reason or "?") for s in report.unmatched})))
    except Exception as exc:  # noqa: BLE001  (a census row, not a crash, for a failing family)
        row.update(rewritten=0, left="?", breaks="?", masks="-", reasons="explain raised " + zoo_run.first_error_line(exc))
    if numerics:
        try:
            run = zoo_run.run_case(zoo.build(name), mode)
            row["out_err"] = f"{_max_err(zip(run.compiled_out, run.eager_out)):.1e}"
            row["grad_err"] = (f"{_max_err((run.compiled_grads.get(k), g) for k, g in run.eager_grads.items()):.1e}"
                               if mode == "train" else "-")
        except Exception as exc:  # noqa: BLE001
            row["out_err"] = row["grad_err"] = "error"
            row["reasons"] = (row["reasons"] + "; " if row["reasons"] else "") + \
                "aot_eager run raised " + zoo_run.first_error_line(exc)
    row["seconds"] = time.time() - start
    return row


# Beyond these the tests (tests/models/test_families.py) fail; flagged with ✗ in the table.
OUT_ERR_LIMIT = 1e-4
GRAD_ERR_LIMIT = 1e-3


def _flag(cell: str, limit: float) -> str:
    try:
        return cell + (" ✗" if float(cell) > limit else "")
    except ValueError:
        return cell


def to_markdown(rows: list[dict], numerics: bool) -> str:
    header = ["family", "mode", "rewritten / total", "mask kinds (rewritten sites)", "graph breaks"]
    if numerics:
        header += ["max abs out err", "max abs grad err"]
    header += ["not rewritten: reasons"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ok = r["rewritten"] == r["total"] and r["left"] == 0
        cells = [r["family"], r["mode"], f"{r['rewritten']} / {r['total']}" + ("" if ok else " ✗"), r["masks"],
                 str(r["breaks"])]
        if numerics:
            cells += [_flag(r.get("out_err", ""), OUT_ERR_LIMIT), _flag(r.get("grad_err", ""), GRAD_ERR_LIMIT)]
        cells += [r["reasons"].replace("|", "\\|")[:200] or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    full = sum(1 for r in rows if r["rewritten"] == r["total"] and r["left"] == 0)
    sites = sum(r["rewritten"] for r in rows), sum(r["total"] for r in rows)
    lines += ["", f"{full} / {len(rows)} family-modes fully rewritten; {sites[0]} / {sites[1]} sites."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", default=list(zoo.REGISTRY))
    parser.add_argument("--numerics", action="store_true", help="also compare with eager (aot_eager compile)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "model_census.md"))
    args = parser.parse_args()

    start = time.time()
    rows = [census_row(name, mode, args.numerics) for name in args.families for mode in ("eval", "train")]
    import transformers

    text = "\n".join([
        "# Attention-site census of the model zoo",
        "",
        f"`python benchmarks/model_census.py{' --numerics' if args.numerics else ''}` — torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {platform.machine()} CPU, {time.time() - start:.0f} s. "
        "Total = attention modules × calls, counted from the model's structure; eval runs under no_grad.",
        "",
        to_markdown(rows, args.numerics),
        "",
    ])
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
