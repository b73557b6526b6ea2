"""Eager calls that repeat one signature go straight to their kernel launch.

A model run eagerly calls the ops with the same signature (shapes, strides, dtypes, devices and
scalar arguments) step after step.  The checks, the dispatcher's choice and the kernel's params
less the addresses are functions of the signature alone, so the first call of a signature runs
them as usual and, where a compiled kernel ran it with nothing to prepare (no padding, no copy),
keeps its launch; later calls of that signature allocate the outputs and launch.

Why: on the GPU machines here the host side of an eager forward took about 70 us in the op's
implementation (validation, choice, params) against about 100 us of kernel at the grid's shortest
points, so short calls left the GPU waiting (benchmarks/results/host_overhead_h100.md).

What can differ between two calls of one signature is read on every call: the kernel backend the
dispatcher would use (its environment switch, a backend replaced by a test), the addresses and
their alignment, the current device and stream (``launch_on``), the logs of ``record_choices``.
Only plain tensors take this path (not a subclass, fake or functional tensor), without bias or
dropout seed (so without dropout), with the scalar types every graph and benchmark passes;
anything else, and any call the launch refuses, goes the usual way.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from . import dispatch

_Tensor = torch.Tensor
# False: every call takes the full path (comparisons of the two; nothing else turns it off).
ENABLED = True
# Signatures differ by shape, so a model with many lengths (eager decoding) would add one per
# length: past this many the cache starts again (a miss costs only the usual path).
MAX_PLANS = 256


class Plan(NamedTuple):
    backend: object  # the kernel backend the launch belongs to
    launch: Callable[..., bool]
    choice: dispatch.Choice
    sizes: tuple  # what the op needs to allocate the outputs


_forward: dict[tuple, Plan] = {}
_backward: dict[tuple, Plan] = {}


def _plain_scalars(scale, causal, bottom_right, window_left, window_right, softcap,
                   dropout_p) -> bool:
    # Exact types: True == 1 == 1.0 hash alike, so values alone would not tell calls apart.
    return (type(scale) is float and type(softcap) is float and type(dropout_p) is float
            and type(causal) is bool and type(bottom_right) is bool
            and type(window_left) is int and type(window_right) is int)


def forward_signature(q, k, v, bias, scale, causal, bottom_right, window_left, window_right,
                      softcap, dropout_p, dropout_seed) -> tuple | None:
    """The key of a forward call's plan, or None for calls that do not take this path."""
    if (not ENABLED or bias is not None or dropout_seed is not None or type(q) is not _Tensor
            or type(k) is not _Tensor or type(v) is not _Tensor
            or not _plain_scalars(scale, causal, bottom_right, window_left, window_right,
                                  softcap, dropout_p)):
        return None
    return (q.shape, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
            v.shape, v.stride(), v.dtype, v.device,
            scale, causal, bottom_right, window_left, window_right, softcap, dropout_p)


def backward_signature(grad_out, q, k, v, out, lse, bias, scale, causal, bottom_right,
                       window_left, window_right, softcap, dropout_p, dropout_seed,
                       bias_requires_grad) -> tuple | None:
    """The key of a backward call's plan, or None for calls that do not take this path."""
    if (bias_requires_grad is not False or type(grad_out) is not _Tensor
            or type(out) is not _Tensor or type(lse) is not _Tensor):
        return None
    forward = forward_signature(q, k, v, bias, scale, causal, bottom_right, window_left,
                                window_right, softcap, dropout_p, dropout_seed)
    if forward is None:
        return None
    # The deterministic flag picks the kernels (and their dQ order).
    return (forward, grad_out.shape, grad_out.stride(), grad_out.dtype, grad_out.device,
            out.shape, out.stride(), out.dtype, out.device, lse.shape, lse.stride(), lse.dtype,
            lse.device, torch.are_deterministic_algorithms_enabled())


def _plan(plans: dict, signature: tuple, device: torch.device) -> Plan | None:
    plan = plans.get(signature)
    if plan is not None and dispatch._kernel_backend(device) is plan.backend:
        return plan
    return None


def forward_plan(signature: tuple, device: torch.device) -> Plan | None:
    """The kept plan for this forward signature, if the dispatcher would still use its backend."""
    return _plan(_forward, signature, device)


def backward_plan(signature: tuple, device: torch.device) -> Plan | None:
    """The kept plan for this backward signature, if the dispatcher would still use its backend."""
    return _plan(_backward, signature, device)


def _keep(plans: dict, signature: tuple, plan: Plan) -> None:
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[signature] = plan


def _keep_launch(plans: dict, signature: tuple, choice: dispatch.Choice, device: torch.device,
                 launcher: str, sizes: tuple, args: tuple) -> None:
    """Keep the launch that the backend's ``launcher`` makes from a call's arguments, where a
    compiled kernel ran the call (``choice``) and it gives one."""
    if choice.name in (dispatch.REFERENCE, dispatch.SDPA_FLASH, dispatch.SDPA_EFFICIENT):
        return
    backend = dispatch._kernel_backend(device)  # the one the call was dispatched to
    make = getattr(backend, launcher, None)
    launch = None if make is None else make(*args)
    if launch is not None:
        _keep(plans, signature, Plan(backend, launch, choice, sizes))


def keep_forward(signature: tuple, choice: dispatch.Choice, sizes: tuple, q, k, v, out, lse,
                 scale, causal, bottom_right, window_left, window_right, softcap) -> None:
    """After a forward of ``signature`` ran by ``choice`` into out/lse (as the op allocates
    them): keep its launch if a compiled kernel ran it and later calls need nothing else."""
    _keep_launch(_forward, signature, choice, q.device, "forward_launcher", sizes,
                 (q, k, v, out, lse, scale, causal, bottom_right, window_left, window_right,
                  softcap))


def keep_backward(signature: tuple, choice: dispatch.Choice, grad_out, q, k, v, out, lse,
                  scale, causal, bottom_right, window_left, window_right, softcap,
                  dq, dk, dv) -> None:
    """After a backward of ``signature`` ran by ``choice`` into dq/dk/dv (as the op allocates
    them): keep its launch if a compiled kernel ran it and later calls need nothing else."""
    deterministic = signature[-1]
    _keep_launch(_backward, signature, choice, q.device, "backward_launcher", (),
                 (grad_out, q, k, v, out, lse, scale, causal, bottom_right, window_left,
                  window_right, softcap, dq, dk, dv, deterministic))


def clear() -> None:
    """Forget every plan (tests; a rebuilt library)."""
    _forward.clear()
    _backward.clear()
