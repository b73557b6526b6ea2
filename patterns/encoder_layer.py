"""nn.TransformerEncoderLayer's inference fast path: one ``torch._transformer_encoder_layer_fwd``
call holds the whole layer, so its attention is invisible to the softmax-anchored matcher.

The call is expanded into the layer's math (the same as the module's slow path, batch_first):

    norm_first:  x = src + SA(LN1(src));  out = x + FF(LN2(x))
    otherwise:   x = LN1(src + SA(src));  out = LN2(x + FF(x))

with SA = out_proj ∘ fa::attention_forward ∘ in_proj and FF = linear2 ∘ act ∘ linear1.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.fx import Node

from .emit import Emitter, erase_dead
from .masks import classify
from .matcher import Reject
from .normalize import example_value

TARGET = torch._transformer_encoder_layer_fwd
_NAMES = ("src", "embed_dim", "num_heads", "qkv_weight", "qkv_bias", "proj_weight", "proj_bias",
          "use_gelu", "norm_first", "eps", "norm_weight_1", "norm_bias_1", "norm_weight_2",
          "norm_bias_2", "ffn_weight_1", "ffn_bias_1", "ffn_weight_2", "ffn_bias_2", "mask",
          "mask_type")


class _Scores:
    def __init__(self, q: Node, k: Node):
        qv, kv = example_value(q), example_value(k)
        with qv.fake_mode:
            self.meta = {"example_value": qv.new_empty(list(qv.shape[:-1]) + [kv.shape[-2]])}


def _bind(node: Node) -> dict[str, Any]:
    a = {"mask": None, "mask_type": None}
    a.update(zip(_NAMES, node.args))
    a.update(node.kwargs)
    if any(n not in a for n in _NAMES):
        raise Reject("_transformer_encoder_layer_fwd with missing arguments")
    for n in ("embed_dim", "num_heads", "use_gelu", "norm_first", "eps"):
        if isinstance(a[n], Node):
            raise Reject(f"_transformer_encoder_layer_fwd with a runtime {n}")
    return a


def _mask(em: Emitter, a: dict, h: int, q: Node, k: Node) -> tuple[Optional[Node], bool, str]:
    m = a["mask"]
    if m is None:
        return None, False, "none"
    if not isinstance(m, Node):
        raise Reject("_transformer_encoder_layer_fwd with a non-tensor mask")
    mev = example_value(m)
    is_bool = mev.dtype == torch.bool
    full = slice(None)
    if mev.dim() == 2 and a["mask_type"] == 0:  # [L, L] attention mask
        rule = classify(m, _Scores(q, k), inverted=is_bool, additive=not is_bool)
        if rule is not None and not rule.is_noop and rule.causal and rule.window_left < 0 \
                and not rule.bottom_right:
            return None, True, "causal"
    elif mev.dim() == 2 and a["mask_type"] == 1:  # [N, S] key padding
        m = em.call(operator.getitem, m, (full, None, None, full))
    elif mev.dim() == 4 and a["mask_type"] == 2:  # merged [N, H, L, S]
        pass
    else:
        raise Reject("_transformer_encoder_layer_fwd with an unexpected mask layout")
    if is_bool:  # True marks disallowed positions
        return em.call(torch.logical_not, m), False, "bool"
    return m, False, "additive"


def rewrite_encoder_layer(gm: torch.fx.GraphModule, node: Node, attention_op):
    a = _bind(node)
    e, h = a["embed_dim"], a["num_heads"]
    src = a["src"]
    sev = example_value(src)
    if not isinstance(sev, torch.Tensor) or sev.dim() != 3:
        raise Reject("_transformer_encoder_layer_fwd on unbatched or nested inputs")
    if e % h or e // h > 256:
        raise Reject("_transformer_encoder_layer_fwd with an unsupported head dim")
    em = Emitter(gm.graph, node, node)
    try:
        def norm(x, i):
            return em.call(F.layer_norm, x, (e,), a[f"norm_weight_{i}"], a[f"norm_bias_{i}"],
                           a["eps"])

        def self_attention(x):
            qkv = em.call(F.linear, x, a["qkv_weight"], a["qkv_bias"])      # [N, L, 3E]
            parts = em.method("chunk", qkv, 3, -1)
            q, k, v = (em.method("transpose", em.method("unflatten", em.call(
                operator.getitem, parts, i), -1, (h, -1)), 1, 2) for i in range(3))
            bias, causal, kind = _mask(em, a, h, q, k)
            att = em.call(attention_op, q, k, v, bias, 1.0 / math.sqrt(e // h), causal, False,
                          -1, -1, 0.0, 0.0, None)
            out = em.call(operator.getitem, att, 0)                          # [N, H, L, Dh]
            out = em.method("flatten", em.method("transpose", out, 1, 2), 2)
            return em.call(F.linear, out, a["proj_weight"], a["proj_bias"]), att, kind, causal

        def feed_forward(x):
            y = em.call(F.linear, x, a["ffn_weight_1"], a["ffn_bias_1"])
            y = em.call(F.gelu if a["use_gelu"] else F.relu, y)
            return em.call(F.linear, y, a["ffn_weight_2"], a["ffn_bias_2"])

        if a["norm_first"]:
            sa, att, kind, causal = self_attention(norm(src, 1))
            x = em.call(operator.add, src, sa)
            out = em.call(operator.add, x, feed_forward(norm(x, 2)))
        else:
            sa, att, kind, causal = self_attention(src)
            x = norm(em.call(operator.add, src, sa), 1)
            out = norm(em.call(operator.add, x, feed_forward(x)), 2)
    except Exception:
        em.rollback()
        raise
    node.replace_all_uses_with(out)
    erase_dead(gm.graph, [node])
    fields = dict(spelling="nn.TransformerEncoderLayer", scale=1.0 / math.sqrt(e // h),
                  mask=kind, alignment="top-left" if causal else None, gqa_ratio=1,
                  dropout_p=0.0, softcap=0.0, dtype=str(sev.dtype), head_dim=e // h)
    return fields, att
