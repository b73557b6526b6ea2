"""``rewrite_attention``: find every attention site in a Dynamo graph and call the fa op."""
from __future__ import annotations

import operator
import os
from typing import Any, Optional, Sequence

import torch
from torch.fx import GraphModule, Node

from . import masks as mask_rules
from . import encoder_layer, mha
from .emit import Emitter, erase_dead
from .matcher import BiasTerm, MaskTerm, Plan, Reject, head_ratio, match_sdpa, match_softmax
from .normalize import canon, example_value
from .report import RewriteReport, Site, Variant

_SEED_HIGH = 1 << 62


def site_source(node: Node) -> str:
    """"file.py:123 in forward: <line>" for the innermost user frame of the node's trace."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line.startswith('File "'):
            try:
                path = line.split('"')[1]
                lineno = line.split(", line ")[1].split(",")[0]
                func = line.split(" in ")[-1]
            except IndexError:
                break
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{os.path.basename(path)}:{lineno} in {func}: {code}"
    return f"<no stack trace> {node.name}"


def _attention_op():
    import fa_inductor.ops  # noqa: F401  (registers torch.ops.fa.*)

    return torch.ops.fa.attention_forward.default


def _predicted_kernel(att: Node, plan: Plan) -> str:
    """What dispatch will pick for the inserted op node (from its arguments' fake values)."""
    try:
        from fa_inductor.ops import dispatch
    except ImportError:
        return "reference"
    try:
        choose = getattr(dispatch, "choice_for_node", None)
        choice = choose(att) if choose is not None else None
        if choice is not None:
            return str(getattr(choice, "name", choice))
        predict = getattr(dispatch, "predict_kernel", None)
        return str(predict(att.args[0], plan)) if predict is not None else "reference"
    except Exception:  # noqa: BLE001  (a prediction is informative only)
        return "unknown"


# ----------------------------------------------------------------------------- masks

def _classify_masks(plan: Plan, cache: dict) -> list[str]:
    """Turn position-only masks into causal/window flags; returns the mask kinds left as bias."""
    rule: Optional[mask_rules.PositionMask] = None
    if plan.causal:
        rule = mask_rules.PositionMask(True, False, -1, -1)

    def take(found: Optional[mask_rules.PositionMask]) -> bool:
        nonlocal rule
        if found is None:
            return False
        if found.is_noop:
            return True
        if rule is None or rule == found:
            rule = found
            return True
        return False

    ref = plan.score if plan.score is not None else _scores_stand_in(plan)
    if ref is None:
        return (["additive"] if plan.biases else []) + (["bool"] if plan.masks else [])

    def split(keep: Node, lead) -> Optional[list[MaskTerm]]:
        """keep = a & b & ...: the position-only conjuncts become the rule, the rest stay a
        bool mask.  None when no conjunct is position-only (nothing to gain)."""
        leaves = mask_rules.conjuncts(keep)
        if len(leaves) < 2 or lead is not None:
            return None
        found = [mask_rules.classify(x, ref, cache=cache) for x in leaves]
        rules = {f for f in found if f is not None and not f.is_noop}
        if len(rules) > 1 or (rule is not None and rules and rules != {rule}):
            return None
        if not rules:
            return None  # nothing position-only: the mask stays exactly as written
        for f in rules:
            take(f)
        return [MaskTerm(x, inverted=False) for x, f in zip(leaves, found) if f is None]

    kept_masks = []
    for m in plan.masks:
        if take(mask_rules.classify(m.node, ref, inverted=m.inverted, cache=cache)):
            continue
        keep = m.node if not m.inverted else mask_rules.negated(m.node)
        rest = split(keep, m.lead) if keep is not None else None
        kept_masks.extend([m] if rest is None else rest)
    kept_biases = []
    for b in plan.biases:
        additive = not b.factors and b.const > 0
        if additive and take(mask_rules.classify(b.value, ref, additive=True, cache=cache)):
            continue
        # Not split: HF's where(keep, 0, finfo.min) float masks, even when part of keep is
        # position-only, stay one bias.  In a row whose every key is masked (left padding)
        # eager averages all values uniformly, which no causal/bool form reproduces.
        kept_biases.append(b)
    plan.masks, plan.biases = kept_masks, kept_biases
    if rule is not None:
        plan.causal, plan.bottom_right = rule.causal, rule.bottom_right
        plan.window_left, plan.window_right = rule.window_left, rule.window_right
    kinds = []
    if kept_biases:
        kinds.append("additive")
    if kept_masks:
        kinds.append("bool")
    return kinds


class _ScoresStandIn:
    """Quacks like a scores node for mask classification of sdpa's attn_mask."""

    def __init__(self, value: Any):
        self.meta = {"example_value": value}


def _scores_stand_in(plan: Plan):
    qs = plan.q.shape()
    ks = plan.k.shape()
    qev = example_value(plan.q.node)
    fake = qev.fake_mode if hasattr(qev, "fake_mode") else None
    if fake is None:
        return None
    with fake:
        value = torch.empty(qs[:-1] + [ks[-2]], dtype=qev.dtype, device=qev.device)
    return _ScoresStandIn(value)


# ----------------------------------------------------------------------------- emission

def _regroup(em: Emitter, n: Node, lead: Optional[tuple]) -> Node:
    if lead is None:
        return n
    if lead[0] == "unflatten":
        return em.method("unflatten", n, 0, lead[1])
    return em.method("flatten", n, 0, lead[1] - 1)


def _to_canonical(em: Emitter, operand, rank: int) -> Node:
    n = operand.node
    if operand.perm is not None:
        n = em.method("permute", n, *operand.perm)
    n = _regroup(em, n, operand.lead)
    for _ in range(4 - rank):
        n = em.method("unsqueeze", n, 0)
    return n


def _apply_factor(em: Emitter, x: Node, factor: Any, op: str) -> Node:
    return em.call(operator.truediv if op == "div" else operator.mul, x, factor)


def _bias_term(em: Emitter, term: BiasTerm) -> Node:
    x = _regroup(em, term.value, term.lead)
    if term.const != 1.0:
        x = em.call(operator.mul, x, term.const)
    for factor, op in term.factors:
        x = _apply_factor(em, x, factor, op)
    return x


def _keep_mask(em: Emitter, masked: Node) -> Node:
    c = canon(masked)
    inner = c["x"] if c is not None and c.kind == "logical_not" else None
    if isinstance(inner, Node) and example_value(inner).dtype == torch.bool:
        return inner  # ~~keep
    return em.call(torch.logical_not, masked)


def _emit(gm: GraphModule, plan: Plan) -> Node:
    em = Emitter(gm.graph, plan.out, plan.anchor)
    try:
        q = _to_canonical(em, plan.q, plan.rank)
        k = _to_canonical(em, plan.k, plan.rank)
        v = _to_canonical(em, plan.v, plan.rank)
        q_dtype = example_value(q).dtype
        for factor, op in plan.scale_factors:
            if factor == "rsqrt_head_dim":
                d = em.method("size", q, -1)
                factor = em.call(operator.pow, d, -0.5)
            q = _apply_factor(em, q, factor, op)
        if example_value(q).dtype != q_dtype:
            q = em.method("to", q, q_dtype)
        bias = None
        for term in plan.biases:
            t = _bias_term(em, term)
            bias = t if bias is None else em.call(operator.add, bias, t)
        keep = None
        for m in plan.masks:
            t = _keep_mask(em, m.node) if m.inverted else m.node
            t = _regroup(em, t, m.lead)
            keep = t if keep is None else em.call(operator.and_, keep, t)
        if keep is not None:
            bias = keep if bias is None else em.call(torch.where, keep, bias, float("-inf"))
        seed = None
        if plan.dropout_p > 0:
            seed = em.call(torch.randint, 0, _SEED_HIGH, (1,), dtype=torch.int64,
                           device=example_value(q).device)
        att = em.call(_attention_op(), q, k, v, bias, float(plan.scale), bool(plan.causal),
                      bool(plan.bottom_right), int(plan.window_left), int(plan.window_right),
                      float(plan.softcap), float(plan.dropout_p), seed)
        out = em.call(operator.getitem, att, 0)
        if plan.rank == 3:
            out = em.call(operator.getitem, out, 0)
        elif plan.rank == 2:
            out = em.call(operator.getitem, out, (0, 0))
        if plan.out_perm is not None:
            out = em.method("permute", out, *plan.out_perm)
        out = _regroup(em, out, plan.out_lead)
    except Exception:
        em.rollback()
        raise
    plan.out.replace_all_uses_with(out)
    erase_dead(gm.graph, [plan.out])
    return att


def _variant(plan: Plan, att: Node, mask_kinds: list[str]) -> Variant:
    qs = plan.q.shape()
    d = qs[-1]
    if plan.window_left >= 0 or plan.window_right > 0:
        position = "window"
    elif plan.causal:
        position = "causal"
    else:
        position = None
    kinds = ([position] if position else []) + mask_kinds
    return Variant(
        spelling=plan.spelling,
        scale=None if plan.scale_factors else float(plan.scale),
        mask="+".join(kinds) if kinds else "none",
        alignment=("bottom-right" if plan.bottom_right else "top-left") if position else None,
        gqa_ratio=head_ratio(plan),
        dropout_p=plan.dropout_p,
        softcap=plan.softcap,
        dtype=str(example_value(plan.q.node).dtype),
        head_dim=d if isinstance(d, int) else str(d),
        kernel=_predicted_kernel(att, plan),
    )


# ----------------------------------------------------------------------------- entry point

# Calls that hide a whole attention (their softmax only appears after AOTAutograd decomposes
# them): reported so that explain lists them instead of silently skipping them.
_OPAQUE = {
    torch.nn.functional.multi_head_attention_forward:
        "fused nn.MultiheadAttention call (F.multi_head_attention_forward) is not decomposed",
    torch._transformer_encoder_layer_fwd:
        "fused nn.TransformerEncoderLayer fast path (_transformer_encoder_layer_fwd)",
    torch._native_multi_head_attention:
        "fused nn.MultiheadAttention fast path (_native_multi_head_attention)",
}


# Fused calls expanded into their math around the op (the rest are only reported).
_EXPANDERS = {
    mha.TARGET: mha.rewrite_mha,
    encoder_layer.TARGET: encoder_layer.rewrite_encoder_layer,
}


def _anchors(gm: GraphModule) -> list[Node]:
    out = []
    for n in gm.graph.nodes:
        c = canon(n)
        if c is not None and c.kind in ("softmax", "sdpa"):
            out.append(n)
        elif n.op == "call_function" and _opaque_reason(n) is not None:
            out.append(n)
    return out


def _opaque_reason(n: Node) -> Optional[str]:
    try:
        return _OPAQUE.get(n.target)
    except TypeError:
        return None


def rewrite_attention(gm: GraphModule, example_inputs: Sequence[Any] = (), *,
                      graph_index: int = 0) -> RewriteReport:
    """Rewrite every attention site of a Dynamo graph to ``fa::attention_forward`` in place.

    One ``Site`` per softmax (or sdpa call) looked at: rewritten with its variant, or left
    as is with the reason.
    """
    report = RewriteReport()
    changed = False
    mask_cache: dict = {}
    for anchor in _anchors(gm):
        if anchor.graph is not gm.graph or anchor not in gm.graph.nodes:
            continue
        source = site_source(anchor)
        opaque = _opaque_reason(anchor) if anchor.op == "call_function" else None
        expand = _EXPANDERS.get(anchor.target) if opaque is not None else None
        if expand is not None:
            try:
                fields, att = expand(gm, anchor, _attention_op())
            except Reject as e:
                opaque = str(e)
            except Exception as e:  # noqa: BLE001
                opaque = f"internal error: {type(e).__name__}: {e}"
            else:
                changed = True
                variant = Variant(kernel=_predicted_kernel(att, None), **fields)
                report.sites.append(Site(source, True, variant=variant,
                                         graph_index=graph_index))
                continue
        if opaque is not None:
            report.sites.append(Site(source, False, reason=opaque, graph_index=graph_index))
            continue
        try:
            plan = match_sdpa(anchor) if canon(anchor).kind == "sdpa" else match_softmax(anchor)
            mask_kinds = _classify_masks(plan, mask_cache)
            att = _emit(gm, plan)
        except Reject as e:
            report.sites.append(Site(source, False, reason=str(e), graph_index=graph_index))
            continue
        except Exception as e:  # noqa: BLE001  (never fail a compile over a site we skip)
            report.sites.append(Site(source, False, reason=f"internal error: "
                                     f"{type(e).__name__}: {e}", graph_index=graph_index))
            continue
        changed = True
        report.sites.append(Site(source, True, variant=_variant(plan, att, mask_kinds),
                                 graph_index=graph_index))
    if changed:
        gm.graph.lint()
        gm.recompile()
    return report
