"""Registration of the ``fa::attention_forward`` / ``fa::attention_backward`` ops.

The fakes allocate exactly what the real implementations return (same shapes, strides and
dtypes, independent of the input strides), so Inductor's ``assert_size_stride`` on the real
outputs holds for any input layout.

The ops are defined with ``torch.library.Library`` rather than ``torch.library.custom_op``
because of the autograd formula: custom_op's autograd kernel rebuilds the argument list from the
schema on every call (``fill_defaults``, which materialises ``schema.arguments``), about half of
an eager call's host time (126 of 279 us per call with grad, dispatch stubbed out, on a slow
CPU), enough to leave the GPU idle between short kernels.  Our schema has no defaults, so the
formula below takes the arguments as they come; otherwise it is the same construction (an
autograd.Function that redispatches below the Autograd key, so tracing modes still see one
``fa.attention_forward`` call).
"""

from __future__ import annotations

import torch

from . import validation

# The real implementations accept any input strides, but the compiled kernels want the layout
# the graph was traced with; pin it explicitly rather than rely on the functorch config default.
_TAGS = tuple(
    t for t in (getattr(torch.Tag, "needs_exact_strides", None),) if t is not None
)


def _empty_bshd(b, s, h, d, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A [B, H, S, D] tensor laid out in [B, S, H, D] memory order."""
    return torch.empty((b, s, h, d), dtype=dtype or like.dtype, device=like.device).transpose(1, 2)


def empty_forward_outputs(q: torch.Tensor, dims: validation.AttentionDims):
    out = _empty_bshd(dims.batch, dims.seqlen_q, dims.heads_q, dims.head_dim_v, q)
    lse = torch.empty((dims.batch, dims.heads_q, dims.seqlen_q), dtype=torch.float32,
                      device=q.device)
    return out, lse


def empty_backward_outputs(q, k, v, bias, bias_requires_grad: bool):
    dq = _empty_bshd(q.shape[0], q.shape[2], q.shape[1], q.shape[3], q)
    dk = _empty_bshd(k.shape[0], k.shape[2], k.shape[1], k.shape[3], k)
    dv = _empty_bshd(v.shape[0], v.shape[2], v.shape[1], v.shape[3], v)
    if bias_requires_grad:
        dbias = torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)
    else:
        dbias = torch.empty((0,), dtype=q.dtype, device=q.device)
    return dq, dk, dv, dbias


_LIB = torch.library.Library("fa", "DEF")  # noqa: TOR901 - the ops' own namespace

_LIB.define(
    "attention_forward(Tensor q, Tensor k, Tensor v, Tensor? bias, float scale, bool causal, "
    "bool bottom_right, SymInt window_left, SymInt window_right, float softcap, float dropout_p, "
    "Tensor? dropout_seed) -> (Tensor, Tensor)",
    tags=(torch.Tag.pt2_compliant_tag, *_TAGS),
)
_LIB.define(
    "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor? bias, float scale, bool causal, bool bottom_right, SymInt window_left, "
    "SymInt window_right, float softcap, float dropout_p, Tensor? dropout_seed, "
    "bool bias_requires_grad) -> (Tensor, Tensor, Tensor, Tensor)",
    tags=(torch.Tag.pt2_compliant_tag, *_TAGS),
)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, dropout_seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real forward (every device): validate, allocate, let ``dispatch`` run it."""
    dims = validation.check_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                    window_right, softcap, dropout_p, dropout_seed)
    from . import dispatch

    out, lse = empty_forward_outputs(q, dims)
    dispatch.run_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                         softcap, dropout_p, dropout_seed, out, lse)
    return out, lse


def _attention_forward_fake(q, k, v, bias, scale, causal, bottom_right, window_left,
                            window_right, softcap, dropout_p, dropout_seed):
    dims = validation.check_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                    window_right, softcap, dropout_p, dropout_seed)
    return empty_forward_outputs(q, dims)


def attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None, scale: float,
    causal: bool, bottom_right: bool, window_left: int, window_right: int, softcap: float,
    dropout_p: float, dropout_seed: torch.Tensor | None, bias_requires_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real backward (every device): validate, allocate, let ``dispatch`` run it."""
    validation.check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p, dropout_seed,
                              bias_requires_grad)
    from . import dispatch

    dq, dk, dv, dbias = empty_backward_outputs(q, k, v, bias, bias_requires_grad)
    dispatch.run_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                          window_left, window_right, softcap, dropout_p, dropout_seed,
                          dq, dk, dv, dbias if bias_requires_grad else None)
    return dq, dk, dv, dbias


def _attention_backward_fake(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                             window_left, window_right, softcap, dropout_p, dropout_seed,
                             bias_requires_grad):
    validation.check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p, dropout_seed,
                              bias_requires_grad)
    return empty_backward_outputs(q, k, v, bias, bias_requires_grad)


_LIB.impl("attention_forward", attention_forward, "CompositeExplicitAutograd")
_LIB.impl("attention_backward", attention_backward, "CompositeExplicitAutograd")
torch.library.register_fake("fa::attention_forward", _attention_forward_fake, lib=_LIB)
torch.library.register_fake("fa::attention_backward", _attention_backward_fake, lib=_LIB)

# ----------------------------------------------------------------------------- autograd

_FORWARD = torch.ops.fa.attention_forward.default
_BELOW_AUTOGRAD = torch._C._after_autograd_keyset


def _redispatch_forward(keyset, args):
    with torch._C._AutoDispatchBelowAutograd():
        return _FORWARD.redispatch(keyset & _BELOW_AUTOGRAD, *args)


class _AttentionFunction(torch.autograd.Function):
    """forward: the op below the Autograd key; backward: ``fa::attention_backward``."""

    @staticmethod
    def forward(ctx, keyset, *args):
        out, lse = _redispatch_forward(keyset, args)
        q, k, v, bias, *scalars, dropout_seed = args
        ctx.scalars = tuple(scalars)
        # needs_input_grad[0] is the keyset's; bias is the fifth input.
        ctx.bias_requires_grad = bool(
            bias is not None and bias.dtype != torch.bool and ctx.needs_input_grad[4]
        )
        ctx.save_for_backward(q, k, v, out, lse, bias, dropout_seed)
        # lse is an auxiliary output for the backward; its gradient is not part of the contract.
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, bias, dropout_seed = ctx.saved_tensors
        scale, causal, bottom_right, window_left, window_right, softcap, dropout_p = ctx.scalars
        dq, dk, dv, dbias = torch.ops.fa.attention_backward.default(
            grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right, window_left,
            window_right, softcap, dropout_p, dropout_seed, ctx.bias_requires_grad,
        )
        return (None, dq, dk, dv, dbias if ctx.bias_requires_grad else None,
                None, None, None, None, None, None, None, None)


def _attention_forward_autograd(keyset, *args):
    q, k, v, bias = args[:4]
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _AttentionFunction.apply(keyset, *args)
    return _redispatch_forward(keyset, args)


_LIB.impl("attention_forward", _attention_forward_autograd, "Autograd", with_keyset=True)
