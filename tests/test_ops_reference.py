"""The blockwise reference (fa_inductor/ops/reference.py) against the float64 oracle.

Small blocks (block_q=16, block_k=8) make every case span several tiles, including partial
tiles at the sequence ends and tiles cut by the causal/window band.
"""

from __future__ import annotations

import math

import pytest
import torch

from fa_inductor.ops import library, reference
from fa_inductor.ops.validation import check_forward
from tests.test_ops_naive import naive_attention, rand_qkv

BLOCKS = dict(block_q=16, block_k=8)


def run_reference(q, k, v, *, blocks=BLOCKS, grad_out=None, bias_grad=False, **kw):
    """Forward, and with grad_out also backward, of the reference with explicit block sizes."""
    args = dict(bias=None, scale=1.0 / math.sqrt(q.shape[-1]), causal=False, bottom_right=False,
                window_left=-1, window_right=-1, softcap=0.0, dropout_p=0.0, dropout_seed=None)
    args.update(kw)
    dims = check_forward(q, k, v, *args.values())
    out, lse = library.empty_forward_outputs(q, dims)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    reference.forward_into(q, k, v, *args.values(), out, lse, **blocks)
    if grad_out is None:
        return out, lse
    grads = library.empty_backward_outputs(q, k, v, args["bias"], bias_grad)
    for g in grads:
        g.fill_(float("nan"))
    dq, dk, dv, db = grads
    reference.backward_into(grad_out, q, k, v, out, lse, *args.values(), dq, dk, dv,
                            db if bias_grad else None, **blocks)
    return out, lse, grads


def oracle(q, k, v, grad_out=None, **kw):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    bias = kw.get("bias")
    if bias is not None and bias.dtype != torch.bool:
        kw["bias"] = bias.detach().double().requires_grad_()
        leaves.append(kw["bias"])
    out, lse = naive_attention(*leaves[:3], **kw)
    if grad_out is None:
        return out, lse
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return out, lse, grads


def assert_lse_close(lse, want, **tol):
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(lse[finite].double(), want[finite], **tol)


FEATURES = {
    "plain": dict(),
    "scale": dict(scale=0.731),
    "causal_top_left": dict(causal=True),
    "causal_bottom_right": dict(causal=True, bottom_right=True),
    "window_left": dict(window_left=5),
    "window_right": dict(window_right=3),
    "window_both": dict(window_left=4, window_right=2),
    "window_bottom_right": dict(window_left=6, window_right=0, bottom_right=True),
    "causal_window": dict(causal=True, window_left=9),
    "window_zero": dict(window_left=0, window_right=0),
    "softcap": dict(softcap=1.5),
    "softcap_causal": dict(softcap=3.0, causal=True, bottom_right=True),
}

SHAPES = {
    "gqa_sq_gt_sk": dict(b=2, hq=6, hkv=2, sq=37, sk=29, d=16),
    "mqa_sq_lt_sk": dict(b=1, hq=3, hkv=1, sq=19, sk=45, d=8, dv=12),
    "mha_square": dict(b=2, hq=2, hkv=2, sq=33, sk=33, d=16),
    "one_query": dict(b=1, hq=1, hkv=1, sq=1, sk=21, d=8),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("feature", FEATURES.values(), ids=FEATURES.keys())
def test_forward_and_backward_match_oracle(feature, shape):
    q, k, v = rand_qkv(**shape)
    go = torch.randn(q.shape[:3] + (v.shape[-1],))
    out, lse, (dq, dk, dv, _) = run_reference(q, k, v, grad_out=go, **feature)
    w_out, w_lse, (w_dq, w_dk, w_dv) = oracle(q, k, v, go, **feature)
    tol = dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out.double(), w_out, **tol)
    assert_lse_close(lse, w_lse, **tol)
    torch.testing.assert_close(dq.double(), w_dq, **tol)
    torch.testing.assert_close(dk.double(), w_dk, **tol)
    torch.testing.assert_close(dv.double(), w_dv, **tol)


BIAS_SHAPES = {
    "per_head_key": lambda b, h, sq, sk: (1, h, 1, sk),
    "per_batch_full": lambda b, h, sq, sk: (b, 1, sq, sk),
    "full": lambda b, h, sq, sk: (b, h, sq, sk),
    "2d": lambda b, h, sq, sk: (sq, sk),
    "keys_only": lambda b, h, sq, sk: (sk,),
    "3d_rows": lambda b, h, sq, sk: (h, sq, 1),
}


