"""The dispatcher's SDPA paths on a real GPU (skipped without CUDA).

Compiled kernels are switched off so the SDPA internals (flash / efficient) take every call they
can; each case checks the dispatcher picked the expected path, poisons the outputs with NaN,
and compares forward and backward against the float64 oracle of tests/test_ops_naive.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import fa_inductor.ops  # noqa: E402,F401
from fa_inductor.ops import dispatch, library  # noqa: E402

try:
    from tests.test_ops_naive import naive_attention
except ImportError:  # tests/gpu is not a package: plain `pytest` may not put the root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.test_ops_naive import naive_attention

TOL = {torch.float16: 4e-3, torch.bfloat16: 2.5e-2, torch.float32: 2e-4}


@pytest.fixture(autouse=True)
def no_kernels(monkeypatch):
    monkeypatch.setenv("FA_INDUCTOR_DISABLE_KERNELS", "1")


def make(shape, dtype, bshd=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if bshd:  # [B, S, H, D] storage viewed as [B, H, S, D]
        b, h, s, d = shape
        t = torch.randn(b, s, h, d, generator=g).transpose(1, 2)
    else:
        t = torch.randn(*shape, generator=g)
    return t.to(device="cuda", dtype=dtype)


def oracle(q, k, v, grad_out, bias, **kw):
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    b = None
    if bias is not None:
        b = bias.detach().cpu()
        if b.dtype != torch.bool:
            b = b.double().requires_grad_()
            leaves.append(b)
    out, lse = naive_attention(*leaves[:3], bias=b, **kw)
    grads = torch.autograd.grad(out, leaves, grad_out.cpu().double())
    return out, lse, grads


def close(got, want, tol, what):
    got = got.detach().cpu().double()
    err = (got - want).abs().max().item()
    bound = tol * (1 + want.abs().max().item())
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def run_case(expected, dtype, B=2, Hq=4, Hkv=4, Sq=67, Sk=67, D=64, Dv=None, bias=None,
             bias_grad=False, causal=False, bottom_right=False, bshd=False, scale=None,
             window_left=-1, window_right=-1):
    Dv = Dv or D
    q = make((B, Hq, Sq, D), dtype, bshd, 1)
    k = make((B, Hkv, Sk, D), dtype, bshd, 2)
    v = make((B, Hkv, Sk, Dv), dtype, bshd, 3)
    scale = 1 / math.sqrt(D) if scale is None else scale
    flags = dict(causal=causal, bottom_right=bottom_right, window_left=window_left,
                 window_right=window_right, softcap=0.0, dropout_p=0.0)
    choice = dispatch.select_forward(q, k, v, bias, **flags)
    assert choice.name == expected, choice

    wl, wr = window_left, window_right
    dims = library.validation.check_forward(q, k, v, bias, scale, causal, bottom_right, wl, wr,
                                            0.0, 0.0, None)
    out, lse = library.empty_forward_outputs(q, dims)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    ran = dispatch.run_forward(q, k, v, bias, scale, causal, bottom_right, wl, wr, 0.0, 0.0,
                               None, out, lse)
    assert ran.name == expected

    grad_out = make(out.shape, dtype, seed=4)
    dq, dk, dv, db = library.empty_backward_outputs(q, k, v, bias, bias_grad)
    for t in (dq, dk, dv, db):
        t.fill_(float("nan"))
    ran = dispatch.run_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                                wl, wr, 0.0, 0.0, None, dq, dk, dv, db if bias_grad else None)
    assert ran.name == dispatch.select_backward(q, k, v, bias, **flags).name

    w_out, w_lse, w_grads = oracle(q, k, v, grad_out, bias, scale=scale, causal=causal,
                                   bottom_right=bottom_right, window_left=wl, window_right=wr)
    tol = TOL[dtype]
    close(out, w_out, tol, "out")
    w_lse_cpu = w_lse
    assert torch.equal(torch.isneginf(lse.cpu()), torch.isneginf(w_lse_cpu)), "empty rows"
    finite = torch.isfinite(w_lse_cpu)
    close(lse.cpu()[finite], w_lse_cpu[finite], 1e-3, "lse")
    for name, got, want in zip(("dq", "dk", "dv", "dbias"), (dq, dk, dv, db), w_grads):
        close(got, want, 4 * tol, name)
    return out, lse, (dq, dk, dv, db)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_causal_square(dtype):
    run_case("sdpa_flash", dtype, causal=True, Sq=130, Sk=130)


def test_flash_bottom_right_square_equals_top_left():
    run_case("sdpa_flash", torch.float16, causal=True, bottom_right=True, Sq=77, Sk=77)


def test_flash_gqa_unequal_lengths_bshd_layout():
    run_case("sdpa_flash", torch.bfloat16, Hq=8, Hkv=2, Sq=100, Sk=131, bshd=True)


def test_efficient_fp32():
    run_case("sdpa_efficient", torch.float32, Sq=45, Sk=90, D=32)


def test_efficient_causal_top_left_unequal_lengths():
    run_case("sdpa_efficient", torch.float16, causal=True, Sq=50, Sk=90)


def test_efficient_float_bias_with_gradient_and_gqa():
    bias = make((1, 4, 1, 77), torch.float16, seed=5)  # Sk = 77: the bias rows need padding
    run_case("sdpa_efficient", torch.float16, Hq=4, Hkv=2, Sq=33, Sk=77, bias=bias,
             bias_grad=True)


def test_efficient_full_bias_fp32_gradient():
    bias = make((2, 1, 40, 48), torch.float32, seed=6)
    run_case("sdpa_efficient", torch.float32, Sq=40, Sk=48, D=32, bias=bias, bias_grad=True,
             causal=True)


def test_efficient_bool_bias_with_a_row_without_keys():
    keep = torch.rand(2, 4, 37, 53, generator=torch.Generator().manual_seed(7)) > 0.3
    keep[1, 2, 5] = False
    out, lse, (dq, _, _, _) = run_case("sdpa_efficient", torch.bfloat16, Sq=37, Sk=53,
                                       bias=keep.cuda())
    assert torch.isneginf(lse[1, 2, 5])
    assert (out[1, 2, 5] == 0).all() and (dq[1, 2, 5] == 0).all()


def test_efficient_bottom_right_causal_unequal_lengths_via_mask():
    # Sq > Sk: the first Sq - Sk rows see no key at all
    run_case("sdpa_efficient", torch.float16, causal=True, bottom_right=True, Sq=90, Sk=50)


def test_efficient_sliding_window_with_bias_gradient_via_mask():
    bias = make((1, 4, 61, 61), torch.bfloat16, seed=11)
    run_case("sdpa_efficient", torch.bfloat16, Sq=61, Sk=61, causal=True, window_left=7,
             bias=bias, bias_grad=True)


def test_op_end_to_end_through_autograd_on_cuda():
    q = make((1, 4, 64, 64), torch.float16, seed=8).requires_grad_()
    k = make((1, 2, 64, 64), torch.float16, seed=9).requires_grad_()
    v = make((1, 2, 64, 64), torch.float16, seed=10).requires_grad_()
    out, lse = torch.ops.fa.attention_forward(q, k, v, None, 0.125, True, False, -1, -1, 0.0,
                                              0.0, None)
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert out.stride() == (64 * 4 * 64, 64, 4 * 64, 1)
