"""nn.MultiheadAttention: Dynamo keeps it as one ``F.multi_head_attention_forward`` call.

The call is expanded into its math around our op: input projections (``F.linear`` with the
packed in_proj weight's thirds), heads split to [N, H, L, Dh], ``fa::attention_forward``, heads
merged back, output projection.  Only the common configuration is expanded (packed in_proj, no
bias_k/bias_v, no add_zero_attn, no static_k/v, attention weights unused); anything else is
reported and left as it is.
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

TARGET = F.multi_head_attention_forward
_NAMES = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
          "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
          "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
          "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
          "static_k", "static_v", "average_attn_weights", "is_causal")
_DEFAULTS = {"training": True, "key_padding_mask": None, "need_weights": True,
             "attn_mask": None, "use_separate_proj_weight": False, "q_proj_weight": None,
             "k_proj_weight": None, "v_proj_weight": None, "static_k": None, "static_v": None,
             "average_attn_weights": True, "is_causal": False}


def _bind(node: Node) -> dict[str, Any]:
    a = dict(_DEFAULTS)
    a.update(zip(_NAMES, node.args))
    a.update(node.kwargs)
    if any(n not in a for n in _NAMES):
        raise Reject("multi_head_attention_forward with missing arguments")
    return a


def _check(node: Node, a: dict[str, Any]) -> tuple[int, int, float, list[Node]]:
    for name, want in (("bias_k", None), ("bias_v", None), ("add_zero_attn", False),
                       ("use_separate_proj_weight", False), ("static_k", None),
                       ("static_v", None)):
        if a[name] != want:
            raise Reject(f"nn.MultiheadAttention with {name}={a[name]!r}")
    if not isinstance(a["in_proj_weight"], Node):
        raise Reject("nn.MultiheadAttention without a packed in_proj weight")
    outs = []
    for u in node.users:
        if not (u.op == "call_function" and u.target is operator.getitem):
            raise Reject("nn.MultiheadAttention result used as a tuple")
        if u.args[1] == 0:
            outs.append(u)
        elif u.users:
            raise Reject("nn.MultiheadAttention attention weights are used")
    e, h = a["embed_dim_to_check"], a["num_heads"]
    if not isinstance(e, int) or not isinstance(h, int) or e % h:
        raise Reject("nn.MultiheadAttention with symbolic or uneven head sizes")
    for t in ("query", "key", "value"):
        ev = example_value(a[t])
        if not isinstance(ev, torch.Tensor) or ev.dim() != 3:
            raise Reject("nn.MultiheadAttention on unbatched inputs")
    dtype = example_value(a["query"]).dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise Reject(f"unsupported dtype {dtype}")
    if e // h > 256:
        raise Reject(f"head dim {e // h} > 256")
    if not isinstance(a["is_causal"], bool) or not isinstance(a["need_weights"], bool):
        raise Reject("nn.MultiheadAttention with a runtime is_causal or need_weights")
    if a["is_causal"] and a["attn_mask"] is None:
        raise Reject("nn.MultiheadAttention with is_causal but no attn_mask")
    training, p = a["training"], a["dropout_p"]
    if not isinstance(training, bool) or (training and not isinstance(p, (int, float))):
        raise Reject("nn.MultiheadAttention with a runtime dropout or training flag")
    dropout = float(p) if training and p > 0 else 0.0
    return e, h, dropout, outs


def _heads(em: Emitter, x: Node, h: int) -> Node:
    """[S, N, E] -> [N, H, S, Dh]"""
    return em.method("permute", em.method("unflatten", x, -1, (h, -1)), 1, 2, 0, 3)


class _Scores:
    """Stands in for the scores node when classifying a mask (only its shape is read)."""

    def __init__(self, q: Node, k: Node):
        qv, kv = example_value(q), example_value(k)
        with qv.fake_mode:
            self.meta = {"example_value": qv.new_empty(list(qv.shape[:-1]) + [kv.shape[-2]])}


def _masks(em: Emitter, a: dict[str, Any], h: int, scores: _Scores
           ) -> tuple[Optional[Node], bool, str]:
    """(bias, causal, mask kinds) for the call's attn_mask and key_padding_mask, following
    F.multi_head_attention_forward: is_causal is a hint that attn_mask is causal, acted on
    (attn_mask dropped) only without key_padding_mask and attention weights."""
    bias: Optional[Node] = None
    keep: Optional[Node] = None
    kinds = []
    causal = False
    if a["is_causal"] and a["key_padding_mask"] is None and not a["need_weights"]:
        a = dict(a, attn_mask=None)
        causal = True
        kinds.append("causal")

    def add(term: Node, is_bool: bool) -> None:
        nonlocal bias, keep
        if is_bool:  # nn.MultiheadAttention's bool masks mark disallowed positions
            t = em.call(torch.logical_not, term)
            keep = t if keep is None else em.call(operator.and_, keep, t)
        else:
            bias = term if bias is None else em.call(operator.add, bias, term)

    m = a["attn_mask"]
    rule = None
    if isinstance(m, Node):
        mev = example_value(m)
        if mev.dim() == 2:
            rule = classify(m, scores, inverted=mev.dtype == torch.bool,
                            additive=mev.dtype != torch.bool)
            if rule is not None and (rule.window_left >= 0 or rule.window_right > 0):
                rule = None  # only plain causal is taken here
    if rule is not None:
        if not rule.is_noop:
            causal = True
            kinds.append("causal")
    elif isinstance(m, Node):
        if mev.dim() == 3:  # [N*H, L, S]
            m = em.method("unflatten", m, 0, (-1, h))
        elif mev.dim() != 2:
            raise Reject("nn.MultiheadAttention attn_mask of rank other than 2 or 3")
        add(m, mev.dtype == torch.bool)
        kinds.append("bool" if mev.dtype == torch.bool else "additive")
    elif m is not None:
        raise Reject("nn.MultiheadAttention with a non-tensor attn_mask")
    kpm = a["key_padding_mask"]
    if isinstance(kpm, Node):
        kev = example_value(kpm)
        if kev.dim() != 2:
            raise Reject("nn.MultiheadAttention key_padding_mask of rank other than 2")
        full = slice(None)
        add(em.call(operator.getitem, kpm, (full, None, None, full)), kev.dtype == torch.bool)
        kinds.append("bool" if kev.dtype == torch.bool else "additive")
    elif kpm is not None:
        raise Reject("nn.MultiheadAttention with a non-tensor key_padding_mask")
    if keep is not None:
        bias = keep if bias is None else em.call(torch.where, keep, bias, float("-inf"))
    return bias, causal, "+".join(dict.fromkeys(kinds)) or "none"


def rewrite_mha(gm: torch.fx.GraphModule, node: Node, attention_op) -> tuple[dict, Node]:
    """Expands the call in place; returns the variant fields and the inserted op node."""
    a = _bind(node)
    e, h, dropout, outs = _check(node, a)
    em = Emitter(gm.graph, node, node)
    try:
        w = [em.call(operator.getitem, em.method("chunk", a["in_proj_weight"], 3), i)
             for i in range(3)]
        b = [None] * 3
        if isinstance(a["in_proj_bias"], Node):
            b = [em.call(operator.getitem, em.method("chunk", a["in_proj_bias"], 3), i)
                 for i in range(3)]
        q, k, v = (_heads(em, em.call(F.linear, a[name], w[i], b[i]), h)
                   for i, name in enumerate(("query", "key", "value")))
        bias, causal, mask_kind = _masks(em, a, h, _Scores(q, k))
        seed = None
        if dropout > 0:
            seed = em.call(torch.randint, 0, 1 << 62, (1,), dtype=torch.int64,
                           device=example_value(q).device)
        att = em.call(attention_op, q, k, v, bias, 1.0 / math.sqrt(e // h), causal, False,
                      -1, -1, 0.0, dropout, seed)
        out = em.call(operator.getitem, att, 0)
        out = em.method("flatten", em.method("permute", out, 2, 0, 1, 3), 2)
        out = em.call(F.linear, out, a["out_proj_weight"], a["out_proj_bias"])
    except Exception:
        em.rollback()
        raise
    for u in outs:
        u.replace_all_uses_with(out)
    erase_dead(gm.graph, list(node.users) + [node])
    qev = example_value(q)
    fields = dict(spelling="nn.MultiheadAttention", scale=1.0 / math.sqrt(e // h),
                  mask=mask_kind, alignment="top-left" if causal else None, gqa_ratio=1, dropout_p=dropout,
                  softcap=0.0, dtype=str(qev.dtype), head_dim=e // h)
    return fields, att
