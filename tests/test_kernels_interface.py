"""The Python side of the compiled kernels, without a GPU: what reaches the C ABI.

A stand-in library records the params struct instead of launching, so these check the
translation from the op's arguments (strides, padding of head dims, causal folded into the
window, GQA) and the reasons given for calls the kernels do not cover.
"""

from __future__ import annotations


import pytest
import torch

from fa_inductor import kernels
from fa_inductor.kernels import library


class RecordingLibrary:
    path = "recording"

    def __init__(self, symbols=("fa_fwd_sm80",)):
        self.calls = []
        self.symbols = symbols

    def fwd_sm80(self, params, stream):
        self.calls.append((params, stream))

    def has(self, symbol):
        return symbol in self.symbols


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setattr(kernels, "launch_on", lambda device, launch: launch(4242))
    return kernels.KernelBackend(RecordingLibrary(), torch.device("cpu"))


def bshd(B, S, H, D, dtype=torch.bfloat16):
    return torch.randn(B, S, H, D, dtype=dtype).transpose(1, 2)


def fields(params):
    return {name: getattr(params, name) for name, _ in library.FwdParams._fields_}


def test_views_pass_their_strides_and_gqa_heads(backend):
    q, k, v = bshd(2, 100, 8, 128), bshd(2, 120, 2, 128), bshd(2, 120, 2, 128)
    out, lse = bshd(2, 100, 8, 128), torch.empty(2, 8, 100)
    backend.forward(q, k, v, 0.125, False, False, -1, -1, 0.0, out, lse)
    (params, stream), = backend.lib.calls
    f = fields(params)
    assert stream == 4242
    assert (f["q"], f["k"], f["v"], f["out"], f["lse"]) == tuple(t.data_ptr() for t in (q, k, v, out, lse))
    assert (f["q_batch_stride"], f["q_head_stride"], f["q_row_stride"]) == (100 * 8 * 128, 128, 8 * 128)
    assert (f["k_batch_stride"], f["k_head_stride"], f["k_row_stride"]) == (120 * 2 * 128, 128, 2 * 128)
    assert (f["o_batch_stride"], f["o_head_stride"], f["o_row_stride"]) == (100 * 8 * 128, 128, 8 * 128)
    assert (f["batch"], f["heads_q"], f["heads_kv"], f["seqlen_q"], f["seqlen_k"]) == (2, 8, 2, 100, 120)
    assert (f["head_dim"], f["dtype"], f["window_left"], f["window_right"]) == (128, library.FA_BF16, -1, -1)
    assert f["scale"] == pytest.approx(0.125) and f["softcap"] == 0.0


@pytest.mark.parametrize("causal,wl,wr,expect", [
    (True, -1, -1, (-1, 0)),    # causal is a right window of 0
    (True, 16, 5, (16, 0)),     # causal narrows a wider right window
    (False, 16, 5, (16, 5)),
    (False, None, None, (-1, -1)),
])
def test_causal_is_folded_into_the_window(backend, causal, wl, wr, expect):
    q, k, v = bshd(1, 10, 1, 64), bshd(1, 12, 1, 64), bshd(1, 12, 1, 64)
    backend.forward(q, k, v, 1.0, causal, True, wl, wr, 0.0, bshd(1, 10, 1, 64), torch.empty(1, 1, 10))
    f = fields(backend.lib.calls[-1][0])
    assert (f["window_left"], f["window_right"], f["bottom_right"]) == (*expect, 1)


def test_odd_head_dims_are_padded_into_a_temporary(backend):
    q, k, v = bshd(1, 10, 2, 80, torch.float16), bshd(1, 12, 2, 80, torch.float16), bshd(1, 12, 2, 72, torch.float16)
    out = bshd(1, 10, 2, 72, torch.float16).fill_(float("nan"))
    backend.forward(q, k, v, 0.1, False, False, -1, -1, 0.0, out, torch.empty(1, 2, 10))
    f = fields(backend.lib.calls[-1][0])
    assert f["head_dim"] == 96 and f["dtype"] == library.FA_FP16
    assert f["out"] != out.data_ptr() and f["q"] != q.data_ptr()  # padded copies
    assert f["q_row_stride"] % 8 == 0 and f["o_row_stride"] % 8 == 0


