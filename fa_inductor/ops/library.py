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

from . import dispatch, repeat_calls, validation

# The real implementations accept any input strides, but the compiled kernels want the layout
# the graph was traced with; pin it explicitly rather than rely on the functorch config default.
_TAGS = tuple(
    t for t in (getattr(torch.Tag, "needs_exact_strides", None),) if t is not None
)


def _empty_bshd(b, s, h, d, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A [B, H, S, D] tensor laid out in [B, S, H, D] memory order (one call: every op call makes
    these)."""
    return torch.empty_strided((b, h, s, d), (s * h * d, d, h * d, 1), dtype=dtype or like.dtype,
                               device=like.device)


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
    """The real forward (every device): validate, allocate, let ``dispatch`` run it; a call
    repeating the signature of one a compiled kernel ran goes straight to its launch
    (``repeat_calls``)."""
    signature = repeat_calls.forward_signature(q, k, v, bias, scale, causal, bottom_right,
                                               window_left, window_right, softcap, dropout_p,
                                               dropout_seed)
    if signature is not None:
        plan = repeat_calls.forward_plan(signature, q.device)
        if plan is not None:
            out, lse = empty_forward_outputs(q, plan.sizes)
            if plan.launch(q, k, v, out, lse):
                dispatch.note("forward", plan.choice)
                return out, lse
    dims = validation.check_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                    window_right, softcap, dropout_p, dropout_seed)
    out, lse = empty_forward_outputs(q, dims)
    choice = dispatch.run_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                  window_right, softcap, dropout_p, dropout_seed, out, lse)
    if signature is not None:
        repeat_calls.keep_forward(signature, choice, dims, q, k, v, out, lse, scale, causal,
                                  bottom_right, window_left, window_right, softcap)
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
    """The real backward (every device): validate, allocate, let ``dispatch`` run it; a call
    repeating the signature of one a compiled kernel ran goes straight to its launch
    (``repeat_calls``)."""
    signature = repeat_calls.backward_signature(grad_out, q, k, v, out, lse, bias, scale, causal,
                                                bottom_right, window_left, window_right, softcap,
                                                dropout_p, dropout_seed, bias_requires_grad)
    if signature is not None:
        plan = repeat_calls.backward_plan(signature, q.device)
        if plan is not None:
            dq, dk, dv, dbias = empty_backward_outputs(q, k, v, bias, False)
            if plan.launch(grad_out, q, k, v, out, lse, dq, dk, dv):
                dispatch.note("backward", plan.choice)
                return dq, dk, dv, dbias
    validation.check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p, dropout_seed,
                              bias_requires_grad)
    dq, dk, dv, dbias = empty_backward_outputs(q, k, v, bias, bias_requires_grad)
    choice = dispatch.run_backward(grad_out, q, k, v, out, lse, bias, scale, causal,
                                   bottom_right, window_left, window_right, softcap, dropout_p,
                                   dropout_seed, dq, dk, dv, dbias if bias_requires_grad else None)
    if signature is not None:
        repeat_calls.keep_backward(signature, choice, grad_out, q, k, v, out, lse, scale, causal,
                                   bottom_right, window_left, window_right, softcap, dq, dk, dv)
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
_BACKWARD = torch.ops.fa.attention_backward.default
_BELOW_AUTOGRAD = torch._C._after_autograd_keyset
# Keysets below Autograd with nothing but a backend in them: no mode, tensor subclass, fake
# tensor or functionalization waits between the Autograd kernel and the implementation.
_PLAIN = tuple(torch._C.DispatchKeySet(k) for k in (torch._C.DispatchKey.CUDA,
                                                     torch._C.DispatchKey.CPU))


def _plain(keyset) -> bool:
    below = keyset & _BELOW_AUTOGRAD
    return below == _PLAIN[0] or below == _PLAIN[1]


def _redispatch_forward(keyset, args, plain: bool):
    """The forward below the Autograd key; ``plain``: ``_plain(keyset)``."""
    if plain:
        # The dispatcher would only come back to attention_forward: call it, sparing the trip
        # (a boxed redispatch into Python, a good part of a short call's host time).
        return attention_forward(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return _FORWARD.redispatch(keyset & _BELOW_AUTOGRAD, *args)


def _backward_reaches_the_implementation(ctx, grad_out) -> bool:
    """Whether a call of ``fa::attention_backward`` here would reach its implementation untouched,
    so that the backward can call it directly: the forward's inputs were plain tensors (see
    ``_PLAIN``), so is grad_out, and no dispatch mode, functorch transform or graph recording
    (create_graph, where the op's autograd fallback must see the call) is active."""
    return (ctx.plain and type(grad_out) is torch.Tensor and not grad_out._is_zerotensor()
            and not torch.is_grad_enabled() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._are_functorch_transforms_active())


class _AttentionFunction(torch.autograd.Function):
    """forward: the op below the Autograd key; backward: ``fa::attention_backward`` (its
    implementation called directly where nothing would intercept the op)."""

    @staticmethod
    def forward(ctx, keyset, *args):
        # lse's gradient is never used: no zeros made for it.
        ctx.set_materialize_grads(False)
        ctx.plain = _plain(keyset)
        out, lse = _redispatch_forward(keyset, args, ctx.plain)
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
        if grad_out is None:  # no gradient reached out (grads are not materialised as zeros)
            return (None,) * 13
        q, k, v, out, lse, bias, dropout_seed = ctx.saved_tensors
        scale, causal, bottom_right, window_left, window_right, softcap, dropout_p = ctx.scalars
        args = (grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right, window_left,
                window_right, softcap, dropout_p, dropout_seed, ctx.bias_requires_grad)
        if not _backward_reaches_the_implementation(ctx, grad_out):
            dq, dk, dv, dbias = _BACKWARD(*args)
        elif torch.autograd.profiler._is_profiler_enabled:
            # The op's own entry would have recorded it: profiles keep showing the backward op.
            with torch.autograd.profiler.record_function("fa::attention_backward"):
                dq, dk, dv, dbias = attention_backward(*args)
        else:
            dq, dk, dv, dbias = attention_backward(*args)
        return (None, dq, dk, dv, dbias if ctx.bias_requires_grad else None,
                None, None, None, None, None, None, None, None)


# autograd.Function.apply is a Python wrapper around this C entry: without functorch transforms
# it only unwraps dead functorch wrappers among the arguments, walking all thirteen of them with
# a generator on every call (a third of the autograd layer's host time); the op's tensors are
# five, known by position.
_APPLY = super(torch.autograd.Function, _AttentionFunction).apply
_UNWRAP_IF_DEAD = getattr(torch._C._functorch, "unwrap_if_dead", None)


def _apply(keyset, args):
    if _UNWRAP_IF_DEAD is None or torch._C._are_functorch_transforms_active():
        return _AttentionFunction.apply(keyset, *args)
    q, k, v, bias, *scalars, seed = args
    return _APPLY(keyset, _UNWRAP_IF_DEAD(q), _UNWRAP_IF_DEAD(k), _UNWRAP_IF_DEAD(v),
                  None if bias is None else _UNWRAP_IF_DEAD(bias), *scalars,
                  None if seed is None else _UNWRAP_IF_DEAD(seed))


def _attention_forward_autograd(keyset, *args):
    q, k, v, bias = args[:4]
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _apply(keyset, args)
    return _redispatch_forward(keyset, args, _plain(keyset))


_LIB.impl("attention_forward", _attention_forward_autograd, "Autograd", with_keyset=True)
