"""The attention benchmark harness (benchmarks/attention.py) on CPU: its arithmetic, grid, writers
and summary on fabricated timings, and its failure handling on a tiny CPU run. The timings
themselves only mean something on the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import attention  # noqa: E402
from attnbench import grid, runner, tables  # noqa: E402
from attnbench.chart import write_chart  # noqa: E402
from attnbench.results import (OK, OOM, SKIPPED, UNSUPPORTED, Record, Run, merge_runs,  # noqa: E402
                               read_json, result_stem, write_json)
from attnbench.timing import cpu_timer, summarize  # noqa: E402


# ---- FLOPs and grid ------------------------------------------------------------------------

def test_flops_follow_the_flashattention3_paper():
    # 4 s^2 d h B: two matmuls of 2 s^2 d FLOPs per head and batch element.
    assert grid.attention_flops(8, 16, 2048, 128, False, "fwd") == 4 * 2048**2 * 128 * 16 * 8
    assert grid.attention_flops(8, 16, 2048, 128, True, "fwd") == 2 * 2048**2 * 128 * 16 * 8
    assert grid.attention_flops(8, 16, 2048, 128, False, "bwd") == 2.5 * 4 * 2048**2 * 128 * 16 * 8
    assert grid.attention_flops(8, 16, 2048, 128, True, "bwd") == 2.5 * 2 * 2048**2 * 128 * 16 * 8
    with pytest.raises(ValueError):
        grid.attention_flops(1, 1, 1, 1, False, "both")


def test_tflops_per_s_converts_milliseconds():
    assert grid.tflops_per_s(2e12, 1000.0) == pytest.approx(2.0)
    assert grid.tflops_per_s(5e11, 1.0) == pytest.approx(500.0)


def test_default_grid_is_the_paper_grid():
    shapes = grid.build_grid()
    assert len(shapes) == 3 * 6 * 2
    assert {s.head_dim for s in shapes} == {64, 128, 256}
    assert {s.seqlen for s in shapes} == {512, 1024, 2048, 4096, 8192, 16384}
    for s in shapes:
        assert s.batch * s.seqlen == 16384  # 16k tokens at every point
        assert s.heads * s.head_dim == 2048  # hidden 2048
    assert grid.make_shape(128, 2048, True) == grid.Shape(128, 2048, True, batch=8, heads=16)
    assert grid.make_shape(256, 16384, False) == grid.Shape(256, 16384, False, batch=1, heads=8)
    # A panel's seqlens run together, in order.
    assert [s.seqlen for s in shapes[:6]] == [512, 1024, 2048, 4096, 8192, 16384]


def test_grid_rejects_shapes_that_break_the_fixed_token_count():
    with pytest.raises(ValueError, match="divide"):
        grid.make_shape(128, 3000, False)
    with pytest.raises(ValueError, match="divide"):
        grid.make_shape(96, 1024, False, hidden=2000)


def test_option_parsing():
    assert grid.parse_int_list("512, 1k,2K,16384") == (512, 1024, 2048, 16384)
    assert grid.parse_int_list("64,64,128") == (64, 128)
    for bad in ("", "12x", "0", "-5"):
        with pytest.raises(ValueError):
            grid.parse_int_list(bad)
    assert grid.parse_causal("both") == (False, True)
    assert grid.parse_causal("yes") == (True,)
    assert grid.parse_causal("no") == (False,)
    with pytest.raises(ValueError):
        grid.parse_causal("maybe")
    assert grid.parse_directions("bwd") == ("bwd",)
    assert grid.parse_directions("fwd,bwd") == ("fwd", "bwd")
    with pytest.raises(ValueError):
        grid.parse_directions("sideways")
    assert grid.seqlen_label(512) == "512" and grid.seqlen_label(16384) == "16k"


def test_quick_selects_a_small_subset_and_impls_are_checked():
    args = attention.build_parser().parse_args(["--quick", "--direction", "fwd"])
    sel = attention.parse_selection(args)
    assert sel["dims"] == grid.QUICK_HEAD_DIMS and sel["seqlens"] == grid.QUICK_SEQLENS
    assert len(sel["shapes"]) == len(grid.QUICK_HEAD_DIMS) * len(grid.QUICK_SEQLENS) * 2
    assert sel["directions"] == ("fwd",)
    assert sel["impls"] == tables.ALL_IMPLS
    with pytest.raises(ValueError, match="unknown"):
        attention.parse_selection(attention.build_parser().parse_args(["--impls", "fa,xformers"]))


# ---- fabricated results ----------------------------------------------------------------------

DEVICE = "NVIDIA H100 80GB HBM3"
META = {"device": DEVICE, "torch": "2.11.0+cu128", "dtype": "bf16",
        "date": "2026-11-23T04:00:00+00:00", "tokens": 16384, "hidden": 2048}
# TFLOP/s per implementation at every point; ratios below follow from these.
FAKE_TFLOPS = {"fa": 300.0, "sdpa-flash": 250.0, "sdpa-cudnn": 600.0, "flex": 400.0}


def _record(impl, shape, direction, tflops=None, status=OK, label=None, detail=""):
    flops = grid.shape_flops(shape, direction)
    ms = flops / (tflops * 1e12) * 1e3 if tflops else None
    return Record(impl=impl, label=label or impl, head_dim=shape.head_dim, seqlen=shape.seqlen,
                  causal=shape.causal, direction=direction, batch=shape.batch,
                  heads=shape.heads, status=status, flops=flops, ms=ms,
                  ms_p20=ms and ms * 0.99, ms_p80=ms and ms * 1.01, tflops=tflops,
                  detail=detail)


def fabricated_run() -> Run:
    run = Run(meta=dict(META))
    for shape in grid.build_grid(head_dims=(64, 128), seqlens=(1024, 4096)):
        for direction in grid.DIRECTIONS:
            for impl, t in FAKE_TFLOPS.items():
                run.records.append(_record(impl, shape, direction, t,
                                           label="fa(sm80)" if impl == "fa" else None))
            run.records.append(_record("sdpa-efficient", shape, direction, status=UNSUPPORTED,
                                       detail="No available kernel"))
    # One point where ours ran out of memory, one where flex did.
    shape = grid.make_shape(128, 4096, True)
    for r in run.records:
        if r.shape == shape and r.direction == "bwd" and r.impl in ("fa", "flex"):
            r.status, r.tflops, r.ms, r.detail = OOM, None, None, "CUDA out of memory"
    return run


def _summary_panel(text: str, title: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        name, *cells = line.strip().rsplit(None, 2)
        rows[name] = cells
    return rows


def test_summary_gives_ours_over_each_peer_per_seqlen():
    text = tables.summary(fabricated_run())
    assert DEVICE in text
    panel = _summary_panel(text, "d=64 non-causal fwd")
    assert panel["ours TFLOP/s"] == ["300.0", "300.0"]
    assert panel["vs best peer"] == ["0.50", "0.50"]  # cuDNN's 600 is the best peer
    assert panel["vs sdpa-flash"] == ["1.20", "1.20"]
    assert panel["vs sdpa-cudnn"] == ["0.50", "0.50"]
    assert panel["vs flex"] == ["0.75", "0.75"]
    assert panel["vs sdpa-efficient"] == ["unsup", "unsup"]
    assert "[ours = fa(sm80)]" in text
    # The failed points say why instead of showing a number.
    panel = _summary_panel(text, "d=128 causal bwd")
    assert panel["ours TFLOP/s"] == ["300.0", "oom"]
    assert panel["vs sdpa-flash"] == ["1.20", "oom"]
    assert panel["vs flex"] == ["0.75", "oom"]


def test_summary_reports_a_failed_peer_and_the_best_remaining_one():
    run = fabricated_run()
    for r in run.records:
        if r.impl == "sdpa-cudnn" and r.head_dim == 64 and not r.causal and r.direction == "fwd":
            r.status, r.tflops = UNSUPPORTED, None
    panel = _summary_panel(tables.summary(run), "d=64 non-causal fwd")
    assert panel["vs sdpa-cudnn"] == ["unsup", "unsup"]
    assert panel["vs best peer"] == ["0.75", "0.75"]  # flex is the best left


def test_point_table_lists_every_impl_and_the_named_ratios():
    run = fabricated_run()
    shape = grid.make_shape(64, 1024, False)
    recs = [r for r in run.records if r.shape == shape and r.direction == "fwd"]
    text = tables.point_table(recs)
    lines = text.splitlines()
    assert lines[0].startswith("d=64 S=1k B=16 H=32 non-causal fwd")
    assert lines[2].split()[0] == "fa(sm80)"  # ours first
    assert "sdpa-efficient     unsupported: No available kernel" in text
    assert lines[-1] == ("  fa(sm80) / best peer (sdpa-cudnn) 0.50;  / sdpa-flash 1.20;"
                         "  / sdpa-cudnn 0.50")


def test_ours_label_names_every_kernel_that_ran():
    shape = grid.make_shape(64, 1024, False)
    recs = [_record("fa", shape, "fwd", 1.0, label="fa(sm90)"),
            _record("fa", shape, "bwd", 1.0, label="fa(sm80)")]
    assert tables.ours_labels(recs) == "fa(sm90|sm80)"
    assert tables.ours_labels(recs[:1]) == "fa(sm90)"


def test_json_round_trip_and_file_name(tmp_path):
    run = fabricated_run()
    run.ablation_note = "no SM90 kernel variants are available yet"
    path = write_json(run, tmp_path / (result_stem(DEVICE, "bf16") + ".json"))
    assert path.name == "attention_NVIDIA_H100_80GB_HBM3_bf16.json"
    assert result_stem(DEVICE, "bf16", quick=True).endswith("_quick")
    data = json.loads(path.read_text())
    assert data["meta"]["device"] == DEVICE
    assert len(data["records"]) == len(run.records)
    back = read_json(path)
    assert back.records == run.records and back.meta == run.meta
    assert back.ablation_note == run.ablation_note
    with pytest.raises(ValueError, match="schema"):
        Run.from_json({"schema": "something else", "records": []})


def test_merge_lets_a_later_run_replace_a_point():
    first, second = fabricated_run(), Run(meta=dict(META))
    shape = grid.make_shape(64, 1024, False)
    second.records.append(_record("fa", shape, "fwd", 999.0, label="fa(sm90)"))
    merged = merge_runs([first, second])
    assert len(merged.records) == len(first.records)
    ours = [r for r in merged.records if r.impl == "fa" and r.shape == shape
            and r.direction == "fwd"]
    assert [r.tflops for r in ours] == [999.0]


def test_markdown_table_names_the_device_and_marks_the_fastest():
    text = tables.markdown(fabricated_run())
    assert f"**{DEVICE}**" in text and "torch 2.11.0+cu128" in text and "bf16" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| direction"))
    assert header.endswith("| 1k | 4k |")
    assert "| fwd | non-causal | 64 | fa(sm80) | 300 | 300 |" in lines
    assert "| | | | sdpa-cudnn | **600** | **600** |" in lines
    assert "| | | | sdpa-efficient | unsup | unsup |" in lines
    assert "| | | | *ours / best peer* | *0.50* | *0.50* |" in lines
    # Every table row has as many cells as the header.
    for line in lines:
        if line.startswith("|"):
            assert line.count("|") == header.count("|"), line


def test_from_json_prints_the_summary_last_and_writes_markdown(tmp_path, capsys):
    path = write_json(fabricated_run(), tmp_path / "run.json")
    md = tmp_path / "table.md"
    assert attention.main(["--from-json", str(path), "--markdown", str(md), "--out",
                           str(tmp_path), "--no-chart"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    assert out[-1] == "=" * 78
    assert any(line.startswith("SUMMARY") for line in out[-80:])
    assert md.read_text() == tables.markdown(read_json(path))


# ---- chart (matplotlib is optional) ----------------------------------------------------------

def test_chart_is_skipped_with_a_note_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert write_chart(fabricated_run(), tmp_path / "c.png") is None
    path = write_json(fabricated_run(), tmp_path / "run.json")
    attention.main(["--from-json", str(path), "--out", str(tmp_path)])
    assert "no PNG chart: matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))


def test_chart_is_a_png_when_matplotlib_is_present(tmp_path):
    pytest.importorskip("matplotlib")
    path = write_chart(fabricated_run(), tmp_path / "c.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- timing statistics and failure classification --------------------------------------------

def test_summarize_takes_the_median_and_the_20_80_percentiles():
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0, 100.0])
    assert t.median_ms == 3.5  # one slow outlier does not move the median far
    assert 1.0 <= t.p20_ms <= t.median_ms <= t.p80_ms <= 100.0
    assert summarize([2.0]).median_ms == 2.0
    with pytest.raises(ValueError):
        summarize([])


def test_failures_are_classified():
    assert runner.classify(torch.cuda.OutOfMemoryError("CUDA out of memory")) == OOM
    assert runner.classify(RuntimeError("No available kernel. Aborting execution.")) == UNSUPPORTED
    assert runner.classify(NotImplementedError("x")) == UNSUPPORTED
    assert runner.classify(RuntimeError("something odd")) == "error"
    assert runner.is_sticky(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not runner.is_sticky(RuntimeError("No available kernel"))


# ---- the run itself, on CPU with tiny shapes -------------------------------------------------

TINY = ["--device", "cpu", "--dtype", "fp32", "--dims", "16", "--seqlens", "32",
        "--tokens", "64", "--hidden", "32", "--cpu-reps", "1", "--warmup-calls", "1",
        "--no-chart"]


def test_cpu_run_records_refusals_and_checks_ours(tmp_path, capsys):
    rc = attention.main(TINY + ["--impls", "fa,sdpa-flash,sdpa-cudnn", "--causal", "yes",
                                "--out", str(tmp_path), "--ablation"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "=" * 78  # the summary comes last
    assert "no SM90 kernel variants are available" in out
    run = read_json(next(tmp_path.glob("attention_CPU*.json")))
    by = {(r.impl, r.direction): r for r in run.records}
    assert set(by) == {(i, d) for i in ("fa", "sdpa-flash", "sdpa-cudnn") for d in ("fwd", "bwd")}
    for d in ("fwd", "bwd"):
        assert by[("sdpa-flash", d)].status == OK and by[("sdpa-flash", d)].ms > 0
        # cuDNN cannot run on CPU: recorded as refused, the run went on.
        assert by[("sdpa-cudnn", d)].status == UNSUPPORTED
        ours = by[("fa", d)]
        assert ours.status == OK, ours.detail
        # No GPU: the dispatcher picks the reference, and the column says so.
        assert ours.label == "fa(reference)"
        assert "dispatcher chose reference" in ours.detail
        assert ours.rel_err is not None and ours.rel_err < 1e-4  # fp32 against fp32 SDPA
    assert by[("fa", "bwd")].method == runner.BWD_RETAINED
    assert run.meta["device"].startswith("CPU")
    assert run.ablation == [] and "no SM90" in run.ablation_note


class _Twice(torch.autograd.Function):
    """Identity whose backward works once per graph, like a compiled graph with donated buffers."""

    @staticmethod
    def forward(ctx, x):
        ctx.calls = 0
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        ctx.calls += 1
        if ctx.calls > 1:
            raise RuntimeError("backward through this graph a second time is not allowed")
        return g


class _FakeImpl:
    id = "fake"

    def __init__(self, forward):
        self._forward = forward

    def setup(self, q, k, v, causal):
        pass

    def context(self):
        import contextlib

        return contextlib.nullcontext()

    def label(self, direction):
        return "fake"

    def note(self, direction):
        return ""

    def forward(self, q, k, v):
        return self._forward(q, k, v)


def _tiny_runner(**kw):
    settings = runner.Settings(dtype=torch.float32, device="cpu", layout="bhsd", fwd_mode="grad",
                               warmup_calls=1, seed=0, check=False, budget_s=None)
    timer, _ = cpu_timer(2)
    r = runner.Runner(settings, timer, lambda: None, **kw)
    return r


def test_backward_falls_back_to_subtracting_the_forward():
    r = _tiny_runner()
    r._impls["fake"] = _FakeImpl(lambda q, k, v: _Twice.apply(q * k + v))
    (rec,) = r.run_shape(grid.make_shape(16, 32, False, tokens=64, hidden=32), ["fake"], ("bwd",))
    assert rec.status == OK, rec.detail
    assert rec.method == runner.BWD_SUBTRACT
    assert "retained-graph failed" in rec.detail


@pytest.mark.parametrize("fwd_mode,autograd", [("grad", True), ("no_grad", False)])
def test_a_forward_timed_alone_runs_in_the_asked_mode(fwd_mode, autograd):
    """A forward "with grad" is a training step's forward: its inputs require grad even where the
    backward is not timed at the point (else it would skip autograd); under no_grad it never
    records a graph."""
    seen = []
    r = _tiny_runner()
    r.s.fwd_mode = fwd_mode

    def forward(q, k, v):
        seen.append(torch.is_grad_enabled() and q.requires_grad)
        return q * k + v

    r._impls["fake"] = _FakeImpl(forward)
    (rec,) = r.run_shape(grid.make_shape(16, 32, False, tokens=64, hidden=32), ["fake"], ("fwd",))
    assert rec.status == OK, rec.detail
    assert seen and all(s == autograd for s in seen)


def test_a_lost_cuda_context_skips_the_rest_instead_of_crashing():
    def crash(q, k, v):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    r = _tiny_runner()
    r._impls["fake"] = _FakeImpl(crash)
    shape = grid.make_shape(16, 32, False, tokens=64, hidden=32)
    recs = r.run_shape(shape, ["fake", "sdpa-flash"], ("fwd", "bwd"))
    assert [(x.impl, x.direction, x.status) for x in recs] == [
        ("fake", "fwd", "error"), ("fake", "bwd", SKIPPED),
        ("sdpa-flash", "fwd", SKIPPED), ("sdpa-flash", "bwd", SKIPPED)]
    assert "context was lost" in recs[-1].detail


def test_help_works_as_a_script():
    result = subprocess.run([sys.executable, str(BENCH_DIR / "attention.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--dims", "--seqlens", "--causal", "--direction", "--impls", "--quick",
                   "--dtype", "--out", "--markdown", "--ablation"):
        assert option in result.stdout


def test_ablation_times_each_variant_the_kernel_exposes(monkeypatch):
    from attnbench import ours

    def sdpa(q, k, v, scale, causal):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                scale=scale)

    def broken(q, k, v, scale, causal):
        raise NotImplementedError("no warp specialisation variant for this head dim")

    variants = {"full": sdpa, "no ping-pong": sdpa, "no warp specialisation": broken}
    monkeypatch.setattr(ours, "ablation_variants", lambda device: (variants, "3 variants"))
    shape = grid.Shape(16, 32, False, batch=2, heads=2)
    records, note = _tiny_runner().run_ablation((False, True), shape=shape)
    assert [(a.variant, a.causal, a.status) for a in records] == [
        ("full", False, OK), ("no ping-pong", False, OK),
        ("no warp specialisation", False, UNSUPPORTED),
        ("full", True, OK), ("no ping-pong", True, OK),
        ("no warp specialisation", True, UNSUPPORTED)]
    assert all(a.tflops > 0 for a in records if a.status == OK)
    assert "batch 2, seqlen 32, 2 heads, head dim 16" in note


def test_ablation_without_variants_times_nothing():
    records, note = _tiny_runner().run_ablation((False,))
    assert records == [] and "no SM90 kernel variants are available" in note


def test_summary_ends_with_what_did_not_run_and_failed_checks():
    run = fabricated_run()
    shape = grid.make_shape(64, 1024, True)
    wrong = next(r for r in run.records if r.impl == "fa" and r.shape == shape
                 and r.direction == "fwd")
    wrong.rel_err, wrong.detail = 0.5, "WRONG? rel_err 5.00e-01 against fp32 SDPA exceeds 0.02"
    run.meta["cuda_context_lost"] = "RuntimeError: CUDA error: an illegal memory access"
    lines = tables.summary(run).splitlines()
    total = len(run.records)
    assert f"points timed: {total - 18} of {total}" in lines
    not_timed = next(line for line in lines if line.startswith("not timed:"))
    assert "sdpa-efficient 16 unsupported" in not_timed
    assert "fa 1 oom" in not_timed and "flex 1 oom" in not_timed
    assert any(line.startswith("CHECK FAILED") and "fa(sm80) d=64 S=1k causal fwd" in line
               for line in lines)
    assert any(line.startswith("CUDA context lost") for line in lines)


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_inputs_are_fresh_normal_data_in_the_asked_layout(layout):
    r = _tiny_runner()
    r.s.layout = layout
    shape = grid.Shape(16, 32, False, batch=2, heads=3)
    q, k, v, grad_out = r.make_inputs(shape, requires_grad=True)
    for t in (q, k, v, grad_out):
        assert t.shape == (2, 3, 32, 16)
        assert 0.8 < t.float().std().item() < 1.2  # normal data, not zeros
    assert not torch.equal(q, k)
    assert q.requires_grad and not grad_out.requires_grad
    # bshd: heads adjacent in memory, as a model's projections leave them.
    assert (q.stride(1) == 16) == (layout == "bshd")
    again = r.make_inputs(shape, requires_grad=False)[0]
    assert torch.equal(again, q.detach())  # seeded per shape


def test_a_spent_time_budget_skips_points_but_writes_everything(tmp_path, capsys):
    rc = attention.main(TINY + ["--impls", "sdpa-flash", "--seqlens", "16,32", "--budget-s",
                                "1e-9", "--out", str(tmp_path), "--tag", "budget",
                                "--markdown", str(tmp_path / "t.md")])
    assert rc == 0
    (path,) = tmp_path.glob("attention_CPU*_budget.json")
    run = read_json(path)
    assert run.records and all(r.status == SKIPPED for r in run.records)
    assert "time budget" in run.records[0].detail
    assert (tmp_path / "t.md").exists()
    assert capsys.readouterr().out.rstrip().endswith("=" * 78)


def test_a_compile_failure_is_described_by_its_root_cause():
    wrapped = RuntimeError(
        "Observed exception\n  Explanation: Dynamo found no exception handler ...\n\n"
        "  Developer debug context: raised exception NotImplementedError('FlexAttention does "
        "not support backward on CPU.')\n\n from user code: ...")
    assert runner.classify(wrapped) == UNSUPPORTED
    text = runner.describe(wrapped)
    assert text.startswith("RuntimeError: raised exception NotImplementedError('FlexAttention "
                           "does not support backward on CPU.')")


def test_compiler_settings_allow_backward_on_a_retained_graph():
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config
    from attnbench import impls

    # torch's own patch() restores the settings; pytest's monkeypatch may undo an attribute of
    # a config module by deleting it, which hides that setting for every later test.
    with functorch_config.patch(donated_buffer=True), dynamo_config.patch(recompile_limit=8):
        impls.configure_compiler()
        # Donated buffers make a compiled backward refuse retain_graph=True (the backward timing).
        assert functorch_config.donated_buffer is False
        assert dynamo_config.recompile_limit >= 256


def test_later_rounds_time_every_point_again_in_reverse_order_and_pool_the_repetitions():
    """A GPU under a power cap runs faster for a while after a pause: the second round takes the
    implementations in the opposite order, so that none is always timed first."""
    from attnbench.timing import Timing

    timed, seen = [], []

    def timer(fn, share=1.0):
        fn()
        direction = "bwd" if fn.__name__ == "bwd" else "fwd"
        timed.append((seen[-1], direction))  # the bwd's forward ran in its prepare
        n = float(len(timed))
        return Timing(n, n, n, (n, n + 0.5))

    settings = runner.Settings(dtype=torch.float32, device="cpu", layout="bhsd", fwd_mode="grad",
                               warmup_calls=1, seed=0, check=False, budget_s=None, rounds=2)
    r = runner.Runner(settings, timer, lambda: None)
    for name in ("a", "b"):
        impl = _FakeImpl(lambda q, k, v, name=name: seen.append(name) or q * k + v)
        impl.id = name
        r._impls[name] = impl
    shape = grid.make_shape(16, 32, False, tokens=64, hidden=32)
    recs = r.run_shape(shape, ["a", "b"], ("fwd", "bwd"))
    first = [("a", "fwd"), ("a", "bwd"), ("b", "fwd"), ("b", "bwd")]
    assert timed == first + first[::-1]
    by = {(x.impl, x.direction): x for x in recs}
    assert [x.status for x in recs] == [OK] * 4
    assert all(x.rounds == 2 for x in recs)
    # a fwd was timed 1st and 8th: samples (1, 1.5, 8, 8.5) pooled.
    assert by[("a", "fwd")].ms == 4.75 and by[("b", "bwd")].ms == 4.75
    assert by[("a", "fwd")].ms_p20 < 4 < 5 < by[("a", "fwd")].ms_p80


def test_a_failing_later_round_keeps_the_first_rounds_numbers():
    from attnbench.timing import Timing

    state = {"round": 0}

    def timer(fn, share=1.0):
        if state["round"] > 0:
            raise RuntimeError("the GPU went away")
        fn()
        return Timing(2.0, 2.0, 2.0, (2.0, 2.0))

    settings = runner.Settings(dtype=torch.float32, device="cpu", layout="bhsd", fwd_mode="grad",
                               warmup_calls=1, seed=0, check=False, budget_s=None, rounds=3)
    r = runner.Runner(settings, timer, lambda: None)
    r._impls["fake"] = _FakeImpl(lambda q, k, v: q * k + v)
    real_later = r._later_rounds

    def later():
        state["round"] = 1
        real_later()

    r._later_rounds = later
    (rec,) = r.run_shape(grid.make_shape(16, 32, False, tokens=64, hidden=32), ["fake"], ("fwd",))
    assert rec.status == OK and rec.ms == 2.0 and rec.rounds == 1
    assert "timing round 2 failed" in rec.detail