def test_strides_of_size_one_dims_are_not_passed(backend):
    """A single query row sliced out of a longer sequence: its row stride is meaningless."""
    q = torch.randn(1, 2, 9, 64, dtype=torch.bfloat16).as_strided((1, 2, 1, 64), (5, 64 * 9, 3, 1))
    k, v = bshd(1, 12, 2, 64), bshd(1, 12, 2, 64)
    backend.forward(q, k, v, 1.0, False, False, -1, -1, 0.0, bshd(1, 1, 2, 64), torch.empty(1, 2, 1))
    f = fields(backend.lib.calls[-1][0])
    assert (f["q_batch_stride"], f["q_head_stride"], f["q_row_stride"]) == (0, 64 * 9, 0)
    assert (f["o_batch_stride"], f["o_row_stride"]) == (0, 0)


def test_empty_keys_give_zero_and_minus_inf_without_a_launch(backend):
    q, k, v = bshd(1, 4, 1, 64), bshd(1, 0, 1, 64), bshd(1, 0, 1, 64)
    out, lse = bshd(1, 4, 1, 64).fill_(float("nan")), torch.full((1, 1, 4), float("nan"))
    backend.forward(q, k, v, 1.0, False, False, -1, -1, 0.0, out, lse)
    assert not backend.lib.calls
    assert (out == 0).all() and (lse == float("-inf")).all()


def test_reasons_for_unsupported_calls(backend):
    q, k, v = bshd(1, 8, 4, 64), bshd(1, 8, 2, 64), bshd(1, 8, 2, 64)
    args = (False, False, -1, -1, 0.0)
    assert backend.forward_unsupported(q, k, v, None, *args, 0.0) is None
    assert "bias" in backend.forward_unsupported(q, k, v, torch.zeros(8, 8), *args, 0.0)
    assert "dropout" in backend.forward_unsupported(q, k, v, None, *args, 0.1)
    assert "dtype" in backend.forward_unsupported(q.float(), k.float(), v.float(), None, *args, 0.0)
    assert "multiple" in backend.forward_unsupported(q, bshd(1, 8, 3, 64), bshd(1, 8, 3, 64), None, *args, 0.0)
    big = bshd(1, 8, 2, 320)
    assert "head dim" in backend.forward_unsupported(big, big, big, None, *args, 0.0)
    assert backend.backward_unsupported(q, k, v, None, *args, 0.0) == "backward kernel not available"


def test_no_backend_off_cuda():
    assert kernels.get_backend(torch.device("cpu")) is None
    assert kernels.unavailable_reason("cpu") == "not a CUDA device"
    assert [kernels.padded_head_dim(d) for d in (1, 64, 65, 100, 192, 256, 257)] == [64, 64, 96, 128, 192, 256, None]


# ---- which forward family runs ---------------------------------------------------------------


def hopper(monkeypatch, capability=(9, 0)):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return torch.device("cuda", 0)


def test_hopper_runs_the_sm90_forward_when_the_library_has_it(monkeypatch):
    monkeypatch.delenv("FA_INDUCTOR_FWD_FAMILY", raising=False)
    lib = RecordingLibrary(symbols=("fa_fwd_sm80", "fa_fwd_sm90"))
    assert kernels.KernelBackend(lib, hopper(monkeypatch)).forward_name == "sm90"


@pytest.mark.parametrize("symbols,capability", [
    (("fa_fwd_sm80",), (9, 0)),                 # a library built without sm_90a
    (("fa_fwd_sm80", "fa_fwd_sm90"), (8, 0)),   # an A100
    (("fa_fwd_sm80", "fa_fwd_sm90"), (8, 9)),   # an L40
])
def test_elsewhere_the_sm80_forward_runs(monkeypatch, symbols, capability):
    monkeypatch.delenv("FA_INDUCTOR_FWD_FAMILY", raising=False)
    backend = kernels.KernelBackend(RecordingLibrary(symbols=symbols), hopper(monkeypatch, capability))
    assert backend.forward_name == "sm80"
    assert backend.name == "sm80"  # the backward's kernels


def test_the_forward_family_can_be_forced_for_comparisons(monkeypatch):
    lib = RecordingLibrary(symbols=("fa_fwd_sm80", "fa_fwd_sm90"))
    monkeypatch.setenv("FA_INDUCTOR_FWD_FAMILY", "sm80")
    assert kernels.KernelBackend(lib, hopper(monkeypatch)).forward_name == "sm80"
    monkeypatch.setenv("FA_INDUCTOR_FWD_FAMILY", "sm75")
    with pytest.raises(ValueError, match="FA_INDUCTOR_FWD_FAMILY"):
        kernels.KernelBackend(lib, hopper(monkeypatch))


