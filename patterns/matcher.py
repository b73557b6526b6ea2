"""Semantic matching of one attention site into a ``Plan`` (pure analysis; no graph edits).

Anchored on a softmax over the last dim, the matcher walks back through the score chain to the
score matmul and forward to the value matmul, folding every step into the op's terms:

    scores = scale * (Q @ Kᵀ)  →  softcap  →  + bias terms  →  masks
    out    = dropout(softmax(scores)) @ V

It accepts any order of scalar scales, casts and additive terms that is algebraically that
form, and rejects (``Reject(reason)``) anything else rather than guess.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import operator
from typing import Any, Optional

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .masks import is_negative_fill
from .normalize import Canon, canon, example_value

MAX_HEAD_DIM = 256


class Reject(Exception):
    """The site is left as is; the message is the reason shown to the user."""


def _map_ev(a: Any) -> Any:
    if isinstance(a, Node):
        return example_value(a)
    if isinstance(a, (tuple, list)):
        return type(a)(_map_ev(x) for x in a)
    return a


def apply_lead(value: Any, lead: Optional[tuple]) -> Any:
    """Regroup leading dims: ("unflatten", sizes) splits dim 0, ("flatten", n) merges 0..n-1."""
    if lead is None:
        return value
    if lead[0] == "unflatten":
        return value.unflatten(0, _map_ev(lead[1]))
    return value.flatten(0, lead[1] - 1)


@dataclasses.dataclass
class Operand:
    """A tensor that reaches the op's canonical layout by ``permute(perm)`` (None: as is),
    regrouping its leading dims (``lead``, see ``apply_lead``), then prepending unit dims."""

    node: Node
    perm: Optional[list[int]] = None
    lead: Optional[tuple] = None

    def shape(self) -> list:
        ev = example_value(self.node)
        if self.lead is not None:
            with ev.fake_mode:
                ev = apply_lead(ev.permute(self.perm) if self.perm is not None else ev,
                                self.lead)
            return list(ev.shape)
        s = list(ev.shape)
        return [s[p] for p in self.perm] if self.perm is not None else s


@dataclasses.dataclass
class BiasTerm:
    """``const * value`` times/over the runtime scalars in ``factors``, added to the scores."""

    value: Node
    const: float = 1.0
    factors: list = dataclasses.field(default_factory=list)  # (node, "mul" | "div")
    lead: Optional[tuple] = None  # leading-dim regrouping into the softmax's layout


@dataclasses.dataclass
class MaskTerm:
    node: Node
    inverted: bool  # True: the mask marks masked-out positions (masked_fill style)
    lead: Optional[tuple] = None


@dataclasses.dataclass
class Plan:
    spelling: str
    anchor: Node                  # softmax, or the sdpa call
    out: Node                     # node whose value the op's output replaces
    q: Operand
    k: Operand
    v: Operand
    rank: int                     # rank of the scores (2, 3 or 4)
    scale: float = 1.0
    scale_factors: list = dataclasses.field(default_factory=list)  # runtime scalars into q
    biases: list[BiasTerm] = dataclasses.field(default_factory=list)
    masks: list[MaskTerm] = dataclasses.field(default_factory=list)
    softcap: float = 0.0
    dropout_p: float = 0.0
    causal: bool = False
    bottom_right: bool = False
    window_left: int = -1
    window_right: int = -1
    out_perm: Optional[list[int]] = None
    out_lead: Optional[tuple] = None  # regrouping of the op's output into the value layout
    score: Optional[Node] = None  # the scores' producer (for mask classification)


# ----------------------------------------------------------------------------- scalars

def scalar(x: Any, max_rank: int) -> Optional[tuple[str, Any]]:
    """("const", float) or ("node", node) when x is a scalar factor; None otherwise."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return ("const", float(x))
    if not isinstance(x, Node):
        return None
    ev = example_value(x)
    if isinstance(ev, bool):
        return None
    if isinstance(ev, (int, float)):
        return ("const", float(ev))
    if isinstance(ev, (torch.SymInt, torch.SymFloat)):
        return ("node", x)
    if (isinstance(ev, torch.Tensor) and ev.dtype.is_floating_point and ev.dim() <= max_rank
            and all(isinstance(s, int) and s == 1 for s in ev.shape)):
        return ("node", x)
    return None


