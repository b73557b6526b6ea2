"""One SM90 backward call (head dim 128, seqlen 2048, 16k tokens, bf16), for Nsight Compute:

    ncu --set full --import-source yes -k regex:fa_bwd_sm90_kernel -c 1 python3 benchmarks/ncu_bwd_sm90.py

Kept as a script so that a profile of the main kernel is one command on the device.
"""

import argparse

import torch

from fa_inductor import kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    backend = kernels.get_backend(torch.device("cuda"))
    if backend is None:
        raise SystemExit(kernels.unavailable_reason("cuda"))
    S, D, H = args.seqlen, args.head_dim, 16
    B = max(1, 16384 // S)
    q, k, v, do = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(4))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    scale = D ** -0.5
    backend.forward(q, k, v, scale, args.causal, False, -1, -1, 0.0, out, lse)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    backend.backward(do, q, k, v, out, lse, scale, args.causal, False, -1, -1, 0.0, *grads, False)
    torch.cuda.synchronize()
    print(f"backward family {backend.backward_family(q, v)}: B={B} H={H} S={S} D={D} causal={args.causal}")


if __name__ == "__main__":
    main()
