"""Forward calls for Nsight Compute: ours (a chosen kernel family) and, with --peers, SDPA's flash
(FlashAttention-2) and cuDNN forwards on the same inputs, so one profile holds both sides:

    ncu --set full --import-source yes -k regex:'fwd|attn|flash' -c 6 python3 benchmarks/ncu_fwd.py --peers cudnn

The forward counterpart of ncu_bwd.py (same shapes: bf16, 16 heads, 16k tokens, batch = 16384 /
seqlen); each implementation runs twice (a warm-up, then the call to profile) under an NVTX range
named after it.
"""

import torch
from torch.nn.attention import sdpa_kernel

from ncu_inputs import PEERS, make_inputs, parse_args, peers


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    inp = make_inputs(args, 3)
    backend, B, H, S, D, scale = inp.backend, inp.B, inp.H, inp.S, inp.D, inp.scale
    q, k, v = inp.tensors
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    family = args.family or backend.forward_name
    for _ in range(2):  # warm-up, then the profiled call
        with torch.cuda.nvtx.range(f"ours_{family}"):
            backend.forward(q, k, v, scale, args.causal, False, -1, -1, 0.0, out, lse, family=family)
    for name in peers(args):
        for _ in range(2):
            with torch.cuda.nvtx.range(f"sdpa_{name}"), sdpa_kernel(PEERS[name]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=args.causal, scale=scale)
    torch.cuda.synchronize()
    print(f"forward: ours ({family}) and SDPA {args.peers or '(none)'} on {torch.cuda.get_device_name()}: "
          f"B={B} H={H} S={S} D={D} causal={args.causal}")


if __name__ == "__main__":
    main()
