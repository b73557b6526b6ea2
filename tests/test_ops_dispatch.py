"""The dispatcher's decisions, on CPU: a stand-in kernel backend, and the SDPA rules judged on
fake CUDA tensors (the SDPA calls themselves run in tests/gpu/test_dispatch_sdpa.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

import fa_inductor.ops  # noqa: F401  (registers torch.ops.fa)
from fa_inductor.ops import dispatch, reference, sdpa
from tests.test_ops_naive import rand_qkv

FWD = torch.ops.fa.attention_forward.default
FLAGS = dict(causal=False, bottom_right=False, window_left=-1, window_right=-1, softcap=0.0,
             dropout_p=0.0)


@dataclass
class StandInBackend:
    """A KernelBackend that supports calls without bias/dropout and computes with the reference."""

    name: str = "sm80"
    forward_calls: list = field(default_factory=list)
    backward_calls: list = field(default_factory=list)

    def forward_unsupported(self, q, k, v, bias, causal, bottom_right, window_left, window_right,
                            softcap, dropout_p):
        if bias is not None:
            return "no bias in this kernel"
        return "no dropout in this kernel" if dropout_p > 0 else None

    backward_unsupported = forward_unsupported

    def forward(self, q, k, v, scale, causal, bottom_right, window_left, window_right, softcap,
                out, lse):
        self.forward_calls.append((q, k, v, out, lse))
        reference.forward_into(q, k, v, None, scale, causal, bottom_right, window_left,
                               window_right, softcap, 0.0, None, out, lse)

    def backward(self, grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                 window_right, softcap, dq, dk, dv, deterministic):
        self.backward_calls.append(dict(tensors=(grad_out, q, k, v, out), outs=(dq, dk, dv),
                                        deterministic=deterministic))
        reference.backward_into(grad_out, q, k, v, out, lse, None, scale, causal, bottom_right,
                                window_left, window_right, softcap, 0.0, None, dq, dk, dv, None)


@pytest.fixture
def backend(monkeypatch):
    b = StandInBackend()
    monkeypatch.setattr(dispatch, "_kernel_backend", lambda device: b)
    return b


def test_cpu_without_kernels_runs_the_reference():
    q, k, v = rand_qkv()
    choice = dispatch.select_forward(q, k, v, None, **FLAGS)
    assert choice == dispatch.Choice("reference", "no CUDA device (cpu)")
    assert dispatch.select_backward(q, k, v, None, **FLAGS).name == "reference"


def test_missing_kernel_package_counts_as_no_kernels(monkeypatch):
    monkeypatch.setattr(dispatch, "_GET_BACKEND", None)  # not imported yet
    monkeypatch.setitem(sys.modules, "fa_inductor.kernels", None)  # import now raises
    assert dispatch._kernel_backend(torch.device("cuda", 0)) is None


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FA_INDUCTOR_DISABLE_KERNELS", "1")
    assert dispatch._kernel_backend(torch.device("cpu")) is None


def test_supported_call_runs_the_kernel_into_the_preallocated_outputs(backend):
    # The last dim of q is strided: kernels get it made contiguous.
    q, k, v = rand_qkv(b=1, hq=4, hkv=2, sq=9, sk=7, d=8, requires_grad=True)
    q_strided = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    out, lse = FWD(q_strided, k, v, None, 0.3, True, True, -1, -1, 0.0, 0.0, None)
    ((kq, kk, kv, kout, klse),) = backend.forward_calls
    assert kq.stride(-1) == 1 and torch.equal(kq, q_strided)
    assert kout.data_ptr() == out.data_ptr() and klse.data_ptr() == lse.data_ptr()
    want, want_lse = reference.attention(q.detach(), k.detach(), v.detach(), scale=0.3,
                                         causal=True, bottom_right=True)
    torch.testing.assert_close(out, want)

    torch.use_deterministic_algorithms(True)
    try:
        grads = torch.autograd.grad(out.sum(), (q_strided, k, v))
    finally:
        torch.use_deterministic_algorithms(False)
    (call,) = backend.backward_calls
    assert call["deterministic"] is True
    assert all(t.stride(-1) == 1 for t in call["tensors"])
    assert [g.data_ptr() for g in grads] == [g.data_ptr() for g in call["outs"]]


def test_unsupported_call_falls_through_with_the_kernels_reason(backend):
    q, k, v = rand_qkv(b=1, hq=2, hkv=2, sq=5, sk=5, d=8)
    bias = torch.randn(5, 5)
    choice = dispatch.select_forward(q, k, v, bias, **FLAGS)
    assert choice.name == "reference"
    assert "sm80: no bias in this kernel" in choice.reason
    assert "SDPA" in choice.reason
    out, _ = FWD(q, k, v, bias, 0.3, False, False, -1, -1, 0.0, 0.0, None)
    assert backend.forward_calls == []
    torch.testing.assert_close(out, reference.attention(q, k, v, bias, scale=0.3)[0])


def test_forward_and_backward_name_their_own_kernel_family(backend):
    """On Hopper the forward and the backward may run different kernel families; each choice
    says which ran."""
    backend.forward_name = "sm90"
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=4, sk=6, d=8)
    assert dispatch.select_forward(q, k, v, None, **FLAGS).name == "sm90"
    assert dispatch.select_backward(q, k, v, None, **FLAGS).name == "sm80"
    bias = torch.zeros(4, 6)
    assert "sm90: no bias" in dispatch.select_forward(q, k, v, bias, **FLAGS).reason
    # A backend with SM90 backward kernels names the family per call (by head dim).
    backend.backward_family = lambda q, v: "sm90" if q.size(-1) <= 128 else "sm80"
    assert dispatch.select_backward(q, k, v, None, **FLAGS).name == "sm90"
    q2, k2, v2 = rand_qkv(b=1, hq=2, hkv=1, sq=4, sk=6, d=192)
    assert dispatch.select_backward(q2, k2, v2, None, **FLAGS).name == "sm80"


def test_run_returns_the_choice_it_executed(backend):
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=4, sk=6, d=8)
    out = torch.empty(1, 4, 2, 8).transpose(1, 2)
    lse = torch.empty(1, 2, 4)
    choice = dispatch.run_forward(q, k, v, None, 0.5, False, False, -1, -1, 0.0, 0.0, None,
                                  out, lse)
    assert choice == dispatch.select_forward(q, k, v, None, **FLAGS)
    assert choice.name == "sm80"


# ----------------------------------------------------------------------------- SDPA rules


@pytest.fixture
def fake_cuda(monkeypatch):
    """Fake CUDA tensors on this CPU machine, with a pretend sm90 GPU and no kernels."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dispatch, "_kernel_backend", lambda device: None)
    mode = FakeTensorMode()

    def make(*shape, dtype=torch.float16):
        with mode:
            return torch.empty(*shape, dtype=dtype, device="cuda")

    return make


