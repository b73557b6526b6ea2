"""The compiled Flash kernels as the ops' dispatcher sees them.

``get_backend(device)`` gives a KernelBackend for a CUDA device whose kernels can be had (None on
CPU, on GPUs older than sm_80, or when the library cannot be loaded or built; ``unavailable_reason``
says why).  A backend answers ``forward_unsupported(...)`` / ``backward_unsupported(...)`` with None
when its kernels cover a call, else a reason the dispatcher can report, and runs ``forward`` /
``backward`` into preallocated outputs.

Importing this module builds nothing and touches no GPU; the library is loaded (and on a GPU
machine built, once, with progress) on the first ``get_backend`` for a CUDA device.
"""

from __future__ import annotations

import importlib
import os
import threading

import torch

from . import library as _library

SUPPORTED_HEAD_DIMS = (64, 96, 128, 192, 256)
_DTYPE_CODES = {torch.float16: _library.FA_FP16, torch.bfloat16: _library.FA_BF16}
_ALIGN_BYTES = 16


def padded_head_dim(d: int) -> int | None:
    """The kernel head dim a head dim of ``d`` runs at (zero-padded up), or None if too large."""
    for hd in SUPPORTED_HEAD_DIMS:
        if d <= hd:
            return hd
    return None


def _row_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """Batch, head and row strides of a [B, H, S, D] tensor whose rows can be moved with 16-byte
    copies (last dim contiguous, 16-byte aligned base, leading strides multiples of 16 bytes), or
    None if they cannot.  A dim of size 1 gets stride 0: its stride is never multiplied by a
    nonzero index and may be anything, which the kernel's alignment check would refuse."""
    strides, shape = t.stride(), t.shape
    if strides[3] != 1 and shape[3] > 1:
        return None
    if t.data_ptr() % _ALIGN_BYTES:
        return None
    esize = t.element_size()
    out = []
    for i in range(3):
        if shape[i] > 1:
            if (strides[i] * esize) % _ALIGN_BYTES:
                return None
            out.append(strides[i])
        else:
            out.append(0)
    return out[0], out[1], out[2]


def _prepared(x: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """x with its last dim zero-padded to head_dim and its rows 16-byte aligned, and its
    ``_row_strides``."""
    if x.shape[3] != head_dim:
        x = torch.nn.functional.pad(x, (0, head_dim - x.shape[3]))
    strides = _row_strides(x)
    if strides is None:
        # A copy, even of a contiguous tensor: its base address may be what is misaligned.
        x = x.clone(memory_format=torch.contiguous_format)
        strides = _row_strides(x)
    return x, strides


def launch_on(device: torch.device, launch):
    """``launch(stream)`` with ``device`` current, ``stream`` the raw handle of its current stream
    (the C entry points launch there).  Reads the current device first: the guard's set and
    restore cost more than the launch's host side whenever the device is already current, which
    is almost every call."""
    index = device.index
    if torch._C._cuda_getDevice() == index:
        return launch(torch._C._cuda_getCurrentRawStream(index))
    with torch.cuda.device(index):
        return launch(torch._C._cuda_getCurrentRawStream(index))


def _kernel_window(window_left, window_right, causal) -> tuple[int, int]:
    """The (left, right) window the kernels take (-1: unbounded); causal is a right window of 0."""
    wl = int(window_left) if window_left is not None and window_left >= 0 else -1
    wr = int(window_right) if window_right is not None and window_right >= 0 else -1
    if causal:
        wr = 0 if wr < 0 else min(wr, 0)
    return wl, wr


def _launch_head_dim(q, k, v) -> int | None:
    """The kernel head dim of a call that needs no padding and has work to launch, else None:
    what a kept launch (``forward_launcher``, ``backward.backward_launcher``) requires."""
    hd = padded_head_dim(max(q.shape[3], v.shape[3]))
    if 0 in (q.shape[0], q.shape[1], q.shape[2], k.shape[2]) or q.shape[3] != hd or v.shape[3] != hd:
        return None
    return hd


def _forward_fields(qs, ks, vs, os_, B, Hq, Hkv, Sq, Sk, hd, dtype, scale, causal, bottom_right,
                    window_left, window_right, softcap) -> tuple:
    """FwdParams' fields after the five addresses, in its order (positional construction: keyword
    construction of a ctypes struct costs more)."""
    wl, wr = _kernel_window(window_left, window_right, causal)
    return (*qs, *ks, *vs, *os_, B, Hq, Hkv, Sq, Sk, hd, _DTYPE_CODES[dtype], float(scale),
            float(softcap) if softcap and softcap > 0 else 0.0, wl, wr, int(bool(bottom_right)))


_BACKWARD_MODULE = None  # once imported


def _backward_module():
    """fa_inductor.kernels.backward (written by the backward's engineer), or None if missing."""
    global _BACKWARD_MODULE
    if _BACKWARD_MODULE is None:
        try:
            _BACKWARD_MODULE = importlib.import_module(f"{__name__}.backward")
        except ImportError:
            return None
    return _BACKWARD_MODULE


def _family(lib: _library.Library, device: torch.device, direction: str) -> str:
    """The kernels a call in ``direction`` ("fwd" or "bwd") on ``device`` prefers: the SM90 ones on
    Hopper when the library has them, else the SM80 ones.  $FA_INDUCTOR_FWD_FAMILY=sm80 (or
    $FA_INDUCTOR_BWD_FAMILY) forces the SM80 kernels, for comparisons."""
    var = f"FA_INDUCTOR_{direction.upper()}_FAMILY"
    forced = os.environ.get(var, "")
    if forced not in ("", "sm80", "sm90"):
        raise ValueError(f"{var}={forced!r}: expected sm80 or sm90")
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)
    if forced == "sm80" or not (hopper and lib.has(f"fa_{direction}_sm90")):
        return "sm80"
    return "sm90"


