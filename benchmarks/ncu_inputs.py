"""What ncu_fwd.py and ncu_bwd.py share: their command line, our kernel backend and the inputs
(bf16, 16 heads unless --heads says otherwise, 16k tokens: batch = 16384 / seqlen, q/k/v as
[B, S, H, D] projections viewed as [B, H, S, D]), and the SDPA backends a profile can hold beside
ours."""

import argparse
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend

from fa_inductor import kernels

PEERS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
HEADS = 16
TOKENS = 16384


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=HEADS,
                    help="query and key heads (the benchmark grid's are 2048 / head dim)")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--family", default=None, help="sm80 or sm90 (default: what the dispatcher picks)")
    ap.add_argument("--peers", default="", help="comma-separated SDPA backends to run too: flash, cudnn")
    return ap.parse_args()


@dataclass
class Inputs:
    backend: kernels.KernelBackend
    B: int
    H: int
    S: int
    D: int
    tensors: tuple  # `count` [B, H, S, D] views of [B, S, H, D] randn tensors
    scale: float


def make_inputs(args: argparse.Namespace, count: int) -> Inputs:
    backend = kernels.get_backend(torch.device("cuda"))
    if backend is None:
        raise SystemExit(kernels.unavailable_reason("cuda"))
    S, D, H = args.seqlen, args.head_dim, args.heads
    B = max(1, TOKENS // S)
    tensors = tuple(torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                    for _ in range(count))
    return Inputs(backend, B, H, S, D, tensors, D ** -0.5)


def peers(args: argparse.Namespace) -> list[str]:
    return [name for name in args.peers.split(",") if name]
