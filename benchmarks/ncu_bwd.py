"""Backward calls for Nsight Compute: ours (a chosen kernel family) and, with --peers, SDPA's
flash (FlashAttention-2) and cuDNN backwards on the same inputs, so one profile holds both sides:

    ncu --set full --import-source yes -k regex:'bwd' -c 8 python3 benchmarks/ncu_bwd.py --family sm80 --peers flash

Kept as a script so that a profile of the main kernels is one command on the device.  bf16,
16 heads, 16k tokens (batch = 16384 / seqlen); each implementation runs once after one warm-up
call under an NVTX range named after it (ncu --nvtx-include selects one side).
"""

import torch
from torch.nn.attention import sdpa_kernel

from ncu_inputs import PEERS, make_inputs, parse_args, peers


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    inp = make_inputs(args, 4)
    backend, B, H, S, D, scale = inp.backend, inp.B, inp.H, inp.S, inp.D, inp.scale
    q, k, v, do = inp.tensors
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, device="cuda")
    backend.forward(q, k, v, scale, args.causal, False, -1, -1, 0.0, out, lse)
    family = args.family or backend.backward_family(q, v)
    grads = [torch.empty_like(t) for t in (q, k, v)]
    for _ in range(2):  # warm-up, then the profiled call
        with torch.cuda.nvtx.range(f"ours_{family}"):
            backend.backward(do, q, k, v, out, lse, scale, args.causal, False, -1, -1, 0.0, *grads, False,
                             family=family)
    for name in peers(args):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel(PEERS[name]):
            o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=args.causal, scale=scale)
        for _ in range(2):
            with torch.cuda.nvtx.range(f"sdpa_{name}"):
                torch.autograd.grad(o, (qq, kk, vv), do, retain_graph=True)
    torch.cuda.synchronize()
    print(f"backward: ours ({family}) and SDPA {args.peers or '(none)'} on {torch.cuda.get_device_name()}: "
          f"B={B} H={H} S={S} D={D} causal={args.causal}")


if __name__ == "__main__":
    main()
