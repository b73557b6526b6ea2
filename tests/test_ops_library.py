"""The registered ops: opcheck, fake/real agreement of shapes and strides, autograd wiring and
argument validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import (
    DimDynamic,
    ShapeEnv,
    StatelessSymbolicContext,
    statically_known_true,
)

import fa_inductor.ops  # noqa: F401  (registers torch.ops.fa)
from fa_inductor.ops import dispatch
from tests.test_ops_naive import naive_attention, rand_qkv

FWD = torch.ops.fa.attention_forward.default
BWD = torch.ops.fa.attention_backward.default
SEED = torch.tensor([77], dtype=torch.int64)


def layouts():
    """(q, k, v) in several memory layouts, all with the same values."""
    q, k, v = rand_qkv(b=2, hq=4, hkv=2, sq=11, sk=9, d=8, dv=6)
    yield "contiguous", (q, k, v)
    # [B, S, H, D] storage seen as [B, H, S, D], as models produce after a projection
    yield "bshd", tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    # last dim not contiguous
    yield "head_dim_strided", tuple(t.transpose(-1, -2).contiguous().transpose(-1, -2)
                                    for t in (q, k, v))
    # a slice of a bigger buffer (offset storage, gaps between rows)
    big = torch.randn(2, 4, 11, 20)
    big[..., 3:11] = q
    yield "sliced", (big[..., 3:11], k, v)


LAYOUTS = dict(layouts())


def fwd_args(q, k, v, bias=None, p=0.0, **kw):
    args = dict(scale=0.35, causal=True, bottom_right=True, window_left=-1, window_right=-1,
                softcap=0.0)
    args.update(kw)
    return (q, k, v, bias, *args.values(), p, SEED if p > 0 else None)


def bwd_args(fargs, out, lse, grad_out, bias_requires_grad):
    q, k, v, bias, scale, causal, br, wl, wr, softcap, p, seed = fargs
    return (grad_out, q, k, v, out, lse, bias, scale, causal, br, wl, wr, softcap, p, seed,
            bias_requires_grad)


# ----------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("layout,variant", [("contiguous", "plain"),
                                            ("bshd", "float_bias_dropout"),
                                            ("sliced", "bool_bias_window")])
def test_opcheck(layout, variant):
    q, k, v = (t.detach().requires_grad_() for t in LAYOUTS[layout])
    if variant == "plain":
        fargs = fwd_args(q, k, v)
        brg = False
    elif variant == "float_bias_dropout":
        bias = torch.randn(1, 4, 1, 9, requires_grad=True)
        fargs = fwd_args(q, k, v, bias=bias, p=0.25, softcap=2.0)
        brg = True
    else:
        bias = torch.rand(11, 9) > 0.3
        fargs = fwd_args(q, k, v, bias=bias, causal=False, window_left=3, window_right=1)
        brg = False
    torch.library.opcheck(FWD, fargs)
    out, lse = FWD(*fargs)
    grad_out = torch.randn(out.shape).transpose(1, 2).contiguous().transpose(1, 2)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in fargs)
    torch.library.opcheck(BWD, bwd_args(detached, out.detach(), lse, grad_out, brg))


# ----------------------------------------------------------------------------- fake vs real


def meta_of(ts):
    return [(tuple(t.shape), tuple(t.stride()), t.dtype) for t in ts]


@pytest.mark.parametrize("layout", LAYOUTS.keys())
@pytest.mark.parametrize("bias_requires_grad", [False, True])
def test_fake_outputs_have_the_real_shapes_and_strides(layout, bias_requires_grad):
    q, k, v = LAYOUTS[layout]
    bias = torch.randn(2, 1, 11, 9).transpose(2, 3).contiguous().transpose(2, 3)
    fargs = fwd_args(q, k, v, bias=bias)
    out, lse = FWD(*fargs)
    grad_out = torch.randn(out.shape)
    bargs = bwd_args(fargs, out, lse, grad_out, bias_requires_grad)
    real_f, real_b = FWD(*fargs), BWD(*bargs)
    with FakeTensorMode() as mode:
        fake = lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a  # noqa: E731
        fake_f = FWD(*map(fake, fargs))
        fake_b = BWD(*map(fake, bargs))
    assert meta_of(fake_f) == meta_of(real_f)
    assert meta_of(fake_b) == meta_of(real_b)
    out, lse = real_f
    assert out.transpose(1, 2).is_contiguous() and lse.is_contiguous()
    dq, dk, dv, db = real_b
    assert all(t.transpose(1, 2).is_contiguous() for t in (dq, dk, dv))
    assert db.shape == (bias.shape if bias_requires_grad else (0,))
    assert db.is_contiguous()


def same(got, want) -> bool:
    """Equal as symbolic expressions (not merely for the current hint values)."""
    return len(got) == len(want) and all(
        statically_known_true(a == b) for a, b in zip(got, want))


def test_fake_outputs_with_symbolic_sizes():
    mode = FakeTensorMode(shape_env=ShapeEnv())
    dyn = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 4)

    def sym(t):
        return mode.from_tensor(t, symbolic_context=dyn)

    q, k, v = rand_qkv(b=3, hq=6, hkv=2, sq=13, sk=17, d=8, dv=12)
    bias = torch.randn(1, 6, 13, 17)
    q_bshd = q.transpose(1, 2)
    with mode:
        fq, fk, fv, fb = sym(q_bshd).transpose(1, 2), sym(k), sym(v), sym(bias)
        b, hq, sq, d = fq.shape
        hkv, skv, dv = fk.shape[1], fk.shape[2], fv.shape[3]
        out, lse = FWD(fq, fk, fv, fb, 0.5, True, False, -1, -1, 0.0, 0.0, None)
        assert same(out.shape, (b, hq, sq, dv))
        assert same(out.stride(), (sq * hq * dv, dv, hq * dv, 1))
        assert same(lse.shape, (b, hq, sq)) and same(lse.stride(), (hq * sq, sq, 1))
        dq, dk, dv_, db = BWD(out, fq, fk, fv, out, lse, fb, 0.5, True, False, -1, -1, 0.0,
                              0.0, None, True)
        assert same(dq.shape, fq.shape) and same(dq.stride(), (sq * hq * d, d, hq * d, 1))
        assert same(dk.stride(), (skv * hkv * d, d, hkv * d, 1))
        assert same(dv_.stride(), (skv * hkv * dv, dv, hkv * dv, 1))
        assert same(db.shape, fb.shape) and same(db.stride(), fb.stride())
    assert isinstance(sq, torch.SymInt) and isinstance(dv, torch.SymInt)


def test_compiles_with_dynamic_shapes_under_aot_eager():
    def f(q, k, v, bias):
        out, _ = FWD(q, k, v, bias, 0.3, True, True, 2, -1, 0.0, 0.0, None)
        return out.transpose(1, 2).sum(-1)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=True)
    for sq, sk in ((7, 9), (12, 5)):
        q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=sq, sk=sk, d=8, requires_grad=True)
        bias = torch.randn(1, 2, 1, sk, requires_grad=True)
        got = compiled(q, k, v, bias)
        want = f(q, k, v, bias)
        torch.testing.assert_close(got, want)
        g_got = torch.autograd.grad(got.sum(), (q, k, v, bias))
        g_want = torch.autograd.grad(want.sum(), (q, k, v, bias))
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- autograd


@pytest.fixture
def backward_calls(monkeypatch):
    calls = []
    real = dispatch.run_backward

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(dispatch, "run_backward", spy)
    return calls


def test_gradients_match_oracle_through_autograd():
    q, k, v = rand_qkv(b=2, hq=4, hkv=2, sq=10, sk=12, d=8, requires_grad=True)
    bias = torch.randn(2, 1, 10, 12, requires_grad=True)
    out, lse = FWD(*fwd_args(q, k, v, bias=bias, softcap=3.0, window_left=4))
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, bias), go)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    want_out, _ = naive_attention(*ref[:3], bias=ref[3], scale=0.35, causal=True,
                                  bottom_right=True, softcap=3.0, window_left=4)
    want = torch.autograd.grad(want_out, ref, go.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=2e-5)
    assert not lse.requires_grad


@pytest.mark.parametrize("flags", [
    dict(causal=True, bottom_right=True, softcap=1.5),
    dict(causal=False, bottom_right=False, window_left=1, window_right=2),
], ids=["causal_softcap", "window"])
def test_gradcheck_in_float64(flags):
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=4, sk=6, d=3, dtype=torch.float64,
                       requires_grad=True)
    bias = torch.randn(2, 1, 6, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, bias):
        return FWD(*fwd_args(q, k, v, bias=bias, **flags))[0]

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


def test_bias_gradient_only_when_the_bias_requires_it(backward_calls):
    q, k, v = rand_qkv(b=1, hq=2, hkv=2, sq=5, sk=6, d=4, requires_grad=True)
    bias = torch.randn(1, 2, 5, 6)  # no requires_grad
    out, _ = FWD(*fwd_args(q, k, v, bias=bias))
    out.sum().backward()
    dbias_arg = backward_calls[-1][-1]
    assert dbias_arg is None
    assert q.grad is not None and bias.grad is None


def test_bool_bias_and_seed_get_no_gradient(backward_calls):
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=6, d=4, requires_grad=True)
    keep = torch.rand(5, 6) > 0.2
    out, _ = FWD(*fwd_args(q, k, v, bias=keep, p=0.2))
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    assert backward_calls[-1][-1] is None
    assert torch.isfinite(gq).all()


def test_plain_tensors_reach_the_implementation_without_a_second_dispatch(redispatched):
    """Below the Autograd key a plain tensor has only its backend key left, so the autograd
    kernel calls the implementation itself (another trip through the dispatcher is host time on
    every call); with anything else below it (here fake tensors) it redispatches."""
    from torch._subclasses.fake_tensor import FakeTensor

    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=6, d=4)
    out, _ = FWD(*fwd_args(q, k, v))
    qg = q.detach().requires_grad_()
    out_g, _ = FWD(*fwd_args(qg, k, v))
    assert redispatched == []
    torch.testing.assert_close(out_g.detach(), out)
    assert out_g.grad_fn is not None
    with FakeTensorMode():
        fq, fk, fv = (torch.empty(t.shape) for t in (q, k, v))
        fake_out, _ = FWD(*fwd_args(fq, fk, fv))
    assert isinstance(fake_out, FakeTensor) and len(redispatched) == 1


def test_the_backward_calls_its_implementation_unless_something_would_intercept_the_op(
        backward_calls, monkeypatch):
    """With plain tensors the autograd formula runs the backward implementation itself (no trip
    through the dispatcher); under a dispatch mode it calls the op, so the mode sees one
    fa.attention_backward, and the gradients are the same."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fa_inductor.ops import library

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    op_calls = []
    real = library._BACKWARD
    monkeypatch.setattr(library, "_BACKWARD", lambda *a: op_calls.append(a) or real(*a))
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=5, sk=6, d=4, requires_grad=True)
    out, _ = FWD(*fwd_args(q, k, v))
    go = torch.randn_like(out)
    direct = torch.autograd.grad(out, (q, k, v), go, retain_graph=True)
    assert op_calls == [] and len(backward_calls) == 1
    with Log() as log:
        seen = torch.autograd.grad(out, (q, k, v), go, retain_graph=True)
    assert len(op_calls) == 1 and log.ops.count(BWD) == 1
    for a, b in zip(seen, direct):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- validation