def sdpa_choice(make, sq=64, sk=64, d=64, dv=None, hkv=8, dtype=torch.float16, bias=False,
                **flags):
    q = make(2, 8, sq, d, dtype=dtype)
    k = make(2, hkv, sk, d, dtype=dtype)
    v = make(2, hkv, sk, dv or d, dtype=dtype)
    b = make(1, 8, sq, sk, dtype=dtype) if bias else None
    return dispatch.select_forward(q, k, v, b, **{**FLAGS, **flags})


@pytest.mark.parametrize("expected,kw", [
    ("sdpa_flash", dict()),
    ("sdpa_flash", dict(dtype=torch.bfloat16, hkv=2, causal=True)),
    ("sdpa_flash", dict(causal=True, bottom_right=True)),  # square: alignments agree
    ("sdpa_flash", dict(d=72)),
    ("sdpa_efficient", dict(dtype=torch.float32)),
    ("sdpa_efficient", dict(bias=True)),
    ("sdpa_efficient", dict(causal=True, sq=32, sk=64)),  # flash is_causal needs Sq == Sk
    ("sdpa_efficient", dict(d=64, dv=32)),
    # position masks SDPA's top-left is_causal cannot express reach the efficient kernel as a mask
    ("sdpa_efficient", dict(causal=True, bottom_right=True, sq=32, sk=64)),
    ("sdpa_efficient", dict(window_left=16)),
    ("sdpa_efficient", dict(window_right=0, bias=True, dtype=torch.float32)),
    ("reference", dict(window_left=16, sq=8192, sk=16384)),  # that mask would be too big
    ("reference", dict(softcap=30.0)),
    ("reference", dict(dropout_p=0.1)),
    ("reference", dict(dtype=torch.float64)),
    ("reference", dict(d=4)),  # efficient needs multiples of 8 halfs
], ids=lambda x: x if isinstance(x, str) else "-".join(f"{k}={v}" for k, v in x.items()))
def test_sdpa_rules(fake_cuda, expected, kw):
    assert sdpa_choice(fake_cuda, **kw).name == expected