def _peel_const_scales(x: Any) -> tuple[Any, float]:
    """Strip python-constant muls/divs off a matmul operand: (inner, factor)."""
    factor = 1.0
    while True:
        c = canon(x)
        if c is None or c.kind not in ("mul", "div"):
            return x, factor
        if c.kind == "div":
            s = scalar(c["b"], 0)
            if s is None or s[0] != "const" or s[1] == 0 or not isinstance(c["a"], Node):
                return x, factor
            factor /= s[1]
            x = c["a"]
            continue
        for inner, other in ((c["a"], c["b"]), (c["b"], c["a"])):
            s = scalar(other, 0)
            if s is not None and s[0] == "const" and isinstance(inner, Node) and \
                    not isinstance(example_value(other), torch.Tensor):
                factor *= s[1]
                x = inner
                break
        else:
            return x, factor


def _peel_transposed(bt: Node) -> tuple[Node, list[int], float]:
    """bt = X.permute(total) * factor; returns (X, total, factor)."""
    r = example_value(bt).dim()
    total = list(range(r))
    factor = 1.0
    x = bt
    while True:
        c = canon(x)
        if c is not None and c.kind == "permute":
            total = [c["perm"][t] for t in total]
            x = c["x"]
            continue
        inner, f = _peel_const_scales(x)
        if inner is x:
            return x, total, factor
        factor *= f
        x = inner


def _operand_from_transposed(bt: Node) -> tuple[Operand, float]:
    """K such that K.transpose(-2, -1) == bt (up to a constant factor)."""
    x, total, factor = _peel_transposed(bt)
    perm = total[:-2] + [total[-1], total[-2]]
    return Operand(x, None if perm == list(range(len(perm))) else perm), factor


# ----------------------------------------------------------------------------- score chain

@dataclasses.dataclass
class _Chain:
    const: float = 1.0
    factors: list = dataclasses.field(default_factory=list)
    biases: list = dataclasses.field(default_factory=list)
    masks: list = dataclasses.field(default_factory=list)
    softcap: float = 0.0
    in_softcap: bool = False
    lead: Optional[tuple] = None  # set once the walk crossed a leading-dim view

    def scale_by(self, s: tuple[str, Any], op: str) -> None:
        if s[0] == "const":
            if op == "div":
                if s[1] == 0:
                    raise Reject("scores divided by zero")
                self.const /= s[1]
            else:
                self.const *= s[1]
        else:
            self.factors.append((s[1], op))


def _describe(node: Any) -> str:
    if not isinstance(node, Node):
        return repr(node)
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return node.op


def _softcap_inner(c: Canon) -> Optional[tuple[Node, float, list[Node]]]:
    """For mul(tanh(y / cap), cap): (y, cap, [tanh, div])."""
    for t, cap in ((c["a"], c["b"]), (c["b"], c["a"])):
        if not isinstance(cap, (int, float)) or isinstance(cap, bool) or cap <= 0:
            continue
        ct = canon(t)
        if ct is None or ct.kind != "tanh":
            continue
        cd = canon(ct["x"])
        if cd is None:
            continue
        y = None
        if cd.kind == "div" and isinstance(cd["b"], (int, float)) and \
                math.isclose(cd["b"], cap, rel_tol=1e-6):
            y = cd["a"]
        elif cd.kind == "mul":
            for yy, inv in ((cd["a"], cd["b"]), (cd["b"], cd["a"])):
                if isinstance(inv, (int, float)) and not isinstance(inv, bool) and inv != 0 \
                        and math.isclose(1.0 / inv, cap, rel_tol=1e-6):
                    y = yy
        if isinstance(y, Node):
            return y, float(cap), [t, ct["x"]]
    return None