def _bad_cases():
    q, k, v = rand_qkv(b=2, hq=4, hkv=2, sq=5, sk=6, d=8)
    ok = dict(q=q, k=k, v=v, bias=None, scale=0.3, causal=False, bottom_right=False,
              window_left=-1, window_right=-1, softcap=0.0, dropout_p=0.0, dropout_seed=None)

    def case(error, match, **change):
        return pytest.param({**ok, **change}, error, match, id=match.split(" ")[0] + "-" +
                            "-".join(change))

    return [
        case(ValueError, "rank 4", q=q[0]),
        case(ValueError, "multiple of key/value heads", k=torch.randn(2, 3, 6, 8),
             v=torch.randn(2, 3, 6, 8)),
        case(ValueError, "batch sizes differ", k=k[:1], v=v[:1]),
        case(ValueError, "head dims differ", k=torch.randn(2, 2, 6, 4)),
        case(ValueError, "sequence lengths differ", v=torch.randn(2, 2, 7, 8)),
        case(TypeError, "share one dtype", k=k.double()),
        case(TypeError, "fp16/bf16/fp32/fp64", q=q.int(), k=k.int(), v=v.int()),
        case(ValueError, "does not broadcast", bias=torch.randn(3, 6)),
        case(ValueError, "rank > 4", bias=torch.randn(1, 2, 4, 5, 6)),
        case(TypeError, "floating or bool", bias=torch.ones(5, 6, dtype=torch.int32)),
        case(ValueError, "scale must be finite", scale=math.inf),
        case(ValueError, "dropout_p must be in", dropout_p=1.0, dropout_seed=SEED),
        case(ValueError, "dropout_p must be in", dropout_p=-0.1),
        case(ValueError, "window_left must be >= -1", window_left=-2),
        case(ValueError, "window_right must be >= -1", window_right=-3),
        case(ValueError, "softcap must be finite and >= 0", softcap=-1.0),
        case(ValueError, "needs a dropout_seed", dropout_p=0.1),
        case(ValueError, "int64 tensor with one element", dropout_p=0.1,
             dropout_seed=torch.tensor([1, 2])),
        case(ValueError, "int64 tensor with one element", dropout_p=0.1,
             dropout_seed=torch.tensor([1], dtype=torch.int32)),
    ]


