"""A call repeating the signature of one a compiled kernel ran goes straight to its launch, and
launches exactly what the full path would (``fa_inductor.ops.repeat_calls``).

No GPU: the compiled-kernel backend runs on CPU tensors with a stand-in library that records
each launch's params instead of launching, so these compare what reaches the C ABI.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

import fa_inductor.ops  # noqa: F401  (registers the ops)
from fa_inductor import kernels
from fa_inductor.kernels import backward as kernels_backward
from fa_inductor.kernels import library as kernels_library
from fa_inductor.ops import dispatch, library, repeat_calls, validation

OP = torch.ops.fa.attention_forward
BWD = torch.ops.fa.attention_backward


class RecordingLibrary:
    """fwd_sm80 and fa_bwd_sm80 entry points that record their params."""

    path = "recording"

    def __init__(self):
        self.forward_params, self.backward_params = [], []
        recorded = self.backward_params

        def fa_bwd_sm80(params_ref, stream):
            p = ctypes.cast(params_ref, ctypes.POINTER(kernels_backward.FaBwdParams)).contents
            recorded.append(bytes(p))
            return kernels_library.FA_OK

        self.raw = type("Raw", (), {"fa_bwd_sm80": staticmethod(fa_bwd_sm80)})()

    def has(self, symbol):
        return symbol in ("fa_fwd_sm80", "fa_bwd_sm80")

    def fwd_sm80(self, params, stream):
        self.forward_params.append(params)

    def check(self, status, what):
        assert status == kernels_library.FA_OK, what


@pytest.fixture
def backend(monkeypatch):
    """The compiled-kernel backend, on CPU, recording; validation calls counted."""
    monkeypatch.setattr(kernels, "launch_on", lambda device, launch: launch(4242))
    monkeypatch.setattr(kernels_backward, "launch_on", lambda device, launch: launch(4242))
    b = kernels.KernelBackend(RecordingLibrary(), torch.device("cpu"))
    monkeypatch.setattr(dispatch, "_kernel_backend", lambda device: b)
    b.validations = []
    for name in ("check_forward", "check_backward"):
        real = getattr(validation, name)
        monkeypatch.setattr(validation, name,
                            lambda *a, _real=real, _name=name: b.validations.append(_name) or _real(*a))
    repeat_calls.clear()
    yield b
    repeat_calls.clear()


def bshd(B, S, H, D, dtype=torch.bfloat16):
    return torch.randn(B, S, H, D, dtype=dtype).transpose(1, 2)


def qkv(B=2, Sq=100, Sk=120, Hq=8, Hkv=2, D=128):
    return bshd(B, Sq, Hq, D), bshd(B, Sk, Hkv, D), bshd(B, Sk, Hkv, D)


FLAGS = (0.125, True, False, -1, -1, 0.0, 0.0, None)  # scale .. dropout_seed


def fields(params, skip=("q", "k", "v", "out", "lse")):
    return {n: getattr(params, n) for n, _ in kernels_library.FwdParams._fields_ if n not in skip}


def test_a_repeated_forward_launches_the_same_params_without_validating_again(backend):
    q, k, v = qkv()
    out1, lse1 = OP(q, k, v, None, *FLAGS)
    q2, k2, v2 = qkv()
    out2, lse2 = OP(q2, k2, v2, None, *FLAGS)
    assert backend.validations == ["check_forward"]
    first, second = backend.lib.forward_params
    assert fields(second) == fields(first)
    assert (second.q, second.k, second.v, second.out, second.lse) == tuple(
        t.data_ptr() for t in (q2, k2, v2, out2, lse2))
    assert (out2.shape, out2.stride(), lse2.shape, lse2.stride()) == (
        out1.shape, out1.stride(), lse1.shape, lse1.stride())


@pytest.mark.parametrize("change", ["causal", "scale", "window", "strides", "dtype"])
def test_any_other_signature_takes_the_full_path(backend, change):
    q, k, v = qkv()
    OP(q, k, v, None, *FLAGS)
    flags = list(FLAGS)
    if change == "causal":
        flags[1] = False
    elif change == "scale":
        flags[0] = 0.25
    elif change == "window":
        flags[3] = 16
    elif change == "strides":
        q = q.contiguous()
    elif change == "dtype":
        q, k, v = (t.half() for t in (q, k, v))
    OP(q, k, v, None, *flags)
    assert backend.validations[-1] == "check_forward"
    assert backend.validations.count("check_forward") == 2


def test_an_unaligned_address_of_a_planned_signature_takes_the_full_path(backend):
    q, k, v = qkv(B=1, Sq=16, Sk=16, Hq=1, Hkv=1, D=64)
    OP(q, k, v, None, *FLAGS)
    # The same sizes and strides, one element (2 bytes) into its storage: rows not 16-byte aligned.
    storage = torch.randn(q.numel() + 1, dtype=q.dtype)
    shifted = storage.as_strided(q.shape, q.stride(), storage_offset=1)
    assert shifted.stride() == q.stride() and shifted.data_ptr() % 16
    OP(shifted, k, v, None, *FLAGS)
    assert backend.validations == ["check_forward"] * 2
    params = backend.lib.forward_params[-1]
    assert params.q != shifted.data_ptr() and params.q % 16 == 0  # an aligned copy ran


def test_padded_head_dims_are_never_planned(backend):
    q, k, v = qkv(D=80)
    OP(q, k, v, None, *FLAGS)
    OP(q, k, v, None, *FLAGS)
    assert backend.validations == ["check_forward"] * 2


def test_a_replaced_backend_or_the_kernel_switch_drops_the_plans(backend, monkeypatch):
    q, k, v = qkv()
    OP(q, k, v, None, *FLAGS)
    monkeypatch.setattr(dispatch, "_kernel_backend", lambda device: None)  # as the switch does
    with dispatch.record_choices() as log:
        OP(q, k, v, None, *FLAGS)
    assert [c.name for _, c in log] == ["reference"]
    assert len(backend.lib.forward_params) == 1


def test_record_choices_sees_planned_calls(backend):
    q, k, v = qkv()
    OP(q, k, v, None, *FLAGS)
    with dispatch.record_choices() as log:
        OP(q, k, v, None, *FLAGS)
    assert backend.validations == ["check_forward"]
    assert log == [("forward", dispatch.Choice("sm80", "compiled kernel supports the call"))]


def test_bias_dropout_tensor_subclasses_and_other_scalar_types_are_never_planned(backend):
    q, k, v = qkv()
    # An int scale hashes like the float of its value: such calls (direct ones; torch.ops
    # converts) are not told apart from float ones, so they are not planned.
    assert repeat_calls.forward_signature(q, k, v, None, 1, *FLAGS[1:]) is None
    assert repeat_calls.forward_signature(q, k, v, torch.zeros(100, 120), *FLAGS) is None
    seed = torch.tensor([7])
    assert repeat_calls.forward_signature(q, k, v, None, *FLAGS[:6], 0.1, seed) is None
    p = torch.nn.Parameter(q)
    assert repeat_calls.forward_signature(p, k, v, None, *FLAGS) is None


def test_the_plans_are_bounded(backend, monkeypatch):
    monkeypatch.setattr(repeat_calls, "MAX_PLANS", 3)
    for sq in range(1, 6):
        q, k, v = qkv(B=1, Sq=sq, Sk=8, Hq=1, Hkv=1, D=64)
        OP(q, k, v, None, *FLAGS)
    assert 1 <= len(repeat_calls._forward) <= 3


def test_a_repeated_backward_launches_the_same_params_without_validating_again(backend):
    def call():
        q, k, v = qkv(Hq=4, Hkv=4, D=64)
        out, lse = bshd(2, 100, 4, 64), torch.randn(2, 4, 100)
        grad = bshd(2, 100, 4, 64)
        grads = BWD(grad, q, k, v, out, lse, None, *FLAGS, False)
        return (q, k, v, out, grad, lse) + grads[:3]

    first = call()
    second = call()
    assert backend.validations.count("check_backward") == 1
    a, b = (kernels_backward.FaBwdParams.from_buffer_copy(p) for p in backend.lib.backward_params)
    addresses = ("q", "k", "v", "out", "dout", "lse", "dq", "dk", "dv", "dq_accum", "dsum")
    for name, _ in kernels_backward.FaBwdParams._fields_:
        if name not in addresses:
            got, want = getattr(b, name), getattr(a, name)
            if isinstance(got, ctypes.Array):
                got, want = list(got), list(want)
            assert got == want, name
    q, k, v, out, grad, lse, dq, dk, dv = second
    assert (b.q, b.k, b.v, b.out, b.dout, b.lse, b.dq, b.dk, b.dv) == tuple(
        t.data_ptr() for t in (q, k, v, out, grad, lse, dq, dk, dv))
    assert [t.stride() for t in second[6:]] == [t.stride() for t in first[6:]]


def test_the_deterministic_switch_is_part_of_a_backward_signature(backend, monkeypatch):
    # The SM80 deterministic backward splits the keys over the device's multiprocessors.
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"multi_processor_count": 132}))
    q, k, v = qkv(Hq=4, Hkv=4, D=64)
    out, lse, grad = bshd(2, 100, 4, 64), torch.randn(2, 4, 100), bshd(2, 100, 4, 64)
    args = (grad, q, k, v, out, lse, None, *FLAGS, False)
    BWD(*args)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        BWD(*args)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert backend.validations.count("check_backward") == 2
    plain, deterministic = (kernels_backward.FaBwdParams.from_buffer_copy(p)
                            for p in backend.lib.backward_params)
    assert (plain.deterministic, deterministic.deterministic) == (0, 1)
