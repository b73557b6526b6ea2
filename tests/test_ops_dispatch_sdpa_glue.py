"""The dispatcher's SDPA glue on CPU: everything around the aten SDPA calls (GQA expansion,
lse padding, bias alignment and reduction, position masks folded into the bias, rows without
keys), run against a stand-in for the aten ops that computes their documented math in float64
and enforces their input constraints.  The real ops run in tests/gpu/test_dispatch_sdpa.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import fa_inductor.ops  # noqa: F401  (registers torch.ops.fa)
from fa_inductor.ops import dispatch, library, sdpa
from tests.test_ops_naive import naive_attention, rand_qkv


def _scores(q, k, bias, is_causal, scale):
    x = scale * (q.double() @ k.double().transpose(-1, -2))
    if bias is not None:
        x = x + bias.double()
    if is_causal:  # top-left
        sq, sk = x.shape[-2:]
        keep = torch.ones(sq, sk, dtype=torch.bool).tril()
        x = x.masked_fill(~keep, -math.inf)
    return x


def _grads(grad_out, q, k, v, bias, out, lse, is_causal, scale):
    """Flash-style backward from the given lse (as the kernels do)."""
    x = _scores(q, k, bias, is_causal, scale)
    p = torch.exp(x - lse.double().unsqueeze(-1))
    do = grad_out.double()
    dv = p.transpose(-1, -2) @ do
    dp = do @ v.double().transpose(-1, -2)
    delta = (do * out.double()).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    return scale * ds @ k.double(), scale * ds.transpose(-1, -2) @ q.double(), dv, ds


class StandInAten:
    """The four SDPA ops, with the constraints of their CUDA kernels asserted."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _check_bias(bias, q, k):
        assert bias.dim() == 4 and bias.dtype == q.dtype
        assert tuple(bias.shape) == (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        assert bias.stride(-1) == 1 and bias.storage_offset() % 16 == 0
        assert all(s % 16 == 0 for s, n in zip(bias.stride()[:-1], bias.shape[:-1]) if n > 1)

    def _scaled_dot_product_efficient_attention(self, q, k, v, bias, compute_lse, dropout_p,
                                                is_causal, *, scale):
        self.calls.append("efficient")
        assert compute_lse and dropout_p == 0.0
        assert q.shape[1] == k.shape[1] == v.shape[1], "no GQA in the efficient kernel"
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        if bias is not None:
            self._check_bias(bias, q, k)
        x = _scores(q, k, bias, is_causal, scale)
        lse = torch.logsumexp(x, -1)
        out = torch.exp(x - lse.unsqueeze(-1)) @ v.double()  # nan on rows without keys
        sq = q.shape[2]
        lse_pad = torch.full(q.shape[:2] + (-(-sq // 32) * 32,), float("nan"))
        lse_pad[:, :, :sq] = lse
        return out.to(q.dtype), lse_pad, torch.tensor(0), torch.tensor(0)

    def _scaled_dot_product_efficient_attention_backward(self, grad_out, q, k, v, bias, out,
                                                         lse, seed, offset, dropout_p, mask,
                                                         is_causal, *, scale):
        self.calls.append("efficient_backward")
        assert lse.shape[-1] % 32 == 0 and lse.shape[-1] >= q.shape[2]
        assert q.shape[1] == k.shape[1]
        if bias is not None:
            self._check_bias(bias, q, k)
        dq, dk, dv, ds = _grads(grad_out, q, k, v, bias, out, lse[:, :, :q.shape[2]],
                                is_causal, scale)
        db = ds.to(bias.dtype) if mask[3] else None
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), db

    def _scaled_dot_product_flash_attention(self, q, k, v, dropout_p, is_causal, debug, *,
                                            scale):
        self.calls.append("flash")
        assert q.shape[1] % k.shape[1] == 0
        assert not is_causal or q.shape[2] == k.shape[2]
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        x = _scores(q, k, None, is_causal, scale)
        lse = torch.logsumexp(x, -1)
        out = torch.exp(x - lse.unsqueeze(-1)) @ v.double()
        return (out.to(q.dtype), lse.float(), None, None, q.shape[2], k.shape[2], None, None,
                None)

    def _scaled_dot_product_flash_attention_backward(self, grad_out, q, k, v, out, lse, cq, ck,
                                                     mq, mk, dropout_p, is_causal, seed, offset,
                                                     *, scale):
        self.calls.append("flash_backward")
        assert cq is None and ck is None and (mq, mk) == (q.shape[2], k.shape[2])
        hkv = k.shape[1]
        g = q.shape[1] // hkv
        kr, vr = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        dq, dk, dv, _ = _grads(grad_out, q, kr, vr, None, out, lse, is_causal, scale)
        b, _, sk, d = dk.shape
        dk = dk.view(b, hkv, g, sk, d).sum(2)
        dv = dv.view(b, hkv, g, sk, dv.shape[-1]).sum(2)
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


@pytest.fixture
def stand_in(monkeypatch):
    aten = StandInAten()
    monkeypatch.setattr(sdpa, "_aten", aten)
    return aten


def force(monkeypatch, name):
    choice = dispatch.Choice(name, "forced by the test")
    # Both directions choose (and the select_* functions answer) through _choose.
    monkeypatch.setattr(dispatch, "_choose", lambda *a, **kw: (choice, None))


def check_against_oracle(q, k, v, bias=None, bias_grad=False, scale=0.3, **flags):
    args = dict(causal=False, bottom_right=False, window_left=-1, window_right=-1)
    args.update(flags)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    leaves = [q, k, v]
    if bias_grad:
        bias = bias.detach().requires_grad_()
        leaves.append(bias)
    out, lse = torch.ops.fa.attention_forward(q, k, v, bias, scale, *args.values(), 0.0, 0.0,
                                              None)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, go)

    ref = [t.detach().double().requires_grad_() for t in leaves]
    ref_bias = ref[3] if bias_grad else bias
    w_out, w_lse = naive_attention(*ref[:3], bias=ref_bias, scale=scale, **args)
    w_grads = torch.autograd.grad(w_out, ref, go.double())
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), w_out, **tol)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(w_lse))
    finite = torch.isfinite(w_lse)
    torch.testing.assert_close(lse[finite].double(), w_lse[finite], **tol)
    for got, want in zip(grads, w_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, **tol)
    return out, lse, grads


