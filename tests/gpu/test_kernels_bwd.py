"""The backward kernels (dQ, dK, dV) of each family, SM80 and (on Hopper) SM90, against float64
autograd (skipped without CUDA).

Every case draws fresh random inputs; out and lse come from the float64 reference (the backward's
contract does not depend on which forward produced them), dq/dk/dv are poisoned with NaN before
the call and must come back fully written.  The error bound is relative to what PyTorch's own
flash backend (SDPA, FlashAttention-2) makes on the same inputs against float64, times a small
factor; where SDPA's flash cannot express the call (windows, softcap, bottom-right causal), its
error on the same tensors without those features sets the scale.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from fa_inductor import kernels  # noqa: E402

ERROR_FACTOR = 3.0
# SDPA's error can be tiny on small problems; below this relative error anything passes.
ERROR_FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


class OneFamily:
    """The kernel backend with its backward pinned to one kernel family.  Calls the SM90 family
    does not take (deterministic mode at head dim 256) run the SM80 kernels in production; here
    they are skipped, as the SM80 parametrisation covers them."""

    def __init__(self, backend, family):
        self.backend, self.family, self.lib = backend, family, backend.lib

    def backward_unsupported(self, *args):
        return self.backend.backward_unsupported(*args)

    def backward(self, grad_out, q, k, v, *args):
        deterministic = args[-1] if len(args) == 12 else False
        if self.family == "sm90" and self.backend.backward_family(q, v, deterministic) != "sm90":
            pytest.skip("the SM80 backward runs this call on Hopper")
        self.backend.backward(grad_out, q, k, v, *args, family=self.family)


@pytest.fixture(scope="module", params=["sm80", "sm90"])
def backend(request):
    b = kernels.get_backend(torch.device("cuda"))
    if b is None:
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason('cuda')}")
    if request.param == "sm90":
        if torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the SM90 kernels need a Hopper GPU (compute capability 9.0)")
        assert b.lib.has("fa_bwd_sm90"), f"{b.lib.path} was built without the SM90 backward"
        assert b.backward_name == "sm90", "on Hopper the SM90 backward is the one dispatched"
    return OneFamily(b, request.param)


def allowed_mask(Sq, Sk, causal, bottom_right, wl, wr, device):
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    off = Sk - Sq if bottom_right else 0
    allowed = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    if causal:
        allowed &= j <= i + off
    if wl >= 0:
        allowed &= j >= i + off - wl
    if wr >= 0:
        allowed &= j <= i + off + wr
    return allowed


def reference(q, k, v, scale, causal, bottom_right, wl, wr, softcap):
    """out, lse straight from the op's definition, differentiable (rows without keys: out 0)."""
    Hq, Hkv = q.size(1), k.size(1)
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    x = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if softcap > 0:
        x = softcap * torch.tanh(x / softcap)
    allowed = allowed_mask(q.size(2), k.size(2), causal, bottom_right, wl, wr, q.device)
    has_key = allowed.any(-1, keepdim=True)
    x = x.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
    p = torch.softmax(x, dim=-1) * has_key
    out = torch.einsum("bhij,bhjd->bhid", p, v)
    with torch.no_grad():
        lse = torch.logsumexp(x, dim=-1).masked_fill(~has_key[..., 0], float("-inf"))
    return out, lse


def reference_grads(q, k, v, dout, scale, causal, bottom_right, wl, wr, softcap):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out, lse = reference(q64, k64, v64, scale, causal, bottom_right, wl, wr, softcap)
    dq, dk, dv = torch.autograd.grad(out, (q64, k64, v64), dout.double())
    return out.detach(), lse, (dq, dk, dv)


def rel_err(got, ref) -> float:
    denom = ref.norm().item()
    diff = (got.double() - ref).norm().item()
    return diff / denom if denom > 0 else diff