class KernelBackend:
    """The compiled kernels on one CUDA device: the SM90 (FlashAttention-3 design) kernels on
    Hopper when built, the SM80 (FlashAttention-2 design) kernels elsewhere and for what the SM90
    ones do not cover."""

    name = "sm80"  # the kernels every call can fall back to

    def __init__(self, lib: _library.Library, device: torch.device):
        self.lib = lib
        self.device = device
        self.forward_name = _family(lib, device, "fwd")
        self.backward_name = _family(lib, device, "bwd")  # see backward_family

    def __repr__(self) -> str:
        return (f"KernelBackend(forward={self.forward_name!r}, backward={self.backward_name!r}, "
                f"{self.device}, {self.lib.path})")

    def backward_family(self, q, v, deterministic: bool | None = None) -> str:
        """The backward kernels a call with these q/v runs (metadata only)."""
        if self.backward_name != "sm90":
            return "sm80"
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        bwd = _backward_module()
        hd = padded_head_dim(max(q.size(-1), v.size(-1)))
        return "sm90" if bwd is not None and hd is not None and bwd.sm90_covers(hd, deterministic) else "sm80"

    # ---- forward ---------------------------------------------------------------------------

    def forward_unsupported(self, q, k, v, bias, causal, bottom_right, window_left, window_right,
                            softcap, dropout_p) -> str | None:
        if bias is not None:
            return "attention bias is not supported by the compiled kernels"
        if dropout_p and dropout_p > 0:
            return "dropout is not supported by the compiled kernels"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4:
                return f"{name} is not 4-d"
            if t.device != self.device:
                return f"{name} is on {t.device}, not {self.device}"
            if t.dtype not in _DTYPE_CODES:
                return f"dtype {t.dtype} is not supported (fp16 or bf16 only)"
        if not (q.dtype == k.dtype == v.dtype):
            return "q, k, v have different dtypes"
        if q.size(0) != k.size(0) or k.shape[:3] != v.shape[:3] or q.size(-1) != k.size(-1):
            return "q, k, v shapes do not match"
        if k.size(1) == 0 or q.size(1) % k.size(1):
            return "number of query heads is not a multiple of key/value heads"
        if padded_head_dim(max(q.size(-1), v.size(-1))) is None:
            return f"head dim {max(q.size(-1), v.size(-1))} > {SUPPORTED_HEAD_DIMS[-1]}"
        if max(q.size(0), q.size(1)) > 65535:
            return "batch or head count exceeds the kernel grid's limit (65535)"
        if max(q.size(2), k.size(2)) >= 2**31:
            return "sequence too long"
        return None

    def forward(self, q, k, v, scale, causal, bottom_right, window_left, window_right, softcap,
                out, lse, family: str | None = None) -> None:
        """Writes out [B,Hq,Sq,Dv] (any strides, last dim contiguous) and lse [B,Hq,Sq] fp32.

        ``family`` ("sm80" or "sm90") overrides the kernels picked for this device."""
        call = self._forward_call(family or self.forward_name)
        self._forward(call, q, k, v, scale, causal, bottom_right, window_left, window_right, softcap, out, lse)

    def forward_launcher(self, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                         window_right, softcap):
        """``launch(q, k, v, out, lse) -> bool``, the forward of this device's family for later
        calls whose tensors have these shapes, strides and dtype, made while the params of this
        call are at hand; None where such calls need more than a launch (head dims padded,
        rows copied to align them, nothing to compute).  ``launch`` reads only the addresses,
        and returns False without launching when one is not 16-byte aligned (this call's
        addresses may have been, the next ones need not be)."""
        B, Hq, Sq, _ = q.shape
        _, Hkv, Sk, _ = k.shape
        hd = _launch_head_dim(q, k, v)
        if hd is None:
            return None
        strides = tuple(_row_strides(t) for t in (q, k, v, out))
        if None in strides or not lse.is_contiguous():
            return None
        call = self._forward_call(self.forward_name)
        fields = _forward_fields(*strides, B, Hq, Hkv, Sq, Sk, hd, q.dtype, scale, causal,
                                 bottom_right, window_left, window_right, softcap)
        device, params = q.device, _library.FwdParams

        def launch(q, k, v, out, lse) -> bool:
            qp, kp, vp, op = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()
            if (qp | kp | vp | op) % _ALIGN_BYTES:
                return False
            p = params(qp, kp, vp, op, lse.data_ptr(), *fields)
            launch_on(device, lambda stream: call(p, stream))
            return True

        return launch

    def _forward_call(self, family: str):
        if family == "sm90":
            if not self.lib.has("fa_fwd_sm90"):
                raise _library.KernelError(f"{self.lib.path} has no SM90 forward (build it with --arch 90a)")
            return self.lib.fwd_sm90
        if family == "sm80":
            return self.lib.fwd_sm80
        raise ValueError(f"unknown kernel family {family!r}")

    def forward_ablation(self, variant: int, q, k, v, scale, causal, out, lse) -> None:
        """The SM90 forward with one scheduling idea switched off (csrc/sm90/fwd_sm90_ablation.cu):
        0 full, 1 no ping-pong, 2 no intra-warpgroup overlap, 3 no warp specialisation,
        4 no L2 eviction hints, 5 128-key tiles without a mask (176 is the default there)."""
        if not self.lib.has("fa_fwd_sm90_ablation"):
            raise _library.KernelError(f"{self.lib.path} has no SM90 ablation instances (build with --arch 90a)")
        call = lambda p, stream: self.lib.fwd_sm90_ablation(p, variant, stream)  # noqa: E731
        self._forward(call, q, k, v, scale, causal, False, -1, -1, 0.0, out, lse)

    def _forward(self, call, q, k, v, scale, causal, bottom_right, window_left, window_right, softcap,
                 out, lse) -> None:
        B, Hq, Sq, D = q.shape
        _, Hkv, Sk, _ = k.shape
        Dv = v.shape[3]
        if B == 0 or Hq == 0 or Sq == 0:
            return
        if Sk == 0:
            out.zero_()
            lse.fill_(float("-inf"))
            return
        hd = padded_head_dim(max(D, Dv))
        q, qs = _prepared(q, hd)
        k, ks = _prepared(k, hd)
        v, vs = _prepared(v, hd)
        o = out
        os_ = _row_strides(out) if Dv == hd else None
        if os_ is None:
            o = torch.empty((B, Sq, Hq, hd), dtype=q.dtype, device=q.device).transpose(1, 2)
            os_ = _row_strides(o)
        lse_buf = lse if lse.is_contiguous() else torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
        p = _library.FwdParams(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse_buf.data_ptr(),
            *_forward_fields(qs, ks, vs, os_, B, Hq, Hkv, Sq, Sk, hd, q.dtype, scale, causal,
                             bottom_right, window_left, window_right, softcap))
        launch_on(q.device, lambda stream: call(p, stream))
        if o is not out:
            out.copy_(o[..., :Dv])
        if lse_buf is not lse:
            lse.copy_(lse_buf)

    # ---- backward (fa_inductor/kernels/backward.py) ------------------------------------------

    def backward_unsupported(self, q, k, v, bias, causal, bottom_right, window_left, window_right,
                             softcap, dropout_p) -> str | None:
        reason = self.forward_unsupported(q, k, v, bias, causal, bottom_right, window_left,
                                          window_right, softcap, dropout_p)
        if reason is not None:
            return reason
        bwd = _backward_module()
        if bwd is None or not self.lib.has("fa_bwd_sm80"):
            return "backward kernel not available"
        check = getattr(bwd, "backward_unsupported", None)
        if check is not None:
            return check(q, k, v, bias, causal, bottom_right, window_left, window_right, softcap, dropout_p)
        return None

    def backward(self, grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                 window_right, softcap, dq, dk, dv, deterministic: bool = False,
                 family: str | None = None) -> None:
        """Writes dq, dk, dv.  ``family`` ("sm80" or "sm90") overrides ``backward_family``."""
        bwd = _backward_module()
        if bwd is None:
            raise _library.KernelError("backward kernel not available")
        family = family or self.backward_family(q, v, deterministic)
        if family == "sm90" and not self.lib.has("fa_bwd_sm90"):
            raise _library.KernelError(f"{self.lib.path} has no SM90 backward (build it with --arch 90a)")
        bwd.run_backward(self.lib, grad_out, q, k, v, out, lse, scale, causal, bottom_right,
                         window_left, window_right, softcap, dq, dk, dv, deterministic, family)

    def backward_launcher(self, grad_out, q, k, v, out, lse, scale, causal, bottom_right,
                          window_left, window_right, softcap, dq, dk, dv, deterministic: bool):
        """As ``forward_launcher``, for the backward (``backward.backward_launcher``)."""
        bwd = _backward_module()
        if bwd is None:
            return None
        family = self.backward_family(q, v, deterministic)  # sm90 only where the library has it
        return bwd.backward_launcher(self.lib, grad_out, q, k, v, out, lse, scale, causal,
                                     bottom_right, window_left, window_right, softcap, dq, dk,
                                     dv, deterministic, family)