def _walk_scores(x: Any, st: _Chain, shape: tuple, rank: int) -> tuple[Node, _Chain]:
    """Walk from the softmax input down to the score matmul, folding the chain into ``st``."""
    while True:
        if not isinstance(x, Node):
            raise Reject("scores are not a tensor")
        ev = example_value(x)
        if not isinstance(ev, torch.Tensor) or tuple(ev.shape) != shape:
            raise Reject(f"scores change shape at {_describe(x)}")
        if len(x.users) != 1:
            raise Reject("attention scores have other users")
        c = canon(x)
        kind = c.kind if c is not None else None
        if kind in ("matmul", "einsum", "baddbmm"):
            return x, st
        if kind == "cast":
            x = c["x"]
        elif kind == "reshape" and _same_shape(c["x"], x):
            x = c["x"]  # a view that changes nothing
        elif kind == "reshape":
            lead = _regroup(list(example_value(c["x"]).shape), list(ev.shape),
                            tuple(c["shape"][:-2]))
            if lead is None or st.lead is not None:
                raise Reject("scores reshaped beyond their leading dims")
            st.lead = lead
            x = c["x"]
            shape = tuple(example_value(x).shape)
        elif kind == "neg":
            st.const = -st.const
            x = c["x"]
        elif kind == "mul":
            sc = _softcap_inner(c)
            if sc is not None:
                y, cap, inner = sc
                if st.in_softcap:
                    raise Reject("softcap applied twice")
                if st.factors or not math.isclose(st.const, 1.0, rel_tol=1e-6):
                    raise Reject("scores scaled after the softcap")
                for n in inner:
                    if len(n.users) != 1:
                        raise Reject("attention scores have other users")
                st.softcap, st.in_softcap, st.const = cap, True, 1.0
                x = y
                continue
            for chain, other in ((c["a"], c["b"]), (c["b"], c["a"])):
                s = scalar(other, rank)
                if s is not None and isinstance(chain, Node) and \
                        tuple(example_value(chain).shape) == shape:
                    st.scale_by(s, "mul")
                    x = chain
                    break
            else:
                raise Reject("scores multiplied by a tensor")
        elif kind == "div":
            s = scalar(c["b"], rank)
            if s is None:
                raise Reject("scores divided by a tensor")
            st.scale_by(s, "div")
            x = c["a"]
        elif kind in ("add", "sub"):
            return _walk_sum(c, kind, st, shape, rank)
        elif kind == "masked_fill":
            if not is_negative_fill(c["value"]):
                raise Reject("masked_fill with a finite value")
            _check_mask_position(st)
            st.masks.append(_mask_term(c["mask"], True, st))
            x = c["x"]
        elif kind == "where":
            if is_negative_fill(c["b"]):
                st.masks.append(_mask_term(c["cond"], False, st))
                x = c["a"]
            elif is_negative_fill(c["a"]):
                st.masks.append(_mask_term(c["cond"], True, st))
                x = c["b"]
            else:
                raise Reject("torch.where with a finite fill")
            _check_mask_position(st)
        else:
            raise Reject(f"not attention: scores come from {_describe(x)}")


def _regroup(src: list, dst: list, dst_sizes: Optional[tuple]) -> Optional[tuple]:
    """How to move a tensor from layout ``src`` to ``dst`` when they differ only in how the
    leading dims are grouped (one flat dim vs several); ``dst_sizes``: dst's leading sizes
    as graph arguments (ints or size nodes), needed to split."""
    if len(src) < 3 or len(dst) < 3 or not known_equal(src[-1], dst[-1]) or \
            not known_equal(src[-2], dst[-2]):
        return None
    ns, nd = len(src) - 2, len(dst) - 2
    if ns == 1 and nd > 1:
        if dst_sizes is None or len(dst_sizes) != nd:
            return None
        return ("unflatten", tuple(dst_sizes))
    if ns > 1 and nd == 1:
        return ("flatten", ns)
    return None