@pytest.mark.parametrize("make_shape", BIAS_SHAPES.values(), ids=BIAS_SHAPES.keys())
def test_float_bias_and_its_gradient_over_broadcast_dims(make_shape):
    q, k, v = rand_qkv(b=2, hq=4, hkv=2, sq=21, sk=19, d=8)
    bias = torch.randn(make_shape(2, 4, 21, 19))
    go = torch.randn_like(q)
    out, lse, (dq, dk, dv, db) = run_reference(q, k, v, grad_out=go, bias=bias, bias_grad=True,
                                               causal=True)
    w_out, w_lse, (w_dq, w_dk, w_dv, w_db) = oracle(q, k, v, go, bias=bias, causal=True)
    tol = dict(atol=2e-5, rtol=2e-5)
    assert db.shape == bias.shape
    torch.testing.assert_close(out.double(), w_out, **tol)
    torch.testing.assert_close(db.double(), w_db, **tol)
    torch.testing.assert_close(dq.double(), w_dq, **tol)
    torch.testing.assert_close(dk.double(), w_dk, **tol)


def test_bool_bias_keeps_true_keys():
    q, k, v = rand_qkv(b=2, hq=2, hkv=1, sq=17, sk=26, d=8)
    keep = torch.rand(2, 1, 17, 26) > 0.4
    go = torch.randn_like(q)
    out, lse, (dq, dk, dv, _) = run_reference(q, k, v, grad_out=go, bias=keep, window_left=12)
    w_out, w_lse, (w_dq, w_dk, w_dv) = oracle(q, k, v, go, bias=keep, window_left=12)
    tol = dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out.double(), w_out, **tol)
    assert_lse_close(lse, w_lse, **tol)
    torch.testing.assert_close(dk.double(), w_dk, **tol)


def test_rows_without_keys_give_zero_output_minus_inf_lse_and_zero_gradient():
    q, k, v = rand_qkv(b=1, hq=2, hkv=2, sq=12, sk=10, d=8)
    keep = torch.ones(1, 2, 12, 10, dtype=torch.bool)
    keep[0, 1, 3] = False  # row 3 of head 1: every key masked by the bias
    go = torch.randn_like(q)
    # Bottom-right causal with Sq > Sk: rows 0 and 1 (before the key sequence starts) see nothing.
    out, lse, (dq, dk, dv, _) = run_reference(q, k, v, grad_out=go, bias=keep, causal=True,
                                              bottom_right=True)
    empty = torch.zeros(1, 2, 12, dtype=torch.bool)
    empty[:, :, :2] = True
    empty[0, 1, 3] = True
    assert torch.equal(torch.isneginf(lse), empty)
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert torch.equal(dq[empty], torch.zeros_like(dq[empty]))
    w_out, _, (w_dq, w_dk, w_dv) = oracle(q, k, v, go, bias=keep, causal=True, bottom_right=True)
    torch.testing.assert_close(out.double(), w_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(dk.double(), w_dk, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(dv.double(), w_dv, atol=2e-5, rtol=2e-5)


def test_float_bias_of_minus_inf_masks_like_bool():
    q, k, v = rand_qkv(b=1, hq=1, hkv=1, sq=9, sk=9, d=8)
    keep = torch.rand(9, 9) > 0.5
    keep[4] = False
    additive = torch.zeros(9, 9).masked_fill(~keep, -math.inf)
    out_b, lse_b = run_reference(q, k, v, bias=keep)
    out_f, lse_f = run_reference(q, k, v, bias=additive)
    torch.testing.assert_close(out_f, out_b)
    assert_lse_close(lse_f, lse_b.double())
    assert torch.isneginf(lse_f[0, 0, 4])


def test_rows_fully_masked_by_a_huge_finite_bias_match_eager_forward_and_backward():
    # HF fills masks with finfo.min; a left-padded row has every key masked, and eager then
    # averages all keys uniformly.  lse = finfo.min + log(Sk) rounds to finfo.min in fp32, so
    # the backward must not rebuild probabilities from it.
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=6, sk=6, d=8, requires_grad=True)
    bias = torch.zeros(1, 1, 6, 6)
    bias[..., 0, :] = torch.finfo(torch.float32).min
    bias[..., 1, 3:] = torch.finfo(torch.float32).min
    go = torch.randn(1, 2, 6, 8)

    def eager(q, k, v):
        kk, vv = (t.repeat_interleave(2, dim=1) for t in (k, v))
        return torch.softmax(q @ kk.transpose(-1, -2) * 0.3 + bias, -1) @ vv

    def ours(q, k, v):
        return torch.ops.fa.attention_forward(q, k, v, bias, 0.3, False, False, -1, -1, 0.0, 0.0,
                                              None)[0]

    want = torch.autograd.grad(eager(q, k, v), (q, k, v), go)
    got = torch.autograd.grad(ours(q, k, v), (q, k, v), go)
    torch.testing.assert_close(ours(q, k, v), eager(q, k, v))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocks", [dict(block_q=1, block_k=1), dict(block_q=7, block_k=64),
                                    dict(block_q=64, block_k=3)], ids=str)