def test_sdpa_can_be_switched_off(fake_cuda, monkeypatch):
    monkeypatch.setenv("FA_INDUCTOR_DISABLE_SDPA", "1")
    choice = sdpa_choice(fake_cuda)
    assert choice.name == "reference" and "FA_INDUCTOR_DISABLE_SDPA" in choice.reason


def test_disabled_flash_sdp_backend_is_respected(fake_cuda):
    previous = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        assert sdpa_choice(fake_cuda).name == "sdpa_efficient"
    finally:
        torch.backends.cuda.enable_flash_sdp(previous)


# ----------------------------------------------------------------------------- trace time


def test_choice_for_node_reads_fake_values_without_guarding():
    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env)
    dyn = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 4)
    q, k, v = (mode.from_tensor(t, symbolic_context=dyn) for t in rand_qkv())

    def f(q, k, v):
        return FWD(q, k, v, None, 0.25, True, True, -1, -1, 0.0, 0.0, None)

    with mode:
        gm = make_fx(f, tracing_mode="symbolic")(q, k, v)
    (node,) = [n for n in gm.graph.nodes if n.target is FWD]
    guards_before = len(shape_env.guards)
    assert dispatch.choice_for_node(node) == dispatch.Choice("reference", "no CUDA device (cpu)")
    assert len(shape_env.guards) == guards_before
    assert dispatch.choice_for_node(next(iter(gm.graph.nodes))) is None


def test_predict_kernel_from_a_plan(fake_cuda):
    @dataclass
    class Operand:
        t: torch.Tensor

        def shape(self):
            return list(self.t.shape)

    @dataclass
    class Plan:
        k: Operand
        v: Operand
        biases: list = field(default_factory=list)
        masks: list = field(default_factory=list)
        causal: bool = False
        bottom_right: bool = False
        window_left: int = -1
        window_right: int = -1
        softcap: float = 0.0
        dropout_p: float = 0.0

    q = fake_cuda(2, 8, 16, 64)
    kv = Operand(fake_cuda(2, 8, 16, 64))
    assert dispatch.predict_kernel(q, Plan(kv, kv)) == "sdpa_flash"
    # With the plan's own q operand: [B, H, Sq, D] = [2, 8, 8, 64] is causal with Sq != Sk,
    # which flash does not take.
    plan = Plan(kv, kv, causal=True)
    plan.q = Operand(fake_cuda(2, 8, 8, 64))
    assert dispatch.predict_kernel(fake_cuda(2, 8, 8, 64), plan) == "sdpa_efficient"
    assert dispatch.predict_kernel(q, Plan(kv, kv, masks=["padding"])) == "sdpa_efficient"
    assert dispatch.predict_kernel(q, Plan(kv, kv, softcap=20.0)) == "reference"