@pytest.mark.parametrize("args,error,match", _bad_cases())
def test_bad_arguments_raise_readable_errors_eagerly_and_while_tracing(args, error, match):
    with pytest.raises(error, match=match):
        FWD(*args.values())
    with FakeTensorMode() as mode:
        fake = {n: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                for n, a in args.items()}
        with pytest.raises(error, match=match):
            FWD(*fake.values())


def test_backward_rejects_mismatched_lse_and_bias_grad_without_float_bias():
    q, k, v = rand_qkv(b=1, hq=2, hkv=2, sq=5, sk=6, d=4)
    out, lse = FWD(*fwd_args(q, k, v))
    go = torch.randn_like(out)
    with pytest.raises(ValueError, match="lse must have shape"):
        BWD(*bwd_args(fwd_args(q, k, v), out, lse[:, :1], go, False))
    with pytest.raises(ValueError, match="needs a floating bias"):
        BWD(*bwd_args(fwd_args(q, k, v), out, lse, go, True))
    with pytest.raises(ValueError, match="grad_out must have shape"):
        BWD(*bwd_args(fwd_args(q, k, v), out, lse, go[:, :, :2], False))


@pytest.mark.inductor
def test_inductor_keeps_the_op_strides_forward_and_backward():
    """Inductor checks every fallback output with assert_size_stride: the fakes' strides must be
    the real ones, for inputs that are transposed views of projections (as in models)."""

    def f(x, wq, wk, wv, bias):
        b, s, _ = x.shape
        q = (x @ wq).view(b, s, 4, 8).transpose(1, 2)
        k = (x @ wk).view(b, s, 2, 8).transpose(1, 2)
        v = (x @ wv).view(b, s, 2, 8).transpose(1, 2)
        out, _ = FWD(q, k, v, bias, 0.3, True, False, -1, -1, 0.0, 0.0, None)
        return out.transpose(1, 2).reshape(b, s, 32)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 16, generator=g)
    params = [torch.randn(16, n, generator=g, requires_grad=True) for n in (32, 16, 16)]
    params.append(torch.randn(1, 4, 1, 10, generator=g, requires_grad=True))
    compiled = torch.compile(f, backend="inductor", fullgraph=True)
    got = compiled(x, *params)
    go = torch.randn(got.shape, generator=g)
    got_grads = torch.autograd.grad(got, params, go)
    want = f(x, *params)
    want_grads = torch.autograd.grad(want, params, go)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_a_dead_functorch_wrapper_is_taken_for_its_value_as_autograd_function_apply_does():
    """The autograd kernel calls autograd.Function's C entry itself, unwrapping the op's
    tensors as Function.apply would (a tensor that escaped a torch.func transform)."""
    escaped = []

    def f(x):
        escaped.append(x)
        return x.sum()

    torch.func.grad(f)(torch.randn(1, 1, 8, 16))
    dead = escaped[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    k = torch.randn(1, 1, 8, 16, requires_grad=True)
    v = torch.randn(1, 1, 8, 16)
    out, _ = torch.ops.fa.attention_forward(dead, k, v, None, 0.25, False, False, -1, -1, 0.0,
                                            0.0, None)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(out)
    out.sum().backward()
    q = torch._C._functorch.get_unwrapped(dead).detach()
    kk = k.detach().requires_grad_()
    want = torch.softmax(q @ kk.transpose(-1, -2) * 0.25, -1) @ v
    want.sum().backward()
    torch.testing.assert_close(out.detach(), want.detach())
    torch.testing.assert_close(k.grad, kk.grad)