def test_efficient_gqa_float_bias_gradient_causal_top_left(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_efficient")
    q, k, v = rand_qkv(b=2, hq=4, hkv=2, sq=21, sk=37, d=8)
    bias = torch.randn(1, 4, 1, 37)
    check_against_oracle(q, k, v, bias, bias_grad=True, causal=True)
    assert stand_in.calls == ["efficient", "efficient_backward"]


def test_efficient_window_and_bottom_right_with_bool_bias_and_empty_rows(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_efficient")
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=30, sk=19, d=8)
    keep = torch.rand(30, 19) > 0.3
    keep[:, 0] = True  # row 11 sees key 0 only
    keep[25] = False
    out, lse, (dq, _, _) = check_against_oracle(q, k, v, keep, causal=True, bottom_right=True,
                                                window_left=5)
    # bottom-right with Sq > Sk: the first 11 rows precede every key; row 25 has its keys
    # removed by the bias
    empty = torch.isneginf(lse[0, 0])
    assert empty[:11].all() and empty[25] and not empty[11:25].any()
    assert (out[0, :, :11] == 0).all() and (dq[0, :, 25] == 0).all()


def test_efficient_window_with_2d_float_bias_gradient(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_efficient")
    q, k, v = rand_qkv(b=2, hq=2, hkv=2, sq=17, sk=17, d=8, dv=16)
    bias = torch.randn(17, 17)
    check_against_oracle(q, k, v, bias, bias_grad=True, window_left=3, window_right=2)


def test_efficient_bshd_layout_and_strided_head_dim(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_efficient")
    q, k, v = rand_qkv(b=2, hq=4, hkv=4, sq=9, sk=11, d=8)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)
    check_against_oracle(q, k, v)


def test_flash_gqa_causal_square(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_flash")
    q, k, v = rand_qkv(b=2, hq=6, hkv=2, sq=23, sk=23, d=8)
    check_against_oracle(q, k, v, causal=True, bottom_right=True)
    assert stand_in.calls == ["flash", "flash_backward"]


def test_outputs_are_written_into_the_op_buffers(stand_in, monkeypatch):
    force(monkeypatch, "sdpa_efficient")
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=7, d=8)
    dims = library.validation.check_qkv(q, k, v)
    out, lse = library.empty_forward_outputs(q, dims)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    dispatch.run_forward(q, k, v, None, 0.3, False, False, -1, -1, 0.0, 0.0, None, out, lse)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