def test_choice_for_node_of_a_backward_call(fake_cuda):
    q, k, v = fake_cuda(1, 8, 32, 64), fake_cuda(1, 2, 32, 64), fake_cuda(1, 2, 32, 64)
    out, lse = fake_cuda(1, 8, 32, 64), fake_cuda(1, 8, 32, dtype=torch.float32)
    bwd = torch.ops.fa.attention_backward.default

    def f(go, q, k, v, out, lse):
        return bwd(go, q, k, v, out, lse, None, 0.125, True, False, -1, -1, 0.0, 0.0, None,
                   False)

    gm = make_fx(f)(out, q, k, v, out, lse)
    (node,) = [n for n in gm.graph.nodes if n.target is bwd]
    assert dispatch.choice_for_node(node).name == "sdpa_flash"


def test_record_choices_lists_what_ran(backend):
    q, k, v = rand_qkv(b=1, hq=2, hkv=1, sq=4, sk=6, d=8, requires_grad=True)
    bias = torch.randn(4, 6)
    with dispatch.record_choices() as ran:
        out, _ = FWD(q, k, v, None, 0.5, False, False, -1, -1, 0.0, 0.0, None)
        out.sum().backward()
        FWD(q, k, v, bias, 0.5, False, False, -1, -1, 0.0, 0.0, None)
    assert [(d, c.name) for d, c in ran] == [("forward", "sm80"), ("backward", "sm80"),
                                             ("forward", "reference")]
    FWD(q, k, v, None, 0.5, False, False, -1, -1, 0.0, 0.0, None)
    assert len(ran) == 3  # recording stops with the block


@pytest.mark.parametrize("shape", [(1, 4, 1, 77), (33, 77), (2, 1, 33, 77), (77,),
                                   (2, 4, 33, 77)], ids=str)
def test_bias_for_the_efficient_kernel_is_aligned_and_equal(shape):
    q = torch.empty(2, 4, 33, 64, dtype=torch.float16)
    bias = torch.randn(shape)
    got = sdpa.efficient_bias(bias, q, 77)
    assert got.shape == (2, 4, 33, 77) and got.dtype == torch.float16
    assert got.stride(-1) == 1 and got.storage_offset() % 16 == 0
    assert all(s % 16 == 0 for s in got.stride()[:-1])
    torch.testing.assert_close(got, bias.half().expand(2, 4, 33, 77))


def test_bool_bias_for_the_efficient_kernel_is_additive():
    keep = torch.rand(33, 77) > 0.5
    got = sdpa.efficient_bias(keep, torch.empty(2, 4, 33, 64, dtype=torch.bfloat16), 77)
    assert torch.equal(torch.isneginf(got[0, 0]), ~keep)
    assert torch.equal(got[0, 0][keep], torch.zeros(int(keep.sum()), dtype=torch.bfloat16))


def test_backward_leaves_a_kernel_for_the_reference_when_fp32_lse_lost_a_row(monkeypatch):
    # A kernel that takes biases would rebuild P = exp(x - lse) from an lse that rounding made
    # equal to finfo.min for a fully masked row; the dispatcher checks and uses the reference.
    b = StandInBackend()
    b.forward_unsupported = b.backward_unsupported = lambda *args: None
    monkeypatch.setattr(dispatch, "_kernel_backend", lambda device: b)
    q, k, v = rand_qkv(b=1, hq=1, hkv=1, sq=4, sk=4, d=8)
    bias = torch.zeros(4, 4)
    bias[0] = torch.finfo(torch.float32).min
    out, lse = torch.empty(1, 1, 4, 8), torch.empty(1, 1, 4)
    reference.forward_into(q, k, v, bias, 0.3, False, False, -1, -1, 0.0, 0.0, None, out, lse)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    choice = dispatch.run_backward(torch.randn_like(out), q, k, v, out, lse, bias, 0.3, False,
                                   False, -1, -1, 0.0, 0.0, None, *grads, None)
    assert choice.name == "reference" and "huge finite bias" in choice.reason
    assert b.backward_calls == []
