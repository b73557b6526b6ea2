"""KV-cache inference: prefill, a multi-token chunk, then single-token decode steps.

Once the cache holds earlier tokens, Sq < Sk and the causal mask is aligned to the bottom
right (query i sees keys up to i + Sk - Sq).  Each step is compared with the same model run
eagerly with its own cache; each compiled graph must rewrite every layer's attention, and a
step with 1 < Sq < Sk must say bottom-right (for Sq == 1 causal allows every key, so "no mask"
is an equally right answer).
"""
from __future__ import annotations

import pytest
import torch

import zoo

PREFILL, CHUNK, DECODE_STEPS = 8, 3, 3


class _CachedDecoder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, cache):
        return self.inner(input_ids=input_ids, past_key_values=cache, use_cache=True).last_hidden_state


def _llama():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=zoo.VOCAB, num_hidden_layers=zoo.LAYERS, hidden_size=zoo.HIDDEN,
                                      intermediate_size=128, num_attention_heads=zoo.HEADS,
                                      num_key_value_heads=zoo.KV_HEADS, attention_dropout=0.0)
    config._attn_implementation = "eager"
    return config, _CachedDecoder(transformers.LlamaModel(config)).eval()


def test_llama_prefill_then_decode_matches_eager():
    from torch._dynamo.utils import counters
    from transformers import DynamicCache

    from fa_inductor.backend import collect_reports

    config, model = _llama()
    g = torch.Generator().manual_seed(3)
    steps = [PREFILL, CHUNK] + [1] * DECODE_STEPS
    tokens = [torch.randint(3, zoo.VOCAB, (1, n), generator=g) for n in steps]

    torch._dynamo.reset()
    breaks_before = sum(counters["graph_break"].values())
    compiled = torch.compile(model, backend="flash", options={"flash.compiler": "aot_eager"}, fullgraph=True)
    eager_cache, compiled_cache = DynamicCache(config=config), DynamicCache(config=config)
    seen = 0
    with torch.no_grad():
        for step, ids in enumerate(tokens):
            reports: list = []
            with collect_reports(reports.append):
                got = compiled(ids, compiled_cache)
            want = model(ids, eager_cache)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"step {step}: {m}")

            sq, sk = ids.shape[1], seen + ids.shape[1]
            seen = sk
            sites = [s for r in reports for s in r.sites]
            if not sites:
                continue        # this step reused a graph compiled for an earlier one
            unmatched = [f"{s.source.strip()[:100]}: {s.reason}" for s in sites if not s.rewritten]
            assert not unmatched, f"step {step} (Sq={sq}, Sk={sk}): " + "; ".join(unmatched)
            assert len(sites) == config.num_hidden_layers
            for s in sites:
                mask, align = s.variant.mask, s.variant.alignment
                if sq == sk:
                    assert (mask, align) == ("causal", "top-left") or (mask, align) == ("causal", "bottom-right"), \
                        f"step {step}: {mask}/{align}"
                elif sq > 1:
                    assert (mask, align) == ("causal", "bottom-right"), f"step {step} (Sq={sq}, Sk={sk}): {mask}/{align}"
                else:
                    assert (mask, align) in (("causal", "bottom-right"), ("none", None)), \
                        f"step {step} (Sq=1, Sk={sk}): {mask}/{align}"
    assert sum(counters["graph_break"].values()) == breaks_before
    assert compiled_cache.get_seq_length() == sum(steps)


@pytest.mark.parametrize("n_new", [1, CHUNK])
def test_kv_cache_alignment_is_not_top_left(n_new):
    """The numbers tell top-left from bottom-right: with a top-left causal mask the new tokens
    would not see the most recent cached keys, and the output would differ from eager."""
    from transformers import DynamicCache

    config, model = _llama()
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(3, zoo.VOCAB, (1, PREFILL), generator=g)
    new = torch.randint(3, zoo.VOCAB, (1, n_new), generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="flash", options={"flash.compiler": "aot_eager"}, fullgraph=True)
    with torch.no_grad():
        eager_cache, compiled_cache = DynamicCache(config=config), DynamicCache(config=config)
        model(prefix, eager_cache)
        model(prefix, compiled_cache)   # the prefix eagerly: only the Sq < Sk call is compiled
        torch.testing.assert_close(compiled(new, compiled_cache), model(new, eager_cache), rtol=1e-4, atol=1e-5)
