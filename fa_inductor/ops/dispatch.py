"""Which implementation runs one call of the fa ops.

Order of preference, per call:

1. a compiled Flash kernel (``fa_inductor.kernels.get_backend(device)``), when it reports the
   call supported;
2. PyTorch's SDPA internals on CUDA (``aten._scaled_dot_product_flash_attention`` /
   ``_scaled_dot_product_efficient_attention`` and their backward ops), for the subset of the
   contract they implement exactly: no softcap, no dropout (our dropout mask is a hash that
   forward and backward must share; SDPA's RNG is not it).  Flash takes no bias and causal only
   with Sq == Sk; the efficient kernel takes float/bool bias, and windows or bottom-right causal
   with Sq != Sk as an explicit [Sq, Sk] mask folded into the bias (SDPA's is_causal is top-left);
3. the blockwise PyTorch reference (``reference.py``), which implements everything.

The SDPA rules and glue live in ``sdpa.py``; this module only orders the candidates.

``select_forward`` / ``select_backward`` only read tensor metadata, so they work on fake tensors
at trace time (``explain``, benchmarks); ``run_forward`` / ``run_backward`` execute the choice.
Environment switches for debugging: ``FA_INDUCTOR_DISABLE_KERNELS=1`` and
``FA_INDUCTOR_DISABLE_SDPA=1`` skip steps 1 and 2.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from . import reference, sdpa

REFERENCE = "reference"
SDPA_FLASH = sdpa.FLASH
SDPA_EFFICIENT = sdpa.EFFICIENT


@dataclass(frozen=True)
class Choice:
    """The implementation picked for a call and why (e.g. why faster ones were passed over)."""

    name: str
    reason: str


# ----------------------------------------------------------------------------- kernel backend


_GET_BACKEND = None  # fa_inductor.kernels.get_backend, once imported


def _kernel_backend(device: torch.device):
    """The compiled-kernel backend for ``device``, or None (not built, not importable, CPU)."""
    global _GET_BACKEND
    if os.environ.get("FA_INDUCTOR_DISABLE_KERNELS") == "1":
        return None
    if _GET_BACKEND is None:
        try:
            from fa_inductor.kernels import get_backend
        except ImportError:
            return None
        _GET_BACKEND = get_backend
    return _GET_BACKEND(device)


_kernel_choices: dict[str, Choice] = {}  # one Choice per kernel family, made once


def _kernel_choice(name: str) -> Choice:
    choice = _kernel_choices.get(name)
    if choice is None:
        choice = _kernel_choices[name] = Choice(name, "compiled kernel supports the call")
    return choice


def _choose(kernel_check: str, q, k, v, bias, causal, bottom_right, window_left, window_right,
            softcap, dropout_p):
    """(the Choice, the kernel backend it names or None): the run functions use the backend the
    choice was made with rather than ask for it again."""
    passed_over: list[str] = []
    # The kernel backend is asked for every device (it answers None off CUDA), which also lets
    # tests stand in a backend on CPU.
    backend = _kernel_backend(q.device)
    if backend is None and q.device.type != "cuda":
        return Choice(REFERENCE, f"no CUDA device ({q.device.type})"), None
    if backend is None:
        passed_over.append("no compiled kernels")
    else:
        # Each direction names the kernel family that runs it (SM90 on Hopper where it covers
        # the call).
        name = backend.name
        if kernel_check == "forward_unsupported":
            name = getattr(backend, "forward_name", name)
        elif hasattr(backend, "backward_family"):
            name = backend.backward_family(q, v)
        why = getattr(backend, kernel_check)(q, k, v, bias, causal, bottom_right, window_left,
                                             window_right, softcap, dropout_p)
        if why is None:
            return _kernel_choice(name), backend
        passed_over.append(f"{name}: {why}")
    why = sdpa.unsupported(q, k, v, bias, causal, bottom_right, window_left, window_right,
                            softcap, dropout_p)
    if why is None and q.device.type != "cuda":
        why = f"SDPA internals are used on CUDA only (not {q.device.type})"
    if why is None:
        # flash's is_causal is bottom-right aligned and SDPA's top-left: flash takes causal only
        # when they agree (Sq == Sk); the efficient kernel is top-left.
        band = sdpa.needs_band_mask(q, k, causal, bottom_right, window_left, window_right)
        why_flash = sdpa.flash_unsupported(q, k, v, bias, band)
        if why_flash is None and causal and q.shape[2] != k.shape[2]:
            why_flash = "flash SDPA is_causal needs Sq == Sk"
        if why_flash is None:
            return Choice(SDPA_FLASH, "; ".join(passed_over)), None
        why_eff = sdpa.efficient_unsupported(q, k, v, bias, band)
        if why_eff is None:
            return Choice(SDPA_EFFICIENT, "; ".join(passed_over + [why_flash])), None
        passed_over += [why_flash, why_eff]
    else:
        passed_over.append(why)
    return Choice(REFERENCE, "; ".join(passed_over)), None


def select_forward(q, k, v, bias, causal, bottom_right, window_left, window_right, softcap,
                   dropout_p) -> Choice:
    """The implementation ``run_forward`` uses for these arguments (metadata only: fakes ok)."""
    return _choose("forward_unsupported", q, k, v, bias, causal, bottom_right, window_left,
                   window_right, softcap, dropout_p)[0]


def select_backward(q, k, v, bias, causal, bottom_right, window_left, window_right, softcap,
                    dropout_p) -> Choice:
    """The implementation ``run_backward`` uses for these arguments (metadata only: fakes ok)."""
    return _choose("backward_unsupported", q, k, v, bias, causal, bottom_right, window_left,
                   window_right, softcap, dropout_p)[0]


def _hint(x) -> int:
    """A concrete value for a size, without adding a guard (trace-time predictions only)."""
    if isinstance(x, int):
        return x
    try:
        from torch.fx.experimental.symbolic_shapes import optimization_hint
    except ImportError:  # older torch
        hint = getattr(x.node, "hint", None)
        return int(hint) if hint is not None else 8192
    return optimization_hint(x, fallback=8192)


def _concrete(t):
    """t itself, or for a fake tensor with symbolic sizes a fresh fake tensor of its hinted
    sizes, so that predicting a choice never specialises (guards) a dynamic shape."""
    if not isinstance(t, torch.Tensor) or all(isinstance(s, int) for s in t.shape):
        return t
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty_strided([_hint(s) for s in t.shape], [_hint(s) for s in t.stride()],
                                   dtype=t.dtype, device=t.device)


def _meta_val(arg):
    if isinstance(arg, torch.fx.Node):
        val = arg.meta.get("val", arg.meta.get("example_value"))
        return _concrete(val)
    return _concrete(arg)


def predict_kernel(q, plan) -> str:
    """Best-effort kernel name for a site before it is rewritten: q's fake value plus a plan
    with ``k``/``v`` operands (``.shape()`` in [B, H, S, D] order after permutation, missing
    leading dims are 1), ``biases``/``masks`` and the mask/softcap/dropout fields.
    Prefer ``choice_for_node`` on the inserted ``fa.attention_forward`` node: it is exact."""
    if isinstance(q, torch.fx.Node):
        choice = choice_for_node(q)
        if choice is not None:
            return choice.name
        q = _meta_val(q)
    base = _concrete(q)

    def operand(op):
        shape = [_hint(s) for s in op.shape()]
        return base.new_empty([1] * (4 - len(shape)) + shape)

    if getattr(plan, "q", None) is not None:
        q = operand(plan.q)
    else:
        q = base.reshape((1,) * (4 - base.dim()) + tuple(base.shape))
    k, v = operand(plan.k), operand(plan.v)
    has_bias = bool(getattr(plan, "biases", None)) or bool(getattr(plan, "masks", None))
    return select_forward(q, k, v, q if has_bias else None, plan.causal, plan.bottom_right,
                          plan.window_left, plan.window_right, plan.softcap, plan.dropout_p).name


def choice_for_node(node: torch.fx.Node) -> Choice | None:
    """The choice for an FX node calling ``fa.attention_forward``/``attention_backward``,
    from its arguments' ``meta['val']`` fake tensors; None for any other node or missing meta."""
    target = getattr(node, "target", None)
    if target is torch.ops.fa.attention_forward.default:
        select = select_forward
    elif target is torch.ops.fa.attention_backward.default:
        select = select_backward
    else:
        return None
    bound = target._schema  # bind positional and keyword arguments by name
    names = [a.name for a in bound.arguments]
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    q, k, v, bias = (_meta_val(values.get(n)) for n in ("q", "k", "v", "bias"))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None
    return select(q, k, v, bias, *(_meta_val(values[n]) for n in (
        "causal", "bottom_right", "window_left", "window_right", "softcap", "dropout_p")))


