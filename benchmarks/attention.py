"""Attention benchmark on the FlashAttention-3 paper's grid, all implementations in one run.

    python benchmarks/attention.py                # the whole grid, results to benchmarks/results/
    python benchmarks/attention.py --quick        # smoke run: head dim 128, seqlen 1k and 4k
    python benchmarks/attention.py --out $OUT --budget-s 480 --markdown $OUT/summary.md
    python benchmarks/attention.py --from-json a.json b.json --markdown table.md   # no GPU needed

Grid: head dim 64/128/256 x seqlen 512..16k x causal and not x forward and backward, with
batch = tokens / seqlen (16k tokens) and heads = hidden / head dim (hidden 2048). Compared:
ours (torch.ops.fa.attention_forward and its autograd; the column is named after the kernel the
dispatcher chose, e.g. fa(sm80)), SDPA with each of its flash / cuDNN / efficient backends
forced, and FlexAttention under torch.compile. TFLOP/s count 4*s^2*d*h*B per forward (half when
causal) and 2.5x that per backward. Every point that fails (refused shape, OOM, crash) is
recorded with its reason; the run goes on. Output: a table per point, JSON with every number
and a PNG chart (if matplotlib is installed) under --out, named after the device, and a summary
of ours / peer ratios printed last.

On a GPU machine with a 10-minute limit per command: FlexAttention compiles once per shape (tens
of seconds each, shown as warmup_s in the JSON), so the whole grid with flex may not fit one
command. Write under the folder that comes back (--out $OUT), give --budget-s so a long run
stops starting points in time and still writes everything, and split the grid if needed
(say --dims 64,128 in one command, --dims 256 in another, or the SDPA peers and ours in one,
--impls flex in another); then merge the JSON files here with --from-json, which also writes
the PNG and the markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attnbench import grid  # noqa: E402
from attnbench.results import (Run, merge_runs, read_json, result_stem, slug,  # noqa: E402
                               write_json)
from attnbench.tables import ALL_IMPLS, markdown, point_table, summary  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DTYPES = ("bf16", "fp16", "fp32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/attention.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--dims", default=",".join(map(str, grid.HEAD_DIMS)),
                   help="head dims (default %(default)s)")
    p.add_argument("--seqlens", default=",".join(map(str, grid.SEQLENS)),
                   help="sequence lengths, 1k-style suffixes allowed (default %(default)s)")
    p.add_argument("--causal", default="both", help="both, yes or no (default %(default)s)")
    p.add_argument("--direction", default="fwd,bwd", help="fwd, bwd or both (default %(default)s)")
    p.add_argument("--impls", default=",".join(ALL_IMPLS),
                   help="implementations, ours first (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: head dim %s, seqlens %s (overrides --dims/--seqlens)" % (
                       ",".join(map(str, grid.QUICK_HEAD_DIMS)),
                       ",".join(map(str, grid.QUICK_SEQLENS))))
    p.add_argument("--dtype", default="bf16", choices=DTYPES, help="default %(default)s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="folder for the JSON and PNG (default benchmarks/results/)")
    p.add_argument("--markdown", type=Path, metavar="FILE",
                   help="also write the README's summary table (markdown) to FILE")
    p.add_argument("--ablation", action="store_true",
                   help="time the SM90 forward's variants (no ping-pong, no intra-warpgroup "
                        "pipelining, no warp specialisation) on batch 4, seqlen 8448, 16 heads, "
                        "head dim 128, once the kernel exposes them")
    p.add_argument("--no-grid", action="store_true", help="skip the grid (with --ablation)")
    p.add_argument("--tokens", type=int, default=grid.TOKENS,
                   help="batch x seqlen (default %(default)s)")
    p.add_argument("--hidden", type=int, default=grid.HIDDEN,
                   help="heads x head dim (default %(default)s)")
    p.add_argument("--layout", default="bhsd", choices=("bhsd", "bshd"),
                   help="memory order of q, k, v (all seen as [B, H, S, D]): contiguous "
                        "[B, H, S, D], or [B, S, H, D] as a model's projections give "
                        "(default %(default)s)")
    p.add_argument("--fwd-mode", default="grad", choices=("grad", "no_grad"),
                   help="forward with autograd recording (a training step's forward) or under "
                        "no_grad (inference) (default %(default)s)")
    p.add_argument("--spin-up-s", type=float, default=3.0,
                   help="seconds of GEMMs before the first point, so that it is not timed at a "
                        "cold GPU's clocks (default %(default)s)")
    p.add_argument("--warmup-ms", type=float, default=250.0,
                   help="do_bench warm-up (ms): each implementation runs this long before its "
                        "timing, so that it is timed at the clock its own load settles to (after "
                        "a pause the first ~0.2 s of a long kernel's calls ran 5-14%% faster on an "
                        "H100: benchmarks/clock_drift.py) (default %(default)s)")
    p.add_argument("--rep-ms", type=float, default=100.0,
                   help="do_bench repetition time (ms), shared by the rounds")
    p.add_argument("--rounds", type=int, default=2,
                   help="timing rounds per point: every implementation and direction timed "
                        "again after the first pass, in reverse order, each round with its own "
                        "warm-up; repetitions pooled (default %(default)s)")
    p.add_argument("--warmup-calls", type=int, default=3,
                   help="untimed calls before timing (compilation, autotuning) "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing ours against an fp32 SDPA reference at each point")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new points after this many seconds and still write "
                        "every output (under a wall-clock limit leave room for one more "
                        "point: e.g. 480 for a 10-minute limit)")
    p.add_argument("--flex-dynamic", action="store_true",
                   help="compile FlexAttention once with dynamic shapes instead of once per shape "
                        "(faster to compile, may run slower)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu only exercises the harness (host-clock timing, not a benchmark)")
    p.add_argument("--cpu-reps", type=int, default=3,
                   help="repetitions per point with --device cpu")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                   help="no run: re-render tables, summary, chart and markdown from result files "
                        "(several are merged, later ones win)")
    p.add_argument("--no-chart", action="store_true", help="do not write the PNG")
    p.add_argument("--tag", default="",
                   help="appended to the output file names (keeps split runs apart)")
    return p


def parse_selection(args) -> dict:
    """The grid and implementations the arguments ask for (raises ValueError on bad input)."""
    dims = grid.QUICK_HEAD_DIMS if args.quick else grid.parse_int_list(args.dims)
    seqlens = grid.QUICK_SEQLENS if args.quick else grid.parse_int_list(args.seqlens)
    impls = tuple(dict.fromkeys(i.strip() for i in args.impls.split(",") if i.strip()))
    unknown = [i for i in impls if i not in ALL_IMPLS]
    if unknown or not impls:
        raise ValueError(f"--impls: unknown {unknown or args.impls!r}; choose from {ALL_IMPLS}")
    causals = grid.parse_causal(args.causal)
    directions = grid.parse_directions(args.direction)
    shapes = grid.build_grid(dims, seqlens, causals, args.tokens, args.hidden)
    return {"dims": dims, "seqlens": seqlens, "causals": causals, "directions": directions,
            "impls": impls, "shapes": shapes}


def _write_outputs(run: Run, stem: str, out_dir: Path, markdown_path: Path | None,
                   chart: bool) -> list[str]:
    from attnbench.chart import write_chart

    notes = [f"wrote {write_json(run, out_dir / (stem + '.json'))}"]
    if chart:
        png = write_chart(run, out_dir / (stem + ".png"))
        notes.append(f"wrote {png}" if png else
                     "no PNG chart: matplotlib is not installed (pip install matplotlib)")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(run))
        notes.append(f"wrote {markdown_path}")
    return notes


def render(args) -> int:
    runs = [read_json(p) for p in args.from_json]
    run = merge_runs(runs)
    stem = result_stem(str(run.meta.get("device", "unknown")), str(run.meta.get("dtype", "")),
                       bool(run.meta.get("quick")))
    stem += f"_{slug(args.tag)}" if args.tag else ""
    notes = []
    if len(runs) > 1:
        notes.append(f"wrote {write_json(run, args.out / (stem + '_merged.json'))}")
        stem += "_merged"
    if not args.no_chart:
        from attnbench.chart import write_chart

        png = write_chart(run, args.out / (stem + ".png"))
        notes.append(f"wrote {png}" if png else "no PNG chart: matplotlib is not installed")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(run))
        notes.append(f"wrote {args.markdown}")
    print("\n".join(notes))
    print(summary(run))
    return 0


def benchmark(args, selection) -> int:
    import torch

    from attnbench import impls as impl_mod
    from attnbench import timing
    from attnbench.runner import BWD_METHODS_DOC, Runner, Settings

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available (use --device cpu to exercise the harness only, or "
              "--from-json to re-render results)", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
        timer, timing_doc = timing.gpu_timer(args.warmup_ms, args.rep_ms)
        sync = torch.cuda.synchronize
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()})"
        timer, timing_doc = timing.cpu_timer(args.cpu_reps)

        def sync():
            return None
    impl_mod.configure_compiler()
    rounds_doc = ("" if args.rounds <= 1 else
                  f"; {args.rounds} rounds per point (the implementations in turn, then again in "
                  "reverse order; warm-up in each, repetitions pooled)")
    meta = _meta(torch, args, selection, device_name,
                 f"{timing_doc}{rounds_doc}; forward {args.fwd_mode}; {BWD_METHODS_DOC}")
    run = Run(meta=meta)
    stem = result_stem(device_name, args.dtype, args.quick) + (f"_{slug(args.tag)}" if args.tag
                                                              else "")
    json_path = args.out / (stem + ".json")
    print(f"attention benchmark  device: {device_name}  torch {torch.__version__}  "
          f"{args.dtype}  {meta['date']}")
    print(f"timing: {meta['timing']}")
    print(f"results: {json_path}", flush=True)

    settings = Settings(dtype=dtype, device=args.device, layout=args.layout,
                        fwd_mode=args.fwd_mode, warmup_calls=args.warmup_calls, seed=args.seed,
                        check=not args.no_check, budget_s=args.budget_s,
                        rounds=max(1, args.rounds))
    runner = Runner(settings, timer, sync, flex_dynamic=args.flex_dynamic)
    shapes = [] if args.no_grid else selection["shapes"]
    started = time.monotonic()
    if args.device == "cuda":
        run.meta["spin_up_s"] = round(timing.spin_up_gpu(args.spin_up_s), 1)
    # The ablation first: a few points, asked for by name, not to be cut by the grid's budget.
    if args.ablation:
        run.ablation, run.ablation_note = runner.run_ablation(selection["causals"])
        print(f"\nablation: {run.ablation_note}")
        for a in run.ablation:
            value = f"{a.tflops:.1f} TFLOP/s ({a.ms:.3f} ms)" if a.tflops else \
                f"{a.status}: {a.detail}"
            print(f"  {a.variant:<32} {'causal' if a.causal else 'non-causal':<11} {value}")
    for n, shape in enumerate(shapes, 1):
        print(f"\n[{n}/{len(shapes)}  {time.monotonic() - started:.0f}s]", flush=True)
        records = runner.run_shape(shape, list(selection["impls"]), selection["directions"])
        run.records += records
        for direction in selection["directions"]:
            print(point_table([r for r in records if r.direction == direction]), flush=True)
        write_json(run, json_path)  # a run cut short still leaves every finished point
    if runner.lost:
        run.meta["cuda_context_lost"] = runner.lost
    run.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    notes = _write_outputs(run, stem, args.out, args.markdown, not args.no_chart)
    print()
    print("\n".join(notes))
    print(summary(run))
    return 0


def _meta(torch, args, selection, device_name: str, timing_doc: str) -> dict:
    meta = {
        "device": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": args.dtype,
        "layout": args.layout,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "fwd_mode": args.fwd_mode,
        "quick": bool(args.quick),
        "impls": list(selection["impls"]),
        "timing": timing_doc,
        "flops": "4*s^2*d*h*B per forward, halved when causal; backward 2.5x forward",
        "flex": ("torch.compile(flex_attention, fullgraph=True, dynamic="
                 f"{bool(args.flex_dynamic)}), default mode; causal block mask built per shape "
                 "outside the timed region"),
        "check": None if args.no_check else
        "ours compared per point against fp32 SDPA on the same inputs (rel_err: "
        "||x - ref|| / ||ref||, max over dq, dk, dv for bwd)",
        "argv": sys.argv[1:],
    }
    if args.device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        meta["capability"] = f"{major}.{minor}"
        meta["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        return render(args)
    try:
        selection = parse_selection(args)
    except ValueError as e:
        parser.error(str(e))
    return benchmark(args, selection)


if __name__ == "__main__":
    sys.exit(main())