def test_a_family_the_library_lacks_is_a_clear_error(backend):
    q = k = v = bshd(1, 8, 1, 64)
    out, lse = bshd(1, 8, 1, 64), torch.empty(1, 1, 8)
    with pytest.raises(library.KernelError, match="no SM90 forward"):
        backend.forward(q, k, v, 0.1, False, False, -1, -1, 0.0, out, lse, family="sm90")
    with pytest.raises(ValueError, match="unknown kernel family"):
        backend.forward(q, k, v, 0.1, False, False, -1, -1, 0.0, out, lse, family="sm70")


# ---- which backward family runs --------------------------------------------------------------


@pytest.mark.parametrize("d,deterministic,expect", [
    (64, False, "sm90"), (80, False, "sm90"), (128, False, "sm90"),  # 80 is padded to 96
    (192, False, "sm90"), (256, False, "sm90"),
    (128, True, "sm90"), (192, True, "sm90"),     # deterministic mode: both families have one,
    (256, True, "sm80"),                          # except SM90 at 256, which adds dQ by atomics
])
def test_hopper_runs_the_sm90_backward_where_it_covers_the_call(monkeypatch, d, deterministic, expect):
    monkeypatch.delenv("FA_INDUCTOR_BWD_FAMILY", raising=False)
    lib = RecordingLibrary(symbols=("fa_fwd_sm80", "fa_bwd_sm80", "fa_bwd_sm90"))
    backend = kernels.KernelBackend(lib, hopper(monkeypatch))
    assert backend.backward_name == "sm90"
    q = v = bshd(1, 8, 1, d)
    assert backend.backward_family(q, v, deterministic) == expect


def test_the_backward_family_follows_the_library_and_the_switch(monkeypatch):
    q = v = bshd(1, 8, 1, 128)
    monkeypatch.delenv("FA_INDUCTOR_BWD_FAMILY", raising=False)
    without = kernels.KernelBackend(RecordingLibrary(symbols=("fa_bwd_sm80",)), hopper(monkeypatch))
    assert without.backward_family(q, v, False) == "sm80"
    a100 = kernels.KernelBackend(RecordingLibrary(symbols=("fa_bwd_sm80", "fa_bwd_sm90")),
                                 hopper(monkeypatch, (8, 0)))
    assert a100.backward_family(q, v, False) == "sm80"
    monkeypatch.setenv("FA_INDUCTOR_BWD_FAMILY", "sm80")
    forced = kernels.KernelBackend(RecordingLibrary(symbols=("fa_bwd_sm80", "fa_bwd_sm90")), hopper(monkeypatch))
    assert forced.backward_family(q, v, False) == "sm80"
    monkeypatch.setenv("FA_INDUCTOR_BWD_FAMILY", "sm75")
    with pytest.raises(ValueError, match="FA_INDUCTOR_BWD_FAMILY"):
        kernels.KernelBackend(RecordingLibrary(), hopper(monkeypatch))


def test_the_sm90_backward_refuses_what_it_does_not_cover(backend):
    from fa_inductor.kernels import backward

    q = k = v = out = bshd(1, 8, 1, 256)
    lse = torch.zeros(1, 1, 8)
    with pytest.raises(library.KernelError, match="no SM90 backward"):
        backend.backward(out, q, k, v, out, lse, 0.1, False, False, -1, -1, 0.0, q, k, v, family="sm90")
    # Head dim 256 adds dQ by atomics there: no deterministic mode.
    with pytest.raises(ValueError, match="SM90 backward takes head dims"):
        backward.run_backward(None, out, q, k, v, out, lse, 0.1, False, False, -1, -1, 0.0, q, k, v,
                              deterministic=True, family="sm90")


def test_no_ablation_variants_without_the_sm90_library():
    assert kernels.ablation_variants(torch.device("cpu")) == {}


def test_a_contiguous_tensor_at_an_unaligned_address_is_copied(backend):
    """Contiguous already, so only a fresh allocation can align its rows."""
    storage = torch.randn(16 * 64 + 1, dtype=torch.bfloat16)
    q = storage[1:].view(1, 1, 16, 64)
    assert q.is_contiguous() and q.data_ptr() % 16
    k, v = bshd(1, 16, 1, 64), bshd(1, 16, 1, 64)
    backend.forward(q, k, v, 1.0, False, False, -1, -1, 0.0, bshd(1, 16, 1, 64), torch.empty(1, 1, 16))
    f = fields(backend.lib.calls[-1][0])
    assert f["q"] != q.data_ptr() and f["q"] % 16 == 0
