"""Loads libfa_kernels.so with ctypes and mirrors its forward params struct.

The library has a plain C ABI (csrc/fa_api.h): no torch headers, cudart linked statically, so
one build serves every torch version.  Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

ABI_VERSION = 2  # csrc/fa_api.h FA_ABI_VERSION

FA_FP16 = 0
FA_BF16 = 1

FA_OK = 0


class FwdParams(ctypes.Structure):
    """Mirror of FaFwdParams (csrc/common/fa_params.h); same order, same types."""

    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("q_batch_stride", ctypes.c_int64),
        ("q_head_stride", ctypes.c_int64),
        ("q_row_stride", ctypes.c_int64),
        ("k_batch_stride", ctypes.c_int64),
        ("k_head_stride", ctypes.c_int64),
        ("k_row_stride", ctypes.c_int64),
        ("v_batch_stride", ctypes.c_int64),
        ("v_head_stride", ctypes.c_int64),
        ("v_row_stride", ctypes.c_int64),
        ("o_batch_stride", ctypes.c_int64),
        ("o_head_stride", ctypes.c_int64),
        ("o_row_stride", ctypes.c_int64),
        ("batch", ctypes.c_int32),
        ("heads_q", ctypes.c_int32),
        ("heads_kv", ctypes.c_int32),
        ("seqlen_q", ctypes.c_int32),
        ("seqlen_k", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("bottom_right", ctypes.c_int32),
    ]


class KernelError(RuntimeError):
    """A kernel entry point returned an error code."""


class Library:
    """The loaded shared library with typed entry points."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.fa_abi_version.restype = ctypes.c_int
        self._lib.fa_last_error.restype = ctypes.c_char_p
        version = self._lib.fa_abi_version()
        if version != ABI_VERSION:
            raise KernelError(f"{self.path} has ABI version {version}, expected {ABI_VERSION}: rebuild it")
        self._lib.fa_fwd_sm80.restype = ctypes.c_int
        self._lib.fa_fwd_sm80.argtypes = [ctypes.POINTER(FwdParams), ctypes.c_void_p]
        # Only in libraries built for sm_90a.
        if self.has("fa_fwd_sm90"):
            self._lib.fa_fwd_sm90.restype = ctypes.c_int
            self._lib.fa_fwd_sm90.argtypes = [ctypes.POINTER(FwdParams), ctypes.c_void_p]
        if self.has("fa_fwd_sm90_ablation"):
            self._lib.fa_fwd_sm90_ablation.restype = ctypes.c_int
            self._lib.fa_fwd_sm90_ablation.argtypes = [ctypes.POINTER(FwdParams), ctypes.c_int, ctypes.c_void_p]

    @property
    def raw(self) -> ctypes.CDLL:
        """The CDLL itself, for entry points declared elsewhere (the backward's)."""
        return self._lib

    def has(self, symbol: str) -> bool:
        return hasattr(self._lib, symbol)

    def last_error(self) -> str:
        msg = self._lib.fa_last_error()
        return msg.decode(errors="replace") if msg else ""

    def check(self, status: int, what: str) -> None:
        if status != FA_OK:
            raise KernelError(f"{what} failed (code {status}): {self.last_error()}")

    def fwd_sm80(self, params: FwdParams, stream: int) -> None:
        self.check(self._lib.fa_fwd_sm80(ctypes.byref(params), ctypes.c_void_p(stream)), "fa_fwd_sm80")

    def fwd_sm90(self, params: FwdParams, stream: int) -> None:
        self.check(self._lib.fa_fwd_sm90(ctypes.byref(params), ctypes.c_void_p(stream)), "fa_fwd_sm90")

    def fwd_sm90_ablation(self, params: FwdParams, variant: int, stream: int) -> None:
        status = self._lib.fa_fwd_sm90_ablation(ctypes.byref(params), int(variant), ctypes.c_void_p(stream))
        self.check(status, "fa_fwd_sm90_ablation")


_lock = threading.Lock()
_loaded: dict[str, Library] = {}
_failures: dict[str, str] = {}


def arch_for_capability(major: int, minor: int) -> str | None:
    """The build arch whose code runs on a device of this compute capability (None: none)."""
    if major == 8:
        return "80"  # sm_80 code runs on sm_86 and sm_89 too
    if (major, minor) == (9, 0):
        return "90a"
    return None


def _should_build() -> bool:
    return os.environ.get("FA_INDUCTOR_NO_BUILD", "0") in ("", "0")


def load(arch: str) -> Library:
    """The library for ``arch``: an explicit $FA_INDUCTOR_LIBRARY, the cached build, or a build.

    Raises KernelError (with the reason) when it cannot be had; the reason is remembered so a
    failed build is not retried on every call.
    """
    with _lock:
        if arch in _loaded:
            return _loaded[arch]
        if arch in _failures:
            raise KernelError(_failures[arch])
        try:
            explicit = os.environ.get("FA_INDUCTOR_LIBRARY")
            if explicit:
                path = Path(explicit)
            else:
                from .. import build as _build

                path = _build.library_path(arch)
                if not path.is_file():
                    if not _should_build():
                        raise KernelError(f"kernels not built for sm_{arch} and FA_INDUCTOR_NO_BUILD is set")
                    print(f"fa_inductor: compiling the Flash kernels for sm_{arch} (first use; cached after)",
                          file=sys.stderr, flush=True)
                    path = _build.build(arch, progress=lambda s: print(s, file=sys.stderr, flush=True))
            lib = Library(path)
        except Exception as e:  # noqa: BLE001 - any failure means: no compiled kernels here
            reason = f"{type(e).__name__}: {e}"
            _failures[arch] = reason
            raise KernelError(reason) from e
        _loaded[arch] = lib
        return lib