def _same_shape(a: Any, b: Any) -> bool:
    sa, sb = example_value(a).shape, example_value(b).shape
    return len(sa) == len(sb) and all(known_equal(x, y) for x, y in zip(sa, sb))


def _static(sizes: list) -> Optional[tuple]:
    return tuple(sizes) if all(isinstance(x, int) for x in sizes) else None


def _bias_lead(bias: Any, lead: Optional[tuple]) -> Optional[tuple]:
    """A bias with a leading dim of 1 broadcasts in any grouping: no regrouping needed."""
    if lead is None or not isinstance(bias, Node):
        return None
    ev = example_value(bias)
    if ev.dim() < 3 or all(isinstance(d, int) and d == 1 for d in ev.shape[:-2]):
        return None
    return lead


def _mask_term(mask: Any, inverted: bool, st: _Chain) -> MaskTerm:
    if not isinstance(mask, Node) or example_value(mask).dtype != torch.bool:
        raise Reject("mask is not a bool tensor")
    return MaskTerm(mask, inverted, lead=_bias_lead(mask, st.lead))


def _check_mask_position(st: _Chain) -> None:
    if st.in_softcap:
        raise Reject("mask applied before the softcap")
    if st.factors or st.const <= 0:
        raise Reject("mask under a runtime or negative scale")


