"""The forward kernels (SM80 family everywhere, SM90 family on Hopper) against a float64
reference (skipped without CUDA).

Every case draws fresh random inputs, poisons out and lse with NaN before the call and requires
every element written.  The error bound is relative to what PyTorch's own flash backend (SDPA)
makes on the same q, k, v against float64: ours may be at most a small factor worse.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from fa_inductor import kernels  # noqa: E402

ERROR_FACTOR = 2.0  # ours vs SDPA flash, both against float64


class OneFamily:
    """The kernel backend with its forward pinned to one kernel family."""

    def __init__(self, backend, family):
        self.backend, self.family, self.lib = backend, family, backend.lib

    def forward_unsupported(self, *args):
        return self.backend.forward_unsupported(*args)

    def forward(self, *args):
        self.backend.forward(*args, family=self.family)


@pytest.fixture(scope="module", params=["sm80", "sm90"])
def backend(request):
    b = kernels.get_backend(torch.device("cuda"))
    if b is None:
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason('cuda')}")
    if request.param == "sm90":
        if torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the SM90 kernels need a Hopper GPU (compute capability 9.0)")
        assert b.lib.has("fa_fwd_sm90"), f"{b.lib.path} was built without the SM90 forward"
        assert b.forward_name == "sm90", "on Hopper the SM90 forward is the one dispatched"
    return OneFamily(b, request.param)


def reference(q, k, v, scale, causal, bottom_right, wl, wr, softcap):
    """out, lse in float64 straight from the op's definition."""
    q, k, v = (t.double() for t in (q, k, v))
    Hq, Hkv = q.size(1), k.size(1)
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    x = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if softcap > 0:
        x = softcap * torch.tanh(x / softcap)
    Sq, Sk = q.size(2), k.size(2)
    i = torch.arange(Sq, device=q.device)[:, None]
    j = torch.arange(Sk, device=q.device)[None, :]
    off = Sk - Sq if bottom_right else 0
    allowed = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= j <= i + off
    if wl >= 0:
        allowed &= j >= i + off - wl
    if wr >= 0:
        allowed &= j <= i + off + wr
    x = x.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(x, dim=-1)
    p = torch.exp(x - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = torch.einsum("bhij,bhjd->bhid", p, v)
    return out, lse


def sdpa_flash_error(q, k, v, scale) -> float:
    """Relative error of SDPA's flash backend on these inputs (dense, no mask) vs float64."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    Hq, Hkv = q.size(1), k.size(1)
    kk = k.repeat_interleave(Hq // Hkv, dim=1)
    vv = v.repeat_interleave(Hq // Hkv, dim=1)
    d, dv = q.size(-1), v.size(-1)
    if d != dv or d % 8:
        return 0.0
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        got = F.scaled_dot_product_attention(q, kk, vv, scale=scale)
    ref, _ = reference(q, kk, vv, scale, False, False, -1, -1, 0.0)
    return ((got.double() - ref).norm() / ref.norm()).item()


def make_qkv(B, Hq, Hkv, Sq, Sk, D, Dv, dtype, layout="bshd"):
    """Fresh random q, k, v [B, H, S, D]; 'bshd' makes them transposed views as models do."""
    def one(H, S, d):
        if layout == "bshd":
            return torch.randn(B, S, H, d, device="cuda", dtype=dtype).transpose(1, 2)
        return torch.randn(B, H, S, d, device="cuda", dtype=dtype)

    return one(Hq, Sq, D), one(Hkv, Sk, D), one(Hkv, Sk, Dv)


def run_ours(backend, q, k, v, scale, causal, bottom_right, wl, wr, softcap):
    B, Hq, Sq, _ = q.shape
    Dv = v.size(-1)
    out = torch.full((B, Sq, Hq, Dv), float("nan"), device="cuda", dtype=q.dtype).transpose(1, 2)
    lse = torch.full((B, Hq, Sq), float("nan"), device="cuda", dtype=torch.float32)
    backend.forward(q, k, v, scale, causal, bottom_right, wl, wr, softcap, out, lse)
    torch.cuda.synchronize()
    return out, lse


def check_case(backend, B, Hq, Hkv, Sq, Sk, D, Dv=None, dtype=torch.bfloat16, causal=False,
               bottom_right=False, wl=-1, wr=-1, softcap=0.0, layout="bshd"):
    Dv = Dv or D
    q, k, v = make_qkv(B, Hq, Hkv, Sq, Sk, D, Dv, dtype, layout)
    scale = 1.0 / math.sqrt(D)
    assert backend.forward_unsupported(q, k, v, None, causal, bottom_right, wl, wr, softcap, 0.0) is None
    out, lse = run_ours(backend, q, k, v, scale, causal, bottom_right, wl, wr, softcap)
    ref_out, ref_lse = reference(q, k, v, scale, causal, bottom_right, wl, wr, softcap)

    assert not out.isnan().any(), "out not fully written"
    assert not lse.isnan().any(), "lse not fully written"
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse) & (lse < 0), empty), "rows without keys must have lse = -inf"
    assert (out[empty] == 0).all(), "rows without keys must be 0"
    torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty], atol=2e-3, rtol=1e-4)

    err = ((out.double() - ref_out).norm() / ref_out.norm().clamp_min(1e-30)).item()
    baseline = sdpa_flash_error(q, k, v, scale)
    # SDPA cannot run some shapes (padded head dims); fall back to bf16/fp16 rounding of the ref.
    rounding = ((ref_out.to(dtype).double() - ref_out).norm() / ref_out.norm().clamp_min(1e-30)).item()
    bound = ERROR_FACTOR * max(baseline, 2 * rounding) + 1e-6
    assert err <= bound, f"relative error {err:.2e} > {bound:.2e} (sdpa flash {baseline:.2e}, rounding {rounding:.2e})"


DTYPES = [torch.float16, torch.bfloat16]
HEAD_DIMS = [64, 96, 128, 192, 256]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims_and_dtypes(backend, dtype, D, causal):
    check_case(backend, 2, 4, 4, 300, 333, D, dtype=dtype, causal=causal)


@pytest.mark.parametrize("D,Dv", [(32, 32), (80, 80), (40, 40), (128, 64), (64, 128), (200, 200)])
def test_padded_head_dims(backend, D, Dv):
    check_case(backend, 1, 3, 3, 150, 170, D, Dv=Dv)


@pytest.mark.parametrize("seqlen", [1, 2, 15, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_seqlens_around_tile_edges(backend, seqlen, D):
    check_case(backend, 1, 2, 2, seqlen, seqlen, D)
    check_case(backend, 1, 2, 2, seqlen, seqlen, D, causal=True)


@pytest.mark.parametrize("Sq,Sk", [(1, 1), (1, 513), (513, 1), (7, 300), (300, 7), (129, 1000), (1000, 129)])
@pytest.mark.parametrize("bottom_right", [False, True])
@pytest.mark.parametrize("D", [64, 128])
def test_causal_alignments_with_unequal_lengths(backend, Sq, Sk, bottom_right, D):
    check_case(backend, 2, 2, 1, Sq, Sk, D, causal=True, bottom_right=bottom_right)


@pytest.mark.parametrize("wl,wr", [(0, 0), (16, 0), (100, 0), (64, 64), (-1, 5), (33, -1), (200, 17)])
@pytest.mark.parametrize("bottom_right", [False, True])
@pytest.mark.parametrize("Sq,Sk", [(257, 257), (100, 400), (400, 100)])
def test_sliding_window(backend, wl, wr, bottom_right, Sq, Sk):
    check_case(backend, 1, 2, 2, Sq, Sk, 128, wl=wl, wr=wr, bottom_right=bottom_right)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_softcap(backend, causal, D):
    check_case(backend, 2, 2, 2, 200, 260, D, softcap=30.0, causal=causal)
    check_case(backend, 1, 2, 2, 77, 77, D, softcap=2.0, causal=causal, dtype=torch.float16)


@pytest.mark.parametrize("Hq,Hkv", [(8, 2), (8, 1), (6, 3), (1, 1)])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_gqa_mqa_and_layouts(backend, Hq, Hkv, layout):
    check_case(backend, 2, Hq, Hkv, 190, 230, 128, layout=layout)
    check_case(backend, 1, Hq, Hkv, 190, 230, 64, layout=layout, causal=True)


def test_batch_one_head_one_long(backend):
    check_case(backend, 1, 1, 1, 2049, 2049, 128, causal=True)
    check_case(backend, 1, 1, 1, 1, 4097, 128)


def test_strided_views_of_a_fused_qkv(backend):
    """q, k, v as slices of one [B, S, 3, H, D] projection: row stride 3*H*D elements."""
    B, S, H, D = 2, 211, 4, 64
    qkv = torch.randn(B, S, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    scale = D ** -0.5
    out, lse = run_ours(backend, q, k, v, scale, True, False, -1, -1, 0.0)
    ref_out, ref_lse = reference(q, k, v, scale, True, False, -1, -1, 0.0)
    assert ((out.double() - ref_out).norm() / ref_out.norm()).item() < 2e-2
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-3, rtol=1e-4)


def test_unsupported_calls_are_reported(backend):
    q, k, v = make_qkv(1, 2, 2, 8, 8, 64, 64, torch.bfloat16)
    bias = torch.zeros(8, 8, device="cuda")
    assert "bias" in backend.forward_unsupported(q, k, v, bias, False, False, -1, -1, 0.0, 0.0)
    assert "dropout" in backend.forward_unsupported(q, k, v, None, False, False, -1, -1, 0.0, 0.1)
    assert "dtype" in backend.forward_unsupported(q.float(), k.float(), v.float(), None, False, False, -1, -1, 0.0, 0.0)
    q2, k2, v2 = make_qkv(1, 2, 2, 8, 8, 320, 320, torch.bfloat16)
    assert "head dim" in backend.forward_unsupported(q2, k2, v2, None, False, False, -1, -1, 0.0, 0.0)


@pytest.mark.parametrize("tool_name", ["memcheck", "racecheck"])
def test_under_compute_sanitizer(backend, tmp_path, tool_name):
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
        # On SM90, head dim 64: single-warpgroup tiles (two CTAs per SM) for the short ones,
        # 192-row tiles for the third; head dim 256 stages its output over K/V, and its causal
        # case has a tile that sees no key (its zeros staged over Q).
        for D, causal, Sq, Sk in ((64, False, 70, 130), (64, True, 130, 70), (64, False, 70, 600),
                                  (256, False, 200, 300), (256, True, 300, 70)):
            q = torch.randn(1, Sq, 2, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            k = torch.randn(1, Sk, 1, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn(1, Sk, 1, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            out = torch.empty(1, Sq, 2, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            lse = torch.empty(1, 2, Sq, device="cuda")
            b.forward(q, k, v, D ** -0.5, causal, True, -1, -1, 0.0, out, lse, family=FAMILY)
        torch.cuda.synchronize()
        print("SANITIZED_OK")
    """))
    env = dict(os.environ, FA_INDUCTOR_LIBRARY=str(backend.lib.path))
    proc = subprocess.run([tool, "--tool", tool_name, "--error-exitcode", "7", sys.executable, str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "SANITIZED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (200, 333), (513, 257), (1100, 1100)])
def test_sm90_ablation_instances_are_correct(causal, Sq, Sk):
    """Each ablation instance (one scheduling idea off) computes the same attention; the
    benchmark's ablation table would be meaningless otherwise."""
    variants = kernels.ablation_variants(torch.device("cuda"))
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the SM90 kernels need a Hopper GPU")
    assert list(variants) == list(kernels.ABLATION_VARIANTS)
    q, k, v = make_qkv(2, 4, 2, Sq, Sk, 128, 128, torch.bfloat16)
    ref, _ = reference(q, k, v, 128 ** -0.5, causal, False, -1, -1, 0.0)
    for name, fn in variants.items():
        out = fn(q, k, v, 128 ** -0.5, causal)
        torch.cuda.synchronize()
        err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert not out.isnan().any() and err < 1e-2, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("causal,bottom_right,wl,wr,softcap", [
    (False, False, -1, -1, 0.0), (False, False, -1, -1, 30.0), (True, False, -1, -1, 0.0),
    (True, True, -1, -1, 0.0), (False, True, 100, 0, 0.0)])
def test_many_tiles_per_cta(backend, D, causal, bottom_right, wl, wr, softcap):
    """More query tiles than SMs, so the SM90 kernel's persistent CTAs walk several tiles each
    (softcap too: its own instance), loading the next tile's Q under the current one; with
    Sq > Sk bottom-right causal the first tiles of every head see no key at all."""
    check_case(backend, 3, 24, 8, 1000, 600, D, causal=causal, bottom_right=bottom_right, wl=wl, wr=wr,
               softcap=softcap)


def test_masked_launches_reuse_their_tile_counters(backend):
    """Masked SM90 launches take tiles from atomic counters, one per launch in flight, handed out
    round robin over 1024 of them; each must be back at zero when its launch ends.  More launches
    than counters, each with more tiles than SMs, must all give the first launch's output."""
    q, k, v = make_qkv(2, 16, 4, 700, 700, 128, 128, torch.bfloat16)
    first, first_lse = run_ours(backend, q, k, v, 128 ** -0.5, True, False, -1, -1, 0.0)
    ref, _ = reference(q, k, v, 128 ** -0.5, True, False, -1, -1, 0.0)
    assert ((first.double() - ref).norm() / ref.norm()).item() < 1e-2
    out = torch.empty_like(first)
    lse = torch.empty_like(first_lse)
    for i in range(1100):
        out.fill_(float("nan"))
        backend.forward(q, k, v, 128 ** -0.5, True, False, -1, -1, 0.0, out, lse)
        if i % 100 == 99 or i == 1099:
            torch.cuda.synchronize()
            assert torch.equal(out, first) and torch.equal(lse, first_lse), f"launch {i + 2} differs"


@pytest.mark.parametrize("Sk", [511, 512, 513, 2048, 2049, 4097])
def test_head_dim_64_tile_shape_switch_with_a_mask(backend, Sk):
    """With a mask, head dim 64 runs 64-row tiles (two CTAs per SM) up to 2048 keys, 64 keys
    wide with four stages up to 512 keys and 128 wide beyond, and 192-row tiles beyond 2048."""
    check_case(backend, 1, 2, 1, 700, Sk, 64, causal=True, bottom_right=True)
    check_case(backend, 1, 2, 2, 300, Sk, 64, wl=1000, wr=0, bottom_right=True)


@pytest.mark.parametrize("Sk", [511, 512, 513])
def test_head_dim_64_tile_shape_switch_without_a_mask(backend, Sk):
    """Without a mask, head dim 64 runs 64-row tiles up to 512 keys and 192-row tiles beyond; more
    tiles than the two CTAs per SM take in one wave."""
    check_case(backend, 4, 40, 8, 500, Sk, 64)
    check_case(backend, 1, 2, 2, 129, Sk, 64, softcap=20.0)


@pytest.mark.parametrize("Sk", [511, 512, 513])
def test_head_dim_128_tile_shape_switch_with_a_mask(backend, Sk):
    """With a mask, head dim 128 runs 64 x 64 tiles (two CTAs per SM) up to 512 keys and 128 x 128
    tiles beyond."""
    check_case(backend, 4, 40, 8, 500, Sk, 128, causal=True, bottom_right=True)
    check_case(backend, 1, 2, 2, 300, Sk, 128, wl=100, wr=0, softcap=20.0)


@pytest.mark.parametrize("Sk", [8191, 8192, 8193])
def test_head_dim_128_tile_shape_switch_without_a_mask(backend, Sk):
    """Without a mask, head dim 128 runs 128-key tiles up to 8192 keys and 176-key tiles beyond."""
    check_case(backend, 1, 2, 1, 300, Sk, 128)
    check_case(backend, 2, 2, 2, 129, Sk, 128, softcap=20.0)


@pytest.mark.parametrize("D", [64, 128])
def test_causal_grid_with_many_heads(backend, D):
    """Far more (head, batch) pairs than one wave of CTAs holds: a masked launch then takes most
    pairs one after another and the last group rank by rank (csrc/common/tile_order.h), and every
    tile must still be computed once, for the right head of the right kv group."""
    check_case(backend, 75, 16, 4, 200, 200, D, causal=True)
    check_case(backend, 40, 32, 8, 300, 260, D, causal=True, bottom_right=True)


@pytest.mark.parametrize("D", [64, 192, 256])
@pytest.mark.parametrize("causal,bottom_right,wl,wr", [
    (True, False, -1, -1), (True, True, -1, -1), (False, False, 40, 0), (False, True, 10, 30)])
def test_warpgroups_visit_only_the_key_blocks_their_rows_see(backend, D, causal, bottom_right, wl, wr):
    """With a mask, each consumer warpgroup of an SM90 query tile visits only the key blocks its
    own 64 rows see: under a causal diagonal the first warpgroup skips the tile's last blocks, under
    a sliding window the last one skips the first (key tiles narrower than the query tile: head
    dim 64 beyond 2048 keys, 192, 256).  Rows on both sides of every skipped block must still see
    exactly their keys."""
    Sk = 2500 if D == 64 else 700
    check_case(backend, 2, 3, 1, 650, Sk, D, causal=causal, bottom_right=bottom_right, wl=wl, wr=wr)


@pytest.mark.parametrize("D,Sq,Sk", [
    (64, 950, 2100), (64, 700, 4096), (96, 635, 635), (192, 500, 900), (256, 635, 1000), (256, 512, 512)])
@pytest.mark.parametrize("bottom_right", [False, True])
def test_masked_tiles_taken_in_long_and_short_pairs(backend, D, Sq, Sk, bottom_right):
    """Where the SM90 producer has no registers for a tile counter (head dims 96 and 192, 256 up to
    1k keys, 64 on its 192-row tiles), a masked launch's persistent CTAs take each head's tiles in
    units of two, its longest with its shortest, and with an odd count the middle tile alone.  Odd
    and even counts of tiles per head (5 and 4 here), more units than CTAs, GQA: every tile
    computed once, for its own head."""
    check_case(backend, 4, 16, 4, Sq, Sk, D, causal=True, bottom_right=bottom_right)
    check_case(backend, 3, 18, 6, Sq, Sk, D, wl=150, wr=0, bottom_right=bottom_right)


@pytest.mark.parametrize("Sk", [511, 512, 513, 1023, 1024, 1025])
def test_head_dim_256_tile_shape_switch(backend, Sk):
    """Head dim 256 runs 64-key tiles up to 512 keys without a mask and up to 1024 with one, and
    80-key tiles beyond."""
    check_case(backend, 1, 2, 1, 300, Sk, 256)
    check_case(backend, 2, 3, 3, 257, Sk, 256, causal=True, bottom_right=True, softcap=20.0)


@pytest.mark.parametrize("D,Sq,Sk,causal", [
    (128, 500, 8300, False), (192, 500, 700, False), (192, 900, 600, True), (256, 500, 700, False),
    (256, 900, 600, True), (256, 1900, 1500, True)])
def test_outputs_staged_over_the_last_key_block(backend, D, Sq, Sk, causal):
    """Where the SM90 forward's output has no shared-memory buffer of its own (head dims 192 and
    256, head dim 128's 176-key tiles), the first warpgroup stages it over the tile's last K stage
    and the second over its last V stage, which go back to the producer only once the store has
    read them, while the next tile's Q already loads.  More tiles than CTAs (the next tile's loads
    wait for those stores), and with Sq > Sk bottom-right the first tiles of every head see no key
    (their zeros staged over Q): every row must get its own output."""
    check_case(backend, 2, 40, 8, Sq, Sk, D, causal=causal, bottom_right=causal)
