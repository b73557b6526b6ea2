"""The implementations compared, each behind one small interface.

Every implementation takes q, k, v as [B, H, S, D] (SDPA's layout) and returns out of the same
shape; ``setup`` runs once per shape outside the timed region (block masks, compilation reset).
"""

from __future__ import annotations

import contextlib
import importlib
import math

import torch

from . import ours as ours_probe
from .tables import OURS


class Impl:
    id: str = ""

    def setup(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
        self.causal = causal
        self.scale = 1.0 / math.sqrt(q.size(-1))

    def context(self):
        return contextlib.nullcontext()

    def label(self, direction: str) -> str:
        return self.id

    def note(self, direction: str) -> str:
        return ""

    def forward(self, q, k, v) -> torch.Tensor:
        raise NotImplementedError


class Ours(Impl):
    """torch.ops.fa.attention_forward and its registered autograd (the backward op)."""

    id = OURS

    def setup(self, q, k, v, causal):
        super().setup(q, k, v, causal)
        ours_probe.ensure_ops_registered()
        self.choices = {d: ours_probe.kernel_choice(d, q, k, v, causal) for d in ("fwd", "bwd")}

    def label(self, direction):
        return f"{OURS}({self.choices[direction][0]})"

    def note(self, direction) -> str:
        """Why the dispatcher did not pick one of our kernels, where it did not."""
        name, reason = self.choices[direction]
        if ours_probe.is_compiled_kernel(name):
            return ""
        return f"dispatcher chose {name}: {reason}"

    def forward(self, q, k, v):
        out, _lse = torch.ops.fa.attention_forward(q, k, v, None, self.scale, self.causal, False,
                                                   -1, -1, 0.0, 0.0, None)
        return out


class Sdpa(Impl):
    """F.scaled_dot_product_attention with one backend forced; a backend that cannot take the
    shape raises instead of silently running another."""

    def __init__(self, impl_id: str, backend: str):
        self.id = impl_id
        self.backend = backend

    def context(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(getattr(SDPBackend, self.backend))

    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                                                scale=self.scale)


class Flex(Impl):
    """flex_attention under torch.compile; causal through a block mask built once per shape."""

    id = "flex"

    def __init__(self, dynamic: bool = False):
        self.dynamic = dynamic
        self._compiled = None

    def setup(self, q, k, v, causal):
        super().setup(q, k, v, causal)
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if not self.dynamic or self._compiled is None:
            # A static compile per shape: reset so the recompile limit never sends a shape to
            # the eager (score-materialising) path.
            torch._dynamo.reset()
            self._compiled = torch.compile(flex_attention, fullgraph=True,
                                           dynamic=self.dynamic)
        self.block_mask = None
        if causal:
            seqlen = q.size(-2)
            self.block_mask = create_block_mask(_causal_mask, None, None, seqlen, seqlen,
                                                device=q.device)

    def forward(self, q, k, v):
        return self._compiled(q, k, v, block_mask=self.block_mask, scale=self.scale)


def _causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
}


def configure_compiler() -> None:
    """Settings the flex timing needs: backward on a retained graph (AOTAutograd's donated
    buffers forbid retain_graph) and room for one compile per shape."""
    functorch_config = importlib.import_module("torch._functorch.config")
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    dynamo_config = importlib.import_module("torch._dynamo.config")
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))


def make_impl(impl_id: str, flex_dynamic: bool = False) -> Impl:
    if impl_id == OURS:
        return Ours()
    if impl_id in SDPA_BACKENDS:
        return Sdpa(impl_id, SDPA_BACKENDS[impl_id])
    if impl_id == "flex":
        return Flex(dynamic=flex_dynamic)
    raise ValueError(f"unknown implementation {impl_id!r}")