# ----------------------------------------------------------------------------- execution

_recorders: list[list[tuple[str, Choice]]] = []


@contextlib.contextmanager
def record_choices() -> Iterator[list[tuple[str, Choice]]]:
    """Collect ("forward" | "backward", Choice) for every op call executed inside the block,
    so benchmarks can say which implementation actually ran."""
    log: list[tuple[str, Choice]] = []
    _recorders.append(log)
    try:
        yield log
    finally:
        _recorders.remove(log)


def note(direction: str, choice: Choice) -> Choice:
    """Log an executed call's choice to every ``record_choices`` block open."""
    for log in _recorders:
        log.append((direction, choice))
    return choice


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def run_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right, softcap,
                dropout_p, dropout_seed, out, lse) -> Choice:
    """Compute the forward into out/lse with the implementation ``select_forward`` picks."""
    choice, backend = _choose("forward_unsupported", q, k, v, bias, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p)
    note("forward", choice)
    if choice.name == REFERENCE:
        reference.forward_into(q, k, v, bias, scale, causal, bottom_right, window_left,
                               window_right, softcap, dropout_p, dropout_seed, out, lse)
        return choice
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    if choice.name in (SDPA_FLASH, SDPA_EFFICIENT):
        sdpa_bias, sdpa_causal = sdpa.with_band_mask(q, k, bias, causal, bottom_right,
                                                     window_left, window_right)
        sdpa.forward(choice.name, q, k, v, sdpa_bias, scale, sdpa_causal, out, lse)
    else:
        backend.forward(q, k, v, scale, causal, bottom_right, window_left, window_right, softcap,
                        out, lse)
    return choice