_backends: dict[int, KernelBackend | None] = {}
_reasons: dict[int, str] = {}
_lock = threading.Lock()


def _device_index(device) -> int | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


# Every op call asks for its device's backend: the answer for a torch.device with an index, the
# key every CUDA tensor's .device gives, is kept here and found with one lookup.
_by_device: dict[torch.device, KernelBackend | None] = {}


def get_backend(device) -> KernelBackend | None:
    """The compiled kernels for ``device``, or None (see ``unavailable_reason``)."""
    try:
        return _by_device[device]
    except (KeyError, TypeError):
        pass
    backend = _lookup_backend(device)
    if isinstance(device, torch.device) and device.type == "cuda" and device.index is not None:
        _by_device[device] = backend
    return backend


def _lookup_backend(device) -> KernelBackend | None:
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    index = _device_index(device)
    with _lock:
        if index in _backends:
            return _backends[index]
    major, minor = torch.cuda.get_device_capability(index)
    arch = _library.arch_for_capability(major, minor)
    backend = None
    if arch is None:
        reason = f"no compiled kernels for compute capability {major}.{minor}"
    else:
        try:
            backend = KernelBackend(_library.load(arch), torch.device("cuda", index))
            reason = ""
        except _library.KernelError as e:
            reason = f"kernel library unavailable: {e}"
    with _lock:
        _backends[index] = backend
        _reasons[index] = reason
    return backend


