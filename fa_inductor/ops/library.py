"""Registration of the ``fa::attention_forward`` / ``fa::attention_backward`` custom ops.

The fakes allocate exactly what the real implementations return (same shapes, strides and
dtypes, independent of the input strides), so Inductor's ``assert_size_stride`` on the real
outputs holds for any input layout.
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


@torch.library.custom_op("fa::attention_forward", mutates_args=(), tags=_TAGS)
def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, dropout_seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    dims = validation.check_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                    window_right, softcap, dropout_p, dropout_seed)
    from . import dispatch

    out, lse = empty_forward_outputs(q, dims)
    dispatch.run_forward(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                         softcap, dropout_p, dropout_seed, out, lse)
    return out, lse


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, bias, scale, causal, bottom_right, window_left,
                            window_right, softcap, dropout_p, dropout_seed):
    dims = validation.check_forward(q, k, v, bias, scale, causal, bottom_right, window_left,
                                    window_right, softcap, dropout_p, dropout_seed)
    return empty_forward_outputs(q, dims)


@torch.library.custom_op("fa::attention_backward", mutates_args=(), tags=_TAGS)
def attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None, scale: float,
    causal: bool, bottom_right: bool, window_left: int, window_right: int, softcap: float,
    dropout_p: float, dropout_seed: torch.Tensor | None, bias_requires_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    validation.check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p, dropout_seed,
                              bias_requires_grad)
    from . import dispatch

    dq, dk, dv, dbias = empty_backward_outputs(q, k, v, bias, bias_requires_grad)
    dispatch.run_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                          window_left, window_right, softcap, dropout_p, dropout_seed,
                          dq, dk, dv, dbias if bias_requires_grad else None)
    return dq, dk, dv, dbias


@attention_backward.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                             window_left, window_right, softcap, dropout_p, dropout_seed,
                             bias_requires_grad):
    validation.check_backward(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                              window_left, window_right, softcap, dropout_p, dropout_seed,
                              bias_requires_grad)
    return empty_backward_outputs(q, k, v, bias, bias_requires_grad)


_SCALAR_ARGS = ("scale", "causal", "bottom_right", "window_left", "window_right", "softcap",
                "dropout_p")


def _setup_context(ctx, inputs, output):
    q, k, v, bias, *scalars, dropout_seed = inputs
    out, lse = output
    ctx.scalars = tuple(scalars)
    ctx.bias_requires_grad = bool(
        bias is not None and bias.dtype != torch.bool and ctx.needs_input_grad[3]
    )
    ctx.save_for_backward(q, k, v, out, lse, bias, dropout_seed)
    # lse is an auxiliary output for the backward; its gradient is not part of the contract.
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, bias, dropout_seed = ctx.saved_tensors
    scale, causal, bottom_right, window_left, window_right, softcap, dropout_p = ctx.scalars
    dq, dk, dv, dbias = torch.ops.fa.attention_backward(
        grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right, window_left,
        window_right, softcap, dropout_p, dropout_seed, ctx.bias_requires_grad,
    )
    return (dq, dk, dv, dbias if ctx.bias_requires_grad else None,
            None, None, None, None, None, None, None, None)


attention_forward.register_autograd(_backward, setup_context=_setup_context)
