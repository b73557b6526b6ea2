"""Tiny, randomly initialised models whose attention the backend must find, unmodified.

Every entry builds a model from a ``transformers`` config object (no download) or from a
hand-written module, with ``attn_implementation="eager"`` so the model's own attention code is
what Dynamo traces.  A builder returns a :class:`ZooCase`; ``expected_sites`` counts the
attention softmaxes from the model's *structure* (attention modules that run once per forward),
never from what our matcher reports, so an unmatched or lost site shows up as a mismatch.

Dropout is switched off (and layer-drop too) unless a builder is asked for attention dropout,
so eager and compiled runs are comparable in training mode.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

SEQ = 16          # long enough that a sliding window of 4 and a causal mask both bite
BATCH = 2
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
LAYERS = 2
VOCAB = 97        # odd on purpose: no accidental alignment with the hidden size


@dataclasses.dataclass
class ZooCase:
    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    expected_sites: int
    # What the masks are made of, as the issue classifies them: "causal", "window", "padding",
    # "alibi", "position-bias", "softcap", "none", ... (documentation for the census, not asserted)
    mask_kinds: str


class _Adapter(nn.Module):
    """Calls a ``transformers`` model with positional tensors and returns plain tensors.

    ``torch.compile`` and ``explain`` then see a ``forward(*tensors) -> tensor(s)`` whatever the
    family's keyword names and output dataclass are; the wrapped model runs unchanged.
    """

    def __init__(self, inner: nn.Module, names: tuple[str, ...], outputs: tuple[str, ...], **fixed):
        super().__init__()
        self.inner = inner
        self.names = names
        self.outputs = outputs
        self.fixed = fixed

    def forward(self, *tensors):
        out = self.inner(**dict(zip(self.names, tensors)), **self.fixed)
        picked = tuple(getattr(out, name) for name in self.outputs)
        return picked[0] if len(picked) == 1 else picked


def _count(model: nn.Module, *class_names: str) -> int:
    return sum(type(m).__name__ in class_names for m in model.modules())


def _no_dropout(config, attn_dropout: float = 0.0, attn_dropout_attr: str | None = None):
    """Zero every dropout/layer-drop probability of a config (and its sub-configs)."""
    for key, value in list(vars(config).items()):
        low = key.lower()
        if isinstance(value, float) and ("dropout" in low or "pdrop" in low or "layerdrop" in low
                                         or low == "dropout_rate"):
            setattr(config, key, 0.0)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            _no_dropout(value)
    if attn_dropout_attr is not None:
        setattr(config, attn_dropout_attr, attn_dropout)
    return config


def _eager(config):
    config._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = "eager"
    return config


def _ids(seed: int = 0, batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def _padding_mask(batch: int = BATCH, seq: int = SEQ, left: bool = False) -> torch.Tensor:
    """Padding that differs per row, so the mask depends on data and not on positions."""
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(batch):
        if left:
            mask[b, :3 * b] = 0         # row 1 starts with 3 padded keys
        else:
            mask[b, seq - 3 * b:] = 0   # row 0 unpadded, row 1 has 3 padded keys
    return mask


def _seeded(fn):
    """Builders draw their weights from a fixed seed, so a case is the same model every time."""

    def wrapped(**kw):
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return fn(**kw)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


# --------------------------------------------------------------------------- decoders (HF)

def _decoder(config_cls, model_cls_name: str, attn_cls: str, mask_kinds: str, attn_dropout_attr: str,
             attn_dropout: float, **config_kw) -> tuple[nn.Module, int]:
    import transformers

    config = config_cls(vocab_size=VOCAB, num_hidden_layers=LAYERS, **config_kw)
    _eager(_no_dropout(config, attn_dropout, attn_dropout_attr))
    inner = getattr(transformers, model_cls_name)(config)
    model = _Adapter(inner, ("input_ids",), ("last_hidden_state",), use_cache=False)
    return model, _count(inner, attn_cls)


@_seeded
def gpt2(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.GPT2Config, "GPT2Model", "GPT2Attention", "causal",
                        "attn_pdrop", attn_dropout, n_embd=HIDDEN, n_head=HEADS, n_positions=64,
                        bos_token_id=1, eos_token_id=2)
    return ZooCase("gpt2", model, (_ids(),), n, "causal")


@_seeded
def llama(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.LlamaConfig, "LlamaModel", "LlamaAttention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)
    return ZooCase("llama", model, (_ids(),), n, "causal, GQA 2")


@_seeded
def llama_padded(attn_dropout: float = 0.0) -> ZooCase:
    """Llama with a padding mask: causal (from positions) combined with a data-dependent bias."""
    import transformers

    config = _eager(_no_dropout(transformers.LlamaConfig(
        vocab_size=VOCAB, num_hidden_layers=LAYERS, hidden_size=HIDDEN, intermediate_size=128,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS), attn_dropout, "attention_dropout"))
    inner = transformers.LlamaModel(config)
    model = _Adapter(inner, ("input_ids", "attention_mask"), ("last_hidden_state",), use_cache=False)
    return ZooCase("llama_padded", model, (_ids(), _padding_mask()), _count(inner, "LlamaAttention"),
                   "causal + padding, GQA 2")


@_seeded
def llama_left_padded(attn_dropout: float = 0.0) -> ZooCase:
    """Left padding, as batched generation pads: with causal, the first query rows of row 1 see
    no real key at all.  HF fills masked scores with finfo.min (not -inf), so eager gives those
    rows a uniform average over the padded keys; the rewrite must reproduce that, not zeros."""
    import transformers

    config = _eager(_no_dropout(transformers.LlamaConfig(
        vocab_size=VOCAB, num_hidden_layers=LAYERS, hidden_size=HIDDEN, intermediate_size=128,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS), attn_dropout, "attention_dropout"))
    inner = transformers.LlamaModel(config)
    model = _Adapter(inner, ("input_ids", "attention_mask"), ("last_hidden_state",), use_cache=False)
    return ZooCase("llama_left_padded", model, (_ids(), _padding_mask(left=True)),
                   _count(inner, "LlamaAttention"), "causal + left padding (fully masked rows), GQA 2")


@_seeded
def mistral(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.MistralConfig, "MistralModel", "MistralAttention", "window",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, sliding_window=4)
    return ZooCase("mistral", model, (_ids(),), n, "causal + sliding window 4, GQA 2")


@_seeded
def qwen2(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.Qwen2Config, "Qwen2Model", "Qwen2Attention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)
    return ZooCase("qwen2", model, (_ids(),), n, "causal, GQA 2")


@_seeded
def gemma2(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    # Layer 0 slides (window 4), layer 1 is global; both cap their logits at 50.
    model, n = _decoder(transformers.Gemma2Config, "Gemma2Model", "Gemma2Attention", "window",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
                        sliding_window=4, attn_logit_softcapping=50.0, query_pre_attn_scalar=16)
    return ZooCase("gemma2", model, (_ids(),), n, "causal + sliding window 4 / causal, softcap 50, GQA 2")


@_seeded
def phi3(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.Phi3Config, "Phi3Model", "Phi3Attention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)
    return ZooCase("phi3", model, (_ids(),), n, "causal, GQA 2")


@_seeded
def gpt_neox(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.GPTNeoXConfig, "GPTNeoXModel", "GPTNeoXAttention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, intermediate_size=128,
                        num_attention_heads=HEADS)
    return ZooCase("gpt_neox", model, (_ids(),), n, "causal")


@_seeded
def falcon(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    # Default Falcon-7B layout: multi-query (one KV head), rotary, no ALiBi.
    model, n = _decoder(transformers.FalconConfig, "FalconModel", "FalconAttention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, num_attention_heads=HEADS)
    return ZooCase("falcon", model, (_ids(),), n, "causal, multi-query")


@_seeded
def bloom(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.BloomConfig, "BloomModel", "BloomAttention", "alibi",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, n_head=HEADS)
    return ZooCase("bloom", model, (_ids(),), n, "causal + ALiBi bias")


@_seeded
def opt(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _decoder(transformers.OPTConfig, "OPTModel", "OPTAttention", "causal",
                        "attention_dropout", attn_dropout, hidden_size=HIDDEN, ffn_dim=128,
                        num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN, max_position_embeddings=64)
    return ZooCase("opt", model, (_ids(),), n, "causal")


# --------------------------------------------------------------------------- encoders (HF)

def _encoder(config_cls, model_cls_name: str, attn_cls: str, attn_dropout_attr: str, attn_dropout: float,
             **config_kw) -> tuple[nn.Module, int]:
    import transformers

    config = config_cls(vocab_size=VOCAB, **config_kw)
    _eager(_no_dropout(config, attn_dropout, attn_dropout_attr))
    inner = getattr(transformers, model_cls_name)(config)
    if hasattr(inner, "pooler"):
        inner.pooler = None    # the pooler has no attention and its output is not compared
    model = _Adapter(inner, ("input_ids", "attention_mask"), ("last_hidden_state",))
    return model, _count(inner, attn_cls)


@_seeded
def bert(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _encoder(transformers.BertConfig, "BertModel", "BertSelfAttention",
                        "attention_probs_dropout_prob", attn_dropout, hidden_size=HIDDEN,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=128,
                        max_position_embeddings=64)
    return ZooCase("bert", model, (_ids(), _padding_mask()), n, "padding")


@_seeded
def roberta(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _encoder(transformers.RobertaConfig, "RobertaModel", "RobertaSelfAttention",
                        "attention_probs_dropout_prob", attn_dropout, hidden_size=HIDDEN,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=128,
                        max_position_embeddings=64, pad_token_id=1)
    return ZooCase("roberta", model, (_ids(), _padding_mask()), n, "padding")


@_seeded
def distilbert(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    model, n = _encoder(transformers.DistilBertConfig, "DistilBertModel", "DistilBertSelfAttention",
                        "attention_dropout", attn_dropout, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                        hidden_dim=128, max_position_embeddings=64)
    return ZooCase("distilbert", model, (_ids(), _padding_mask()), n, "padding")


@_seeded
def vit(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    config = transformers.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                    intermediate_size=128, image_size=16, patch_size=4, num_channels=3)
    _eager(_no_dropout(config, attn_dropout, "attention_probs_dropout_prob"))
    inner = transformers.ViTModel(config, add_pooling_layer=False)
    model = _Adapter(inner, ("pixel_values",), ("last_hidden_state",))
    pixels = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return ZooCase("vit", model, (pixels,), _count(inner, "ViTAttention"), "none (17 tokens: 16 patches + CLS)")


@_seeded
def clip(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    text = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, max_position_embeddings=SEQ, projection_dim=32,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, image_size=16, patch_size=4, projection_dim=32)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    for sub in (config, config.text_config, config.vision_config):
        _no_dropout(sub, attn_dropout, "attention_dropout")
    _eager(config)
    inner = transformers.CLIPModel(config)
    model = _Adapter(inner, ("input_ids", "pixel_values", "attention_mask"), ("text_embeds", "image_embeds"))
    pixels = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    return ZooCase("clip", model, (_ids(), pixels, _padding_mask()), _count(inner, "CLIPAttention"),
                   "text: causal + padding; vision: none")


# --------------------------------------------------------------------------- encoder-decoders (HF)

@_seeded
def whisper(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    config = transformers.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=8, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, d_model=HIDDEN,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=SEQ, max_target_positions=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    _eager(_no_dropout(config, attn_dropout, "attention_dropout"))
    inner = transformers.WhisperModel(config)
    model = _Adapter(inner, ("input_features", "decoder_input_ids"), ("last_hidden_state",), use_cache=False)
    # The encoder's two convolutions (the second with stride 2) turn 2*SEQ frames into SEQ positions.
    feats = torch.randn(BATCH, 8, 2 * SEQ, generator=torch.Generator().manual_seed(7))
    dec = _ids(8, seq=SEQ - 5)        # Sq != Sk in cross-attention
    return ZooCase("whisper", model, (feats, dec), _count(inner, "WhisperAttention"),
                   "encoder: none; decoder self: causal; cross: none")


@_seeded
def t5(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    config = transformers.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_kv=16, d_ff=128, num_layers=LAYERS,
                                   num_decoder_layers=LAYERS, num_heads=HEADS,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   decoder_start_token_id=0, pad_token_id=0)
    _eager(_no_dropout(config, attn_dropout, "dropout_rate"))
    inner = transformers.T5Model(config)
    model = _Adapter(inner, ("input_ids", "attention_mask", "decoder_input_ids"), ("last_hidden_state",),
                     use_cache=False)
    return ZooCase("t5", model, (_ids(), _padding_mask(), _ids(9, seq=SEQ - 5)), _count(inner, "T5Attention"),
                   "learned relative position bias (+ padding in encoder/cross, causal in decoder self)")


@_seeded
def bart(attn_dropout: float = 0.0) -> ZooCase:
    import transformers

    config = transformers.BartConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS,
                                     decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                                     decoder_attention_heads=HEADS, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                     max_position_embeddings=64)
    _eager(_no_dropout(config, attn_dropout, "attention_dropout"))
    inner = transformers.BartModel(config)
    model = _Adapter(inner, ("input_ids", "attention_mask", "decoder_input_ids"), ("last_hidden_state",),
                     use_cache=False)
    return ZooCase("bart", model, (_ids(), _padding_mask(), _ids(10, seq=SEQ - 5)), _count(inner, "BartAttention"),
                   "encoder: padding; decoder self: causal; cross: padding")


# --------------------------------------------------------------------------- hand-written

class NanoGPTAttention(nn.Module):
    """The minGPT/nanoGPT spelling: a registered lower-triangular buffer and masked_fill(-inf)."""

    def __init__(self, dim: int, heads: int, block: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(attn_dropout)
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.drop(torch.softmax(att, dim=-1))
        return self.proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class NanoGPTBlock(nn.Module):
    def __init__(self, dim: int = HIDDEN, heads: int = HEADS, block: int = 32, attn_dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = NanoGPTAttention(dim, heads, block, attn_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _hidden(seed: int, seq: int = SEQ) -> torch.Tensor:
    return torch.randn(BATCH, seq, HIDDEN, generator=torch.Generator().manual_seed(seed))


@_seeded
def nanogpt(attn_dropout: float = 0.0) -> ZooCase:
    model = nn.Sequential(*(NanoGPTBlock(attn_dropout=attn_dropout) for _ in range(LAYERS)))
    return ZooCase("nanogpt", model, (_hidden(11),), _count(model, "NanoGPTAttention"),
                   "causal (tril buffer, block 32 sliced to T=16)")


class _MHA(nn.Module):
    """``nn.MultiheadAttention`` as users call it: self-attention, optionally masked."""

    def __init__(self, attn_dropout: float, masked: bool, need_weights: bool):
        super().__init__()
        self.mha = nn.MultiheadAttention(HIDDEN, HEADS, dropout=attn_dropout, batch_first=True)
        self.masked = masked
        self.need_weights = need_weights

    def forward(self, x, key_padding_mask=None):
        T = x.shape[1]
        attn_mask = None
        if self.masked:
            # True = not allowed to attend (nn.MultiheadAttention's convention).
            attn_mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        out, _ = self.mha(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                          need_weights=self.need_weights)
        return out


def _key_padding(seq: int = SEQ) -> torch.Tensor:
    return _padding_mask(seq=seq) == 0     # True = padded key


@_seeded
def mha(attn_dropout: float = 0.0) -> ZooCase:
    model = _MHA(attn_dropout, masked=False, need_weights=True)
    return ZooCase("mha", model, (_hidden(12),), _count(model, "MultiheadAttention"), "none (need_weights=True)")


@_seeded
def mha_masked(attn_dropout: float = 0.0) -> ZooCase:
    model = _MHA(attn_dropout, masked=True, need_weights=True)
    return ZooCase("mha_masked", model, (_hidden(13), _key_padding()), _count(model, "MultiheadAttention"),
                   "causal (bool triu attn_mask) + key_padding_mask")


@_seeded
def mha_sdpa(attn_dropout: float = 0.0) -> ZooCase:
    model = _MHA(attn_dropout, masked=True, need_weights=False)
    return ZooCase("mha_sdpa", model, (_hidden(14), _key_padding()), _count(model, "MultiheadAttention"),
                   "causal + key padding via F.scaled_dot_product_attention (need_weights=False)")


class _EncoderStack(nn.Module):
    def __init__(self, attn_dropout: float, masked: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(HIDDEN, HEADS, dim_feedforward=128, dropout=attn_dropout,
                                       batch_first=True)
            for _ in range(LAYERS))
        self.masked = masked

    def forward(self, x, src_key_padding_mask=None):
        mask = None
        if self.masked:
            # Boolean, like the padding mask: mixing a float src_mask with a bool padding mask
            # makes torch warn, and a warning is a graph break under Dynamo.
            T = x.shape[1]
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=self.masked)
        return x


@_seeded
def transformer_encoder(attn_dropout: float = 0.0) -> ZooCase:
    model = _EncoderStack(attn_dropout, masked=False)
    return ZooCase("transformer_encoder", model, (_hidden(15),), _count(model, "MultiheadAttention"), "none")


@_seeded
def transformer_encoder_masked(attn_dropout: float = 0.0) -> ZooCase:
    model = _EncoderStack(attn_dropout, masked=True)
    return ZooCase("transformer_encoder_masked", model, (_hidden(16), _key_padding()),
                   _count(model, "MultiheadAttention"),
                   "causal (bool triu src_mask, is_causal) + src_key_padding_mask")


class EinsumAttention(nn.Module):
    """Scores and output through ``torch.einsum`` (a common hand-written spelling), causal via
    a ``torch.ones(...).triu`` mask built in forward, scale as a division."""

    def __init__(self, attn_dropout: float):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)
        self.p = attn_dropout

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, HEADS, HIDDEN // HEADS).unbind(2)     # [B, T, H, D] each
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(HIDDEN // HEADS)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        probs = nn.functional.dropout(probs, self.p, self.training)
        return self.out(torch.einsum("bhij,bjhd->bihd", probs, v).reshape(B, T, HIDDEN))


@_seeded
def einsum(attn_dropout: float = 0.0) -> ZooCase:
    model = nn.Sequential(*(EinsumAttention(attn_dropout) for _ in range(LAYERS)))
    return ZooCase("einsum", model, (_hidden(17),), _count(model, "EinsumAttention"),
                   "causal (ones.triu bool, masked_fill -inf), einsum in [B,T,H,D] layout")


class SdpaAttention(nn.Module):
    """A model that already calls ``F.scaled_dot_product_attention`` (is_causal=True)."""

    def __init__(self, attn_dropout: float):
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)
        self.p = attn_dropout

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                       dropout_p=self.p if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, HIDDEN))


@_seeded
def sdpa_causal(attn_dropout: float = 0.0) -> ZooCase:
    model = nn.Sequential(*(SdpaAttention(attn_dropout) for _ in range(LAYERS)))
    return ZooCase("sdpa_causal", model, (_hidden(18),), _count(model, "SdpaAttention"),
                   "causal (is_causal=True)")


@_seeded
def llama_sdpa(attn_dropout: float = 0.0) -> ZooCase:
    """Llama as transformers runs it by default (attn_implementation="sdpa")."""
    import transformers

    config = _no_dropout(transformers.LlamaConfig(
        vocab_size=VOCAB, num_hidden_layers=LAYERS, hidden_size=HIDDEN, intermediate_size=128,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS), attn_dropout, "attention_dropout")
    config._attn_implementation = "sdpa"
    inner = transformers.LlamaModel(config)
    model = _Adapter(inner, ("input_ids",), ("last_hidden_state",), use_cache=False)
    return ZooCase("llama_sdpa", model, (_ids(),), _count(inner, "LlamaAttention"), "causal (HF sdpa path), GQA 2")


REGISTRY: dict[str, Callable[..., ZooCase]] = {
    fn.__name__: fn
    for fn in (gpt2, llama, llama_padded, llama_left_padded, mistral, qwen2, gemma2, phi3, gpt_neox, falcon, bloom, opt,
               bert, roberta, distilbert, vit, clip, whisper, t5, bart,
               nanogpt, einsum, sdpa_causal, llama_sdpa,
               mha, mha_masked, mha_sdpa, transformer_encoder, transformer_encoder_masked)
}


def build(name: str, attn_dropout: float = 0.0) -> ZooCase:
    return REGISTRY[name](attn_dropout=attn_dropout)