def test_result_does_not_depend_on_tiling(blocks):
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=23, sk=31, d=8)
    kw = dict(causal=True, bottom_right=True, window_left=7, softcap=2.0)
    out, lse = run_reference(q, k, v, blocks=blocks, **kw)
    w_out, w_lse = oracle(q, k, v, **kw)
    torch.testing.assert_close(out.double(), w_out, atol=2e-5, rtol=2e-5)
    assert_lse_close(lse, w_lse, atol=2e-5, rtol=2e-5)


def test_float64_inputs_are_computed_in_float64():
    q, k, v = rand_qkv(dtype=torch.float64)
    go = torch.randn(q.shape[:3] + (v.shape[-1],), dtype=torch.float64)
    out, lse, (dq, dk, dv, _) = run_reference(q, k, v, grad_out=go, causal=True, softcap=4.0)
    w_out, w_lse, (w_dq, w_dk, w_dv) = oracle(q, k, v, go, causal=True, softcap=4.0)
    assert out.dtype == dq.dtype == torch.float64 and lse.dtype == torch.float32
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, w_out, **tol)
    torch.testing.assert_close(dq, w_dq, **tol)
    torch.testing.assert_close(dk, w_dk, **tol)
    torch.testing.assert_close(dv, w_dv, **tol)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["bf16", "fp16"])
def test_half_precision_inputs_within_their_tolerance(dtype, tol):
    q, k, v = rand_qkv(dtype=dtype)
    bias = torch.randn(1, 4, 1, k.shape[2], dtype=dtype)
    go = torch.randn(q.shape, dtype=dtype)
    out, lse, (dq, dk, dv, db) = run_reference(q, k, v, grad_out=go, bias=bias, bias_grad=True,
                                               causal=True, bottom_right=True)
    w_out, w_lse, (w_dq, w_dk, w_dv, w_db) = oracle(q, k, v, go, bias=bias, causal=True,
                                                    bottom_right=True)
    assert out.dtype == dq.dtype == dk.dtype == dv.dtype == db.dtype == dtype
    for got, want in ((out, w_out), (dq, w_dq), (dk, w_dk), (dv, w_dv), (db, w_db)):
        torch.testing.assert_close(got.double(), want, atol=tol * 4, rtol=tol)
    assert_lse_close(lse, w_lse, atol=1e-4, rtol=1e-4)  # lse is fp32 from upcast inputs


def test_empty_key_sequence():
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=0, d=8)
    out, lse = run_reference(q, k, v)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()


def test_causal_tiles_past_the_diagonal_are_skipped():
    band = reference._Band.of(64, 64, causal=True, bottom_right=False, window_left=-1,
                              window_right=-1)
    assert band.key_range(0, 16) == (0, 16)
    assert band.key_range(48, 64) == (0, 64)
    window = reference._Band.of(64, 64, causal=True, bottom_right=False, window_left=8,
                                window_right=-1)
    assert window.key_range(32, 48) == (24, 48)
    assert window.covers(40, 41, 33, 40) and not window.covers(32, 48, 24, 48)


@pytest.fixture
def one_thread():
    # On a small shared CPU, OpenMP threads that wait on each other cost far more than they
    # give; one thread keeps this test's run time steady.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_32k_token_sequence_runs_forward_on_cpu(one_thread):
    """Memory stays O(S * block): a full 32k x 32k fp32 score matrix alone would be 4 GiB."""
    s = 32768
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, s, 64, generator=g) for _ in range(3))
    rows = torch.tensor([0, 1, 4097, s // 2 + 3, s - 1])
    for causal in (False, True):
        out, lse = reference.attention(q, k, v, causal=causal)
        for i in rows.tolist():
            n = i + 1 if causal else s
            x = (q[0, 0, i].double() @ k[0, 0, :n].double().T) / 8.0
            p = torch.softmax(x, dim=-1)
            torch.testing.assert_close(out[0, 0, i].double(), p @ v[0, 0, :n].double(),
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lse[0, 0, i].double(), torch.logsumexp(x, -1),
                                       atol=1e-4, rtol=1e-5)
