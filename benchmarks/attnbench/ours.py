"""What the harness needs from fa_inductor: the op, which kernel the dispatcher picks, and
the SM90 forward's ablation variants.

Ablation contract: ``fa_inductor.kernels.ablation_variants(device)`` returns an ordered mapping
{name: fn(q, k, v, scale, causal) -> out} for q, k, v [B, H, S, D], the full kernel first, then
one scheduling idea off each ("no ping-pong", "no intra-warpgroup overlap", "no warp
specialisation", ...); an empty mapping where the device or library has none.
"""

from __future__ import annotations

import importlib

import torch


def ensure_ops_registered() -> None:
    importlib.import_module("fa_inductor.ops")
    try:
        torch.ops.fa.attention_forward
    except (AttributeError, RuntimeError):
        importlib.import_module("fa_inductor.ops.library")


def kernel_choice(direction: str, q, k, v, causal: bool) -> tuple[str, str]:
    """(name, reason): the implementation ``fa_inductor.ops.dispatch`` (the one place that
    decides) picks for this call: a compiled kernel (sm80, sm90, ...), sdpa_flash,
    sdpa_efficient or reference, and why faster ones were passed over. ("?", why) when the
    dispatcher cannot be asked."""
    try:
        dispatch = importlib.import_module("fa_inductor.ops.dispatch")
    except Exception as e:  # noqa: BLE001 - reported in the label, not fatal here
        return "?", f"fa_inductor.ops.dispatch failed to import: {type(e).__name__}: {e}"
    select = getattr(dispatch, "select_forward" if direction == "fwd" else "select_backward",
                     None)
    if select is None:
        return "?", "fa_inductor.ops.dispatch has no select_forward/select_backward"
    try:
        choice = select(q, k, v, None, causal, False, -1, -1, 0.0, 0.0)
    except Exception as e:  # noqa: BLE001
        return "?", f"dispatch.select_{direction}ward failed: {type(e).__name__}: {e}"
    return str(getattr(choice, "name", choice)), str(getattr(choice, "reason", ""))


def is_compiled_kernel(name: str) -> bool:
    """Whether a dispatcher choice is one of our kernels (not SDPA, the reference, or unknown)."""
    return not (name.startswith(("sdpa", "?")) or name == "reference")


def ablation_variants(device) -> tuple[dict, str]:
    """({name: fn}, note): the SM90 forward's variants with one idea switched off each."""
    try:
        kernels = importlib.import_module("fa_inductor.kernels")
    except Exception as e:  # noqa: BLE001
        return {}, f"fa_inductor.kernels failed to import ({type(e).__name__}: {e})"
    provider = getattr(kernels, "ablation_variants", None)
    if provider is None:
        return {}, ("no SM90 kernel variants are available yet "
                    "(fa_inductor.kernels.ablation_variants is not defined): nothing timed")
    try:
        variants = dict(provider(device))
    except Exception as e:  # noqa: BLE001
        return {}, f"fa_inductor.kernels.ablation_variants failed: {type(e).__name__}: {e}"
    if not variants:
        return {}, ("no SM90 kernel variants are available on this device (they need a Hopper "
                    "GPU and a library built for sm_90a): nothing timed")
    return variants, f"{len(variants)} variants from fa_inductor.kernels.ablation_variants"
