"""One training step of an HF Llama-style model, torch.compile(backend="flash") against the default
torch.compile (Inductor, whose attention is SDPA's own choice), side by side on one GPU.

The model is ``transformers.LlamaForCausalLM`` built from a config (no download, random weights,
bf16, the library's default attention implementation, i.e. SDPA), unmodified.  A step is forward
with the language-model loss, backward and an AdamW step; both backends start from the same
weights and inputs.  Per seqlen and backend: warm-up steps (compilation included, timed apart),
then the median of --steps timed steps (CUDA events).  The flash run also reports which attention
kernels ran (``dispatch.record_choices``).  Prints a table last and writes JSON to --out.

    python benchmarks/train_step.py --seqlens 8192,16384 --out train_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import Counter

import torch


def build_model(args):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(int(s) for s in args.seqlens.split(",")), attention_dropout=0.0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16)


def run(base, backend, ids, args):
    """(warm-up seconds, median step ms, attention kernels seen, why our kernels were passed over,
    final loss) of one backend."""
    from fa_inductor.ops import dispatch

    torch._dynamo.reset()
    model = copy.deepcopy(base).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    compiled = torch.compile(model, backend=backend) if backend != "inductor" else torch.compile(model)

    def step():
        loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    with dispatch.record_choices() as ran:
        for _ in range(args.warmup):
            loss = step()
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    kernels = Counter(f"{direction}:{choice.name}" for direction, choice in ran)
    # A fallback's reason (a mask kept as a bias, say) is what explains a slow flash step.
    passed_over = sorted({f"{direction}:{choice.name}: {choice.reason}" for direction, choice in ran
                          if choice.name in (dispatch.SDPA_FLASH, dispatch.SDPA_EFFICIENT, dispatch.REFERENCE)})
    times = []
    for _ in range(args.steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    del compiled, model, opt
    torch.cuda.empty_cache()
    return warmup_s, statistics.median(times), dict(kernels), passed_over, float(loss.detach())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqlens", default="8192,16384")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backends", default="inductor,flash")
    ap.add_argument("--out", default="train_step.json")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    base = build_model(args)
    print(f"training step of LlamaForCausalLM ({args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
          f"{args.kv_heads} kv heads, bf16, AdamW) on {dev}: torch.compile default vs backend='flash'", flush=True)
    rows = []
    for seqlen in (int(s) for s in args.seqlens.split(",")):
        ids = torch.randint(0, args.vocab, (args.batch, seqlen), device="cuda")
        for backend in args.backends.split(","):
            warmup_s, ms, kernels, passed_over, loss = run(base, backend, ids, args)
            row = dict(device=dev, seqlen=seqlen, batch=args.batch, backend=backend, step_ms=ms,
                       tokens_per_s=args.batch * seqlen / ms * 1e3, warmup_s=warmup_s, kernels=kernels,
                       passed_over=passed_over,
                       loss=loss, config=vars(args))
            rows.append(row)
            print(f"  seqlen {seqlen} {backend:9s} {ms:8.2f} ms/step (warm-up {warmup_s:.0f} s) {kernels}", flush=True)
            for why in passed_over:
                print(f"    fallback {why}", flush=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    print(f"device: {dev}")
    print("seqlen  backend    ms/step  tokens/s  default/this")
    for r in rows:
        ref = next(x for x in rows if x["seqlen"] == r["seqlen"] and x["backend"] == "inductor")
        print(f"train {r['seqlen']:6d} {r['backend']:9s} {r['step_ms']:8.2f} {r['tokens_per_s']:9.0f} "
              f"{ref['step_ms'] / r['step_ms']:6.2f}")


if __name__ == "__main__":
    main()