def sdpa_flash_errors(q, k, v, dout, scale, causal):
    """Relative errors of SDPA flash's (dq, dk, dv) vs float64 on these tensors, or None."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.size(-1) != v.size(-1) or q.size(-1) % 8:
        return None
    Hq, Hkv = q.size(1), k.size(1)
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(
                qq, kk.repeat_interleave(Hq // Hkv, 1), vv.repeat_interleave(Hq // Hkv, 1),
                scale=scale, is_causal=causal)
            got = torch.autograd.grad(out, (qq, kk, vv), dout)
    except RuntimeError:
        return None
    _, _, ref = reference_grads(q, k, v, dout, scale, causal, False, -1, -1, 0.0)
    return [rel_err(g, r) for g, r in zip(got, ref)]


def bshd(B, H, S, D, dtype):
    """A [B,H,S,D] tensor in [B,S,H,D] memory order (the layout models hand the op)."""
    return torch.randn(B, S, H, D, device="cuda", dtype=dtype).transpose(1, 2)


def run_case(backend, B, Hq, Hkv, Sq, Sk, D, dtype=torch.bfloat16, causal=False,
             bottom_right=False, wl=-1, wr=-1, softcap=0.0, deterministic=False, Dv=None):
    Dv = D if Dv is None else Dv
    q, k, v = bshd(B, Hq, Sq, D, dtype), bshd(B, Hkv, Sk, D, dtype), bshd(B, Hkv, Sk, Dv, dtype)
    dout = bshd(B, Hq, Sq, Dv, dtype)
    scale = D ** -0.5
    out64, lse64, ref = reference_grads(q, k, v, dout, scale, causal, bottom_right, wl, wr, softcap)
    out = out64.to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
    lse = lse64.float().contiguous()

    reason = backend.backward_unsupported(q, k, v, None, causal, bottom_right, wl, wr, softcap, 0.0)
    assert reason is None, reason

    def once():
        grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]
        backend.backward(dout, q, k, v, out, lse, scale, causal, bottom_right, wl, wr, softcap,
                         *grads, deterministic)
        torch.cuda.synchronize()
        return grads

    grads = once()
    for name, g in zip("qkv", grads):
        assert torch.isfinite(g).all(), f"d{name} has unwritten or non-finite elements"

    # SDPA flash on the same tensors: the same call where it can express it, else without the
    # features it lacks (its error is dominated by the dtype's rounding of P and dS either way).
    same_call = wl < 0 and wr < 0 and softcap == 0 and (not causal or not bottom_right or Sq == Sk)
    base = sdpa_flash_errors(q, k, v, dout, scale, causal and same_call)
    for i, (name, g, r) in enumerate(zip("qkv", grads, ref)):
        err = rel_err(g, r)
        bound = ERROR_FLOOR[dtype]
        if base is not None:
            bound = max(bound, ERROR_FACTOR * base[i])
        assert err <= bound, f"d{name}: rel err {err:.3e} > {bound:.3e} (sdpa flash: {base})"
    return grads, (q, k, v, dout, out, lse, scale), once


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 96, 128, 192, 256])
def test_head_dims_and_dtypes(backend, dtype, D):
    run_case(backend, B=2, Hq=3, Hkv=3, Sq=257, Sk=300, D=D, dtype=dtype)


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("Sq,Sk", [(200, 200), (130, 333), (333, 130)])
@pytest.mark.parametrize("bottom_right", [False, True])
def test_causal_both_alignments(backend, D, Sq, Sk, bottom_right):
    run_case(backend, B=1, Hq=2, Hkv=2, Sq=Sq, Sk=Sk, D=D, causal=True, bottom_right=bottom_right)


def test_rows_without_keys_get_zero_dq(backend):
    # Bottom-right causal with Sq > Sk: the first Sq - Sk query rows see no key (lse = -inf).
    grads, _, _ = run_case(backend, B=1, Hq=2, Hkv=1, Sq=150, Sk=70, D=64, causal=True,
                           bottom_right=True)
    assert torch.equal(grads[0][:, :, :80], torch.zeros_like(grads[0][:, :, :80]))


@pytest.mark.parametrize("wl,wr,causal", [(32, -1, False), (-1, 16, False), (40, 7, False),
                                          (100, -1, True), (0, 0, False)])
@pytest.mark.parametrize("bottom_right", [False, True])
@pytest.mark.parametrize("D", [128, 192])
def test_sliding_window(backend, wl, wr, causal, bottom_right, D):
    run_case(backend, B=2, Hq=2, Hkv=1, Sq=300, Sk=260, D=D, causal=causal,
             bottom_right=bottom_right, wl=wl, wr=wr)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 128, 192, 256])
def test_softcap(backend, causal, D):
    run_case(backend, B=1, Hq=2, Hkv=2, Sq=190, Sk=190, D=D, causal=causal, softcap=30.0)


@pytest.mark.parametrize("Hq,Hkv", [(8, 1), (8, 2), (6, 3)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [128, 256])
def test_gqa_and_mqa(backend, Hq, Hkv, causal, D):
    run_case(backend, B=2, Hq=Hq, Hkv=Hkv, Sq=160, Sk=224, D=D, causal=causal)


@pytest.mark.parametrize("Sq", [1, 63, 64, 65, 127, 128, 129, 513])
@pytest.mark.parametrize("Sk", [1, 65, 128, 513])
def test_odd_sizes_one_head(backend, Sq, Sk):
    run_case(backend, B=1, Hq=1, Hkv=1, Sq=Sq, Sk=Sk, D=64, dtype=torch.float16)


@pytest.mark.parametrize("D", [192, 256])
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (1, 513), (63, 65), (65, 63), (129, 513), (513, 129)])
def test_odd_sizes_wide_head_dims(backend, D, Sq, Sk):
    """Over head dim 128 both SM90 warpgroups share a 64-key block and split the queries and the
    columns: tile edges fall elsewhere."""
    run_case(backend, B=1, Hq=1, Hkv=1, Sq=Sq, Sk=Sk, D=D, dtype=torch.float16, causal=Sq > 60)


@pytest.mark.parametrize("D,Dv", [(40, 40), (80, 80), (72, 64)])
def test_padded_head_dims(backend, D, Dv):
    run_case(backend, B=2, Hq=2, Hkv=1, Sq=100, Sk=90, D=D, Dv=Dv, causal=True)


def test_contiguous_bhsd_inputs(backend):
    # [B,H,S,D]-contiguous tensors (not the models' usual layout) go through the same strides.
    dtype = torch.bfloat16
    B, H, S, D = 2, 3, 150, 64
    q, k, v, dout = (torch.randn(B, H, S, D, device="cuda", dtype=dtype) for _ in range(4))
    scale = 0.125
    out64, lse64, ref = reference_grads(q, k, v, dout, scale, True, False, -1, -1, 0.0)
    grads = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    backend.backward(dout, q, k, v, out64.to(dtype), lse64.float(), scale, True, False, -1, -1, 0.0,
                     *grads, False)
    for g, r in zip(grads, ref):
        assert rel_err(g, r) <= ERROR_FLOOR[dtype]


@pytest.mark.parametrize("Hq,Hkv,causal,wl,D", [(4, 4, False, -1, 128), (8, 2, True, -1, 128),
                                                (4, 1, True, 64, 128), (4, 2, True, -1, 192),
                                                (4, 4, False, -1, 64), (8, 2, True, -1, 64)])
def test_deterministic_mode_is_bit_stable(backend, Hq, Hkv, causal, wl, D):
    grads, _, once = run_case(backend, B=1, Hq=Hq, Hkv=Hkv, Sq=1000, Sk=1100, D=D,
                              causal=causal, wl=wl, deterministic=True)
    for _ in range(2):
        again = once()
        for name, a, b in zip("qkv", grads, again):
            assert torch.equal(a, b), f"d{name} differs between two deterministic runs"


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("Sq,D", [(65, 128), (129, 64), (200, 96), (70, 192), (100, 256)])
def test_workspaces_need_no_zeroing_by_the_caller(backend, monkeypatch, deterministic, Sq, D):
    """The kernels initialise their fp32 scratch themselves (the dQ accumulator is padded to
    128 rows and may hold partials in the padding): NaN-filled scratch must not leak into dq."""
    from fa_inductor.kernels import backward

    def poisoned(shape, device):
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)

    monkeypatch.setattr(backward, "_workspace", poisoned)
    run_case(backend, B=2, Hq=3, Hkv=1, Sq=Sq, Sk=150, D=D, causal=True, deterministic=deterministic)


def test_bad_head_dim_is_an_error_with_a_message(backend):
    from fa_inductor.kernels import backward

    q = bshd(1, 1, 8, 64, torch.float16)
    grads = [torch.empty_like(q) for _ in range(3)]
    lse = torch.zeros(1, 1, 8, device="cuda")
    p = backward.FaBwdParams(q=q.data_ptr(), k=q.data_ptr(), v=q.data_ptr(), out=q.data_ptr(),
                             dout=q.data_ptr(), lse=lse.data_ptr(), dq=grads[0].data_ptr(),
                             dk=grads[1].data_ptr(), dv=grads[2].data_ptr(),
                             dq_accum=lse.data_ptr(), dsum=lse.data_ptr(), batch=1, heads_q=1,
                             heads_kv=1, seqlen_q=8, seqlen_k=8, head_dim=80,
                             seqlen_q_rounded=128, scale=1.0)
    import ctypes

    fn = backward._bind(backend.lib.raw, backend.family)
    if backend.family == "sm90":
        p.head_dim = 160  # not a compiled head dim (callers pad to 192)
        status = fn(ctypes.byref(p), ctypes.c_void_p(lse.data_ptr()), ctypes.c_void_p(0))
    else:
        status = fn(ctypes.byref(p), ctypes.c_void_p(0))
    assert status != 0
    assert "head_dim" in backend.lib.last_error()


@pytest.mark.parametrize("D", [64, 128, 256])
def test_many_key_blocks_and_query_tiles(backend, D):
    """More key blocks than SMs, GQA, causal: every CTA walks many query tiles of several heads."""
    run_case(backend, B=2, Hq=8, Hkv=2, Sq=2000, Sk=2100, D=D, causal=True)


def test_under_compute_sanitizer(backend, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    import textwrap

    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    if tool is None:
        pytest.skip("compute-sanitizer not found")
    script = tmp_path / "small_case.py"
    script.write_text(f"FAMILY = {backend.family!r}\n" + textwrap.dedent("""
        import torch
        from fa_inductor import kernels
        b = kernels.get_backend(torch.device("cuda"))
        assert b is not None, kernels.unavailable_reason("cuda")
        for causal, Sq, Sk, D in ((False, 70, 130, 64), (True, 130, 70, 64), (True, 130, 70, 256)):
            q = torch.randn(1, Sq, 2, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            k = torch.randn(1, Sk, 1, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn(1, Sk, 1, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            out = torch.randn(1, Sq, 2, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            dout = torch.randn_like(out)
            lse = torch.randn(1, 2, Sq, device="cuda") + 5.0
            grads = [torch.empty_like(t) for t in (q, k, v)]
            b.backward(dout, q, k, v, out, lse, 0.125, causal, True, -1, -1, 0.0, *grads, False,
                       family=FAMILY)
        torch.cuda.synchronize()
        print("SANITIZED_OK")
    """))
    env = dict(os.environ, FA_INDUCTOR_LIBRARY=str(backend.lib.path))
    for tool_name in ("memcheck", "racecheck"):
        proc = subprocess.run([tool, "--tool", tool_name, "--error-exitcode", "7", sys.executable, str(script)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0 and "SANITIZED_OK" in proc.stdout, (
            tool_name + proc.stdout[-3000:] + proc.stderr[-3000:])


@pytest.mark.parametrize("D", [64, 128])
def test_causal_grid_with_many_heads(backend, D):
    """Far more (kv head, batch) pairs than one wave of CTAs holds: the SM90 kernel's causal launch
    then takes most pairs one after another and the last group rank by rank
    (csrc/common/tile_order.h), and every key block must still be computed once, its dK/dV summed
    over the right query heads."""
    run_case(backend, B=120, Hq=16, Hkv=8, Sq=200, Sk=200, D=D, causal=True)
    run_case(backend, B=60, Hq=16, Hkv=4, Sq=300, Sk=260, D=D, causal=True, bottom_right=True)


def test_deterministic_mode_is_bit_stable_on_a_large_causal_grid(backend):
    """Many key blocks per query tile, several (kv head, batch) pairs and a causal launch order:
    the fixed order of the dQ additions must hold across the whole grid."""
    grads, _, once = run_case(backend, B=2, Hq=8, Hkv=2, Sq=2048, Sk=2048, D=64, causal=True,
                              deterministic=True)
    again = once()
    for name, a, b in zip("qkv", grads, again):
        assert torch.equal(a, b), f"d{name} differs between two deterministic runs"