def _walk_sum(c: Canon, kind: str, st: _Chain, shape: tuple, rank: int):
    if st.in_softcap:
        raise Reject("bias added before the softcap")
    alpha = c["alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise Reject("add with a runtime alpha")
    sign = -1.0 if kind == "sub" else 1.0
    # (chain, bias, chain coefficient, bias coefficient): a + s*alpha*b
    options = [(c["a"], c["b"], 1.0, sign * alpha), (c["b"], c["a"], sign * alpha, 1.0)]
    last: Optional[Reject] = None
    for chain, bias, chain_coef, bias_coef in options:
        if not isinstance(chain, Node):
            continue
        ev = example_value(chain)
        if not isinstance(ev, torch.Tensor) or tuple(ev.shape) != shape:
            continue
        sub = copy.copy(st)
        sub.factors, sub.biases, sub.masks = list(st.factors), list(st.biases), list(st.masks)
        if isinstance(bias, Node) and isinstance(example_value(bias), torch.Tensor):
            bev = example_value(bias)
            if bev.dim() > rank:
                continue
            sub.biases.append(BiasTerm(bias, st.const * bias_coef, list(st.factors),
                                       lead=_bias_lead(bias, st.lead)))
        elif scalar(bias, rank) is None:
            continue
        # a scalar added to every score does not change the softmax: dropped
        sub.const *= chain_coef
        try:
            return _walk_scores(chain, sub, shape, rank)
        except Reject as e:
            last = e
    raise last or Reject("scores come from a sum of two non-attention tensors")


# ----------------------------------------------------------------------------- einsum

def _parse_einsum(eq: str, n_ops: int) -> list[str]:
    if "->" not in eq or "." in eq:
        raise Reject("einsum without an explicit output or with '...'")
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != n_ops or n_ops != 2:
        raise Reject("einsum with other than two operands")
    for t in terms + [out]:
        if len(set(t)) != len(t) or not t.isalpha():
            raise Reject("einsum with a repeated index")
    return terms + [out]


def _order(term: str, letters: str) -> Optional[list[int]]:
    """Permutation that takes a tensor indexed by ``term`` to the order ``letters``."""
    perm = [term.index(ch) for ch in letters]
    return None if perm == list(range(len(perm))) else perm


def _score_einsum(c: Canon) -> tuple[Operand, Operand, str, str, str]:
    a_t, b_t, out = _parse_einsum(c["equation"], len(c["operands"]))
    a, b = c["operands"]
    if len(out) < 2:
        raise Reject("einsum scores of rank < 2")
    key, query = out[-1], out[-2]
    if key in b_t and key not in a_t and query in a_t and query not in b_t:
        q_t, k_t, q, k = a_t, b_t, a, b
    elif key in a_t and key not in b_t and query in b_t and query not in a_t:
        q_t, k_t, q, k = b_t, a_t, b, a
    else:
        raise Reject("einsum scores not in [..., query, key] order")
    contracted = [ch for ch in q_t if ch in k_t and ch not in out]
    batch = out[:-2]
    if len(contracted) != 1 or sorted(q_t) != sorted(batch + query + contracted[0]) or \
            sorted(k_t) != sorted(batch + key + contracted[0]):
        raise Reject("einsum scores are not a batched q·k product")
    d = contracted[0]
    return (Operand(q, _order(q_t, batch + query + d)),
            Operand(k, _order(k_t, batch + key + d)), batch, query, key)


def _value_einsum(c: Canon, probs: Node) -> tuple[Operand, Optional[list[int]]]:
    a_t, b_t, out = _parse_einsum(c["equation"], len(c["operands"]))
    a, b = c["operands"]
    if a is probs and b is not probs:
        p_t, v_t, v = a_t, b_t, b
    elif b is probs and a is not probs:
        p_t, v_t, v = b_t, a_t, a
    else:
        raise Reject("probabilities used twice in the value einsum")
    batch, query, key = p_t[:-2], p_t[-2], p_t[-1]
    dv = [ch for ch in v_t if ch not in p_t]
    if len(dv) != 1 or key in out or sorted(v_t) != sorted(batch + key + dv[0]) or \
            sorted(out) != sorted(batch + query + dv[0]):
        raise Reject("einsum with values is not a batched p·v product")
    canon_out = batch + query + dv[0]
    out_perm = [canon_out.index(ch) for ch in out]
    return (Operand(v, _order(v_t, batch + key + dv[0])),
            None if out_perm == list(range(len(out_perm))) else out_perm)


# ----------------------------------------------------------------------------- site

def _forward_to_values(softmax: Node):
    x = softmax
    dropout_p = 0.0
    lead = None  # regrouping from the value layout to the softmax layout, and back
    while True:
        users = list(x.users)
        if len(users) != 1:
            raise Reject("attention probabilities have other users" if users else
                         "softmax output unused")
        u = users[0]
        c = canon(u)
        kind = c.kind if c is not None else None
        if kind == "cast" and c["x"] is x:
            x = u
        elif kind == "reshape" and c["x"] is x and _same_shape(x, u):
            x = u
        elif kind == "reshape" and c["x"] is x and lead is None:
            lead = (list(example_value(x).shape), list(example_value(u).shape),
                    tuple(c["shape"][:-2]))
            x = u
        elif kind == "dropout" and c["x"] is x:
            p, training = c["p"], c["training"]
            if not isinstance(training, bool):
                raise Reject("dropout with a runtime training flag")
            if training and not isinstance(p, (int, float)):
                raise Reject("dropout with a runtime p")
            if training and p > 0:
                if p >= 1 or dropout_p:
                    raise Reject("dropout with p >= 1 or applied twice")
                dropout_p = float(p)
            x = u
        elif kind == "matmul":
            if c["a"] is not x or c["b"] is x:
                raise Reject("probabilities are not the left operand of the value matmul")
            return u, Operand(c["b"]), dropout_p, None, lead
        elif kind == "einsum":
            if lead is not None:
                raise Reject("reshaped probabilities feed an einsum")
            v, out_perm = _value_einsum(c, x)
            return u, v, dropout_p, out_perm, None
        else:
            raise Reject(f"not attention: probabilities feed {_describe(u)}")


def match_softmax(softmax: Node) -> Plan:
    c = canon(softmax)
    x = c["x"]
    ev = example_value(x)
    if not isinstance(ev, torch.Tensor):
        raise Reject("softmax of a non-tensor")
    rank = ev.dim()
    dim = c["dim"]
    if not isinstance(dim, int) or rank == 0 or dim % rank != rank - 1:
        raise Reject("softmax not over the last dim")
    if c["dtype"] is not None and not c["dtype"].is_floating_point:
        raise Reject("softmax to a non-floating dtype")
    if rank < 2 or rank > 4:
        raise Reject(f"scores of rank {rank} (supported: 2 to 4)")
    score, st = _walk_scores(x, _Chain(), tuple(ev.shape), rank)
    out, v, dropout_p, out_perm, view = _forward_to_values(softmax)
    score_rank = example_value(score).dim()
    out_lead = None
    if view is not None:
        # probabilities regrouped on their way to the value matmul: bring v into the softmax's
        # layout and the op's output back into the value matmul's
        soft_shape, value_shape, view_sizes = view
        sizes = _static(soft_shape[:-2])
        if sizes is None and st.lead is not None and st.lead[0] == "unflatten":
            sizes = st.lead[1]
        v.lead = _regroup(value_shape, soft_shape, sizes)
        out_lead = _regroup(soft_shape, value_shape, view_sizes)
        if v.lead is None or out_lead is None:
            raise Reject("probabilities reshaped beyond their leading dims")

    sc = canon(score)
    if sc.kind == "einsum":
        q, k, *_ = _score_einsum(sc)
        spelling = "einsum"
    else:
        if sc.kind == "baddbmm":
            a, bt = sc["b1"], sc["b2"]
            beta, alpha = sc["beta"], sc["alpha"]
            s = scalar(alpha, rank)
            if s is None:
                raise Reject("baddbmm with a tensor alpha")
            bs = scalar(beta, rank)
            if bs is None:
                raise Reject("baddbmm with a tensor beta")
            if not (bs[0] == "const" and bs[1] == 0):
                lead = _bias_lead(sc["input"], st.lead)
                if bs[0] == "const":
                    st.biases.append(BiasTerm(sc["input"], st.const * bs[1], list(st.factors),
                                              lead=lead))
                else:
                    st.biases.append(BiasTerm(sc["input"], st.const,
                                              list(st.factors) + [(bs[1], "mul")], lead=lead))
            st.scale_by(s, "mul")
            spelling = "baddbmm"
        else:
            a, bt = sc["a"], sc["b"]
            spelling = "bmm" if score.target in (torch.bmm, "bmm") else "matmul"
        for operand in (a, bt):
            oev = example_value(operand)
            if not isinstance(operand, Node) or not isinstance(oev, torch.Tensor) or \
                    oev.dim() != score_rank:
                raise Reject("q and k ranks differ from the scores' rank")
        a, fa = _peel_const_scales(a)
        k, fk = _operand_from_transposed(bt)
        q = Operand(a)
        st.const *= fa * fk
    q.lead = k.lead = st.lead
    if sc.kind == "einsum":
        q_node, qf = _peel_const_scales(q.node)
        k_node, kf = _peel_const_scales(k.node)
        q, k = Operand(q_node, q.perm, st.lead), Operand(k_node, k.perm, st.lead)
        st.const *= qf * kf
    if not isinstance(v.node, Node) or \
            example_value(v.node).dim() != example_value(out).dim():
        raise Reject("values' rank differs from the probabilities' rank")
    if st.in_softcap and st.const <= 0:
        raise Reject("non-positive scale under a softcap")

    plan = Plan(spelling=spelling, anchor=softmax, out=out, q=q, k=k, v=v, rank=rank,
                scale=st.const, scale_factors=st.factors, biases=st.biases, masks=st.masks,
                softcap=st.softcap, dropout_p=dropout_p, out_perm=out_perm, out_lead=out_lead,
                score=score)
    check_operands(plan)
    return plan


def match_sdpa(node: Node) -> Plan:
    c = canon(node)
    q, k, v = c["q"], c["k"], c["v"]
    for t in (q, k, v):
        if not isinstance(t, Node) or not isinstance(example_value(t), torch.Tensor):
            raise Reject("sdpa on non-tensor inputs")
    rank = example_value(q).dim()
    if rank < 2 or rank > 4 or example_value(k).dim() != rank or example_value(v).dim() != rank:
        raise Reject(f"sdpa on rank {rank} inputs (supported: 2 to 4, all equal)")
    dropout_p, is_causal, scale = c["dropout_p"], c["is_causal"], c["scale"]
    if not isinstance(dropout_p, (int, float)) or not isinstance(is_causal, bool):
        raise Reject("sdpa with a runtime dropout_p or is_causal")
    mask = c["attn_mask"]
    if mask is not None and (not isinstance(mask, Node) or is_causal):
        raise Reject("sdpa with both attn_mask and is_causal")
    plan = Plan(spelling="sdpa", anchor=node, out=node, q=Operand(q), k=Operand(k),
                v=Operand(v), rank=rank, dropout_p=float(dropout_p), causal=is_causal,
                score=None)
    if scale is None:
        d = example_value(q).shape[-1]
        if isinstance(d, int):
            plan.scale = 1.0 / math.sqrt(d)
        else:
            plan.scale_factors.append(("rsqrt_head_dim", "mul"))
    else:
        s = scalar(scale, 0)
        if s is None:
            raise Reject("sdpa with a non-scalar scale")
        if s[0] == "const":
            plan.scale = s[1]
        else:
            plan.scale_factors.append((s[1], "mul"))
    if mask is not None:
        mev = example_value(mask)
        if not isinstance(mev, torch.Tensor) or mev.dim() > 4:
            raise Reject("sdpa attn_mask of rank > 4")
        if mev.dtype == torch.bool:
            plan.masks.append(MaskTerm(mask, inverted=False))
        else:
            plan.biases.append(BiasTerm(mask))
    check_operands(plan, gqa_allowed=bool(c["enable_gqa"]))
    return plan


# ----------------------------------------------------------------------------- operand checks

def known_equal(a: Any, b: Any) -> bool:
    return statically_known_true(a == b)


def _unrepeat(node: Node, head_axis: int) -> Optional[tuple[Node, Any]]:
    """x, n when node is x with each head repeated n times in place (repeat_interleave or HF's
    repeat_kv expand/reshape)."""
    c = canon(node)
    if c is None:
        return None
    r = example_value(node).dim()
    if c.kind == "repeat_interleave":
        dim = c["dim"]
        if isinstance(dim, int) and dim % r == head_axis and c["repeats"] > 0:
            return c["x"], c["repeats"]
        return None
    if c.kind != "reshape":
        return None
    ce = canon(c["x"])
    if ce is None or ce.kind != "expand":
        return None
    base = ce["x"]
    cb = canon(base)
    x = None
    if cb is not None and cb.kind == "unsqueeze" and isinstance(cb["dim"], int) and \
            cb["dim"] % (r + 1) == head_axis + 1:
        x = cb["x"]
    elif isinstance(base, Node) and base.op == "call_function" and \
            base.target is operator.getitem and isinstance(base.args[1], tuple):
        idx = base.args[1]
        full = slice(None, None, None)
        if len(idx) == r + 1 and idx[head_axis + 1] is None and \
                all(e == full for i, e in enumerate(idx) if i != head_axis + 1):
            x = base.args[0]
        elif len(idx) == head_axis + 2 and idx[head_axis + 1] is None and \
                all(e == full for e in idx[:-1]):
            x = base.args[0]
    if not isinstance(x, Node):
        return None
    xs = list(example_value(x).shape)
    es = list(example_value(c["x"]).shape)
    rs = list(example_value(node).shape)
    if len(xs) != r or len(es) != r + 1:
        return None
    n = es[head_axis + 1]
    same = all(known_equal(rs[i], xs[i]) for i in range(r) if i != head_axis) and \
        all(known_equal(es[i], xs[i]) for i in range(head_axis + 1)) and \
        all(known_equal(es[i + 1], xs[i]) for i in range(head_axis + 1, r)) and \
        known_equal(rs[head_axis], xs[head_axis] * n)
    return (x, n) if same else None


def check_operands(plan: Plan, gqa_allowed: bool = True) -> None:
    r = plan.rank
    evs = [example_value(o.node) for o in (plan.q, plan.k, plan.v)]
    dtypes = {e.dtype for e in evs}
    if len(dtypes) != 1:
        raise Reject("q, k, v dtypes differ: " + ", ".join(str(e.dtype) for e in evs))
    dtype = evs[0].dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise Reject(f"unsupported dtype {dtype}")
    out_ev = example_value(plan.out)
    if not isinstance(out_ev, torch.Tensor) or out_ev.dtype != dtype:
        raise Reject("attention output dtype differs from q's")
    if len({e.device for e in evs}) != 1:
        raise Reject("q, k, v on different devices")
    repeats = None
    # K/V repeated per head (GQA spelled as repeat_interleave or repeat_kv): pass the originals.
    if r >= 3 and plan.k.perm is None and plan.v.perm is None and plan.k.lead is None and \
            plan.v.lead is None:
        rk, rv = _unrepeat(plan.k.node, r - 3), _unrepeat(plan.v.node, r - 3)
        if rk is not None and rv is not None and known_equal(rk[1], rv[1]):
            plan.k, plan.v = Operand(rk[0]), Operand(rv[0])
            repeats = rk[1]
    qs, ks, vs = plan.q.shape(), plan.k.shape(), plan.v.shape()
    if not (len(qs) == len(ks) == len(vs) == r):
        raise Reject("q, k, v ranks differ")
    d, dk, dv = qs[-1], ks[-1], vs[-1]
    if not known_equal(d, dk):
        raise Reject("q and k head dims differ")
    if not known_equal(ks[-2], vs[-2]):
        raise Reject("k and v sequence lengths differ")
    if not known_equal(d, dv):
        raise Reject(f"head dims differ: q/k {d}, v {dv}")
    if not bool(d <= MAX_HEAD_DIM):
        raise Reject(f"head dim {d} > {MAX_HEAD_DIM}")
    for i in range(r - 2):
        head_axis = i == r - 3
        if not known_equal(ks[i], vs[i]):
            raise Reject("k and v batch/head dims differ")
        if known_equal(qs[i], ks[i]):
            continue
        if head_axis and known_equal(ks[i], 1):
            continue  # MQA by broadcasting
        if head_axis and repeats is not None and known_equal(qs[i], ks[i] * repeats):
            continue  # GQA: the heads were repeated in the graph; the op repeats them
        if head_axis and gqa_allowed and plan.spelling == "sdpa" and \
                statically_known_true(qs[i] % ks[i] == 0):
            continue
        raise Reject("q and k/v batch or head dims do not match (broadcast query?)")
    want_out = qs[:-1] + [dv]
    got_out = list(out_ev.shape)
    if plan.out_lead is not None:
        # compare in the op's layout: the value layout's regrouping undone, as for v
        with out_ev.fake_mode:
            got_out = list(apply_lead(out_ev, plan.v.lead).shape)
    if plan.out_perm is not None:
        got_out = [got_out[plan.out_perm.index(i)] for i in range(r)]
    if len(got_out) != r or not all(known_equal(a, b) for a, b in zip(got_out, want_out)):
        raise Reject("attention output shape is not [..., Sq, Dv]")


def head_ratio(plan: Plan) -> Any:
    qs, ks = plan.q.shape(), plan.k.shape()
    if plan.rank < 3:
        return 1
    ratio = qs[-3] // ks[-3]
    if isinstance(ratio, torch.SymInt):
        expr = ratio.node.expr
        return int(expr) if expr.is_number else str(ratio)
    return ratio
