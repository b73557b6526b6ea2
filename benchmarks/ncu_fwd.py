"""Forward calls for Nsight Compute: ours (a chosen kernel family) and, with --peers, SDPA's flash
(FlashAttention-2) and cuDNN forwards on the same inputs, so one profile holds both sides:

    ncu --set full --import-source yes -k regex:'fwd|attn|flash' -c 6 python3 benchmarks/ncu_fwd.py --peers cudnn

The forward counterpart of ncu_bwd.py (same shapes: bf16, 16 heads, 16k tokens, batch = 16384 /
seqlen); each implementation runs twice (a warm-up, then the call to profile) under an NVTX range
named after it.
"""

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fa_inductor import kernels

PEERS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--family", default=None, help="sm80 or sm90 (default: what the dispatcher picks)")
    ap.add_argument("--peers", default="", help="comma-separated SDPA backends to run too: flash, cudnn")
    args = ap.parse_args()
    backend = kernels.get_backend(torch.device("cuda"))
    if backend is None:
        raise SystemExit(kernels.unavailable_reason("cuda"))
    S, D, H = args.seqlen, args.head_dim, 16
    B = max(1, 16384 // S)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    scale = D ** -0.5
    family = args.family or backend.forward_name
    for _ in range(2):  # warm-up, then the profiled call
        with torch.cuda.nvtx.range(f"ours_{family}"):
            backend.forward(q, k, v, scale, args.causal, False, -1, -1, 0.0, out, lse, family=family)
    for name in filter(None, args.peers.split(",")):
        for _ in range(2):
            with torch.cuda.nvtx.range(f"sdpa_{name}"), sdpa_kernel(PEERS[name]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, scale=scale)
    torch.cuda.synchronize()
    print(f"forward: ours ({family}) and SDPA {args.peers or '(none)'} on {torch.cuda.get_device_name()}: "
          f"B={B} H={H} S={S} D={D} causal={args.causal}")


if __name__ == "__main__":
    main()