def run_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right, window_left,
                 window_right, softcap, dropout_p, dropout_seed, dq, dk, dv, dbias) -> Choice:
    """Compute the gradients into dq/dk/dv (and dbias unless None) with the implementation
    ``select_backward`` picks."""
    choice, backend = _choose("backward_unsupported", q, k, v, bias, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p)
    if choice.name != REFERENCE and reference.lse_lost_precision(lse, bias):
        choice = Choice(REFERENCE, f"{choice.name} passed over: a row's keys all carry a huge "
                        "finite bias, whose fp32 lse cannot rebuild its probabilities")
    note("backward", choice)
    if choice.name == REFERENCE:
        reference.backward_into(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                                window_left, window_right, softcap, dropout_p, dropout_seed,
                                dq, dk, dv, dbias)
        return choice
    grad_out, q, k, v, out = (_last_dim_contiguous(t) for t in (grad_out, q, k, v, out))
    if choice.name in (SDPA_FLASH, SDPA_EFFICIENT):
        sdpa_bias, sdpa_causal = sdpa.with_band_mask(q, k, bias, causal, bottom_right,
                                                     window_left, window_right)
        sdpa.backward(choice.name, grad_out, q, k, v, out, lse, sdpa_bias, scale, sdpa_causal,
                      dq, dk, dv, dbias)
    else:
        backend.backward(
            grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left, window_right,
            softcap, dq, dk, dv, torch.are_deterministic_algorithms_enabled())
    return choice