def unavailable_reason(device) -> str | None:
    """Why get_backend(device) is None (None if it is not)."""
    if torch.device(device).type != "cuda":
        return "not a CUDA device"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    index = _device_index(device)
    if index not in _backends:
        get_backend(device)
    return _reasons.get(index) or None


ABLATION_VARIANTS = (
    "full FlashAttention-3 schedule",
    "no ping-pong",
    "no intra-warpgroup overlap",
    "no warp specialisation",
    "no L2 eviction hints",
    "128-key tiles without a mask",
)


def ablation_variants(device) -> dict:
    """{name: fn(q, k, v, scale, causal) -> out} for the SM90 forward's ablation instances (head
    dim 128, bf16), the full kernel first; {} where the library has none (not sm_90a)."""
    backend = get_backend(device)
    if backend is None or not backend.lib.has("fa_fwd_sm90_ablation"):
        return {}

    def variant(index: int):
        def run(q, k, v, scale, causal):
            B, H, S, _ = q.shape
            out = torch.empty((B, S, H, v.size(-1)), dtype=q.dtype, device=q.device).transpose(1, 2)
            lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
            backend.forward_ablation(index, q, k, v, scale, causal, out, lse)
            return out

        return run

    return {name: variant(i) for i, name in enumerate(ABLATION_VARIANTS)}


__all__ = ["ABLATION_VARIANTS", "KernelBackend", "ablation_variants", "SUPPORTED_HEAD_DIMS", "get_backend", "padded_head_dim", "unavailable_reason"]
