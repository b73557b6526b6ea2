"""Is a mask a function of positions only, and if so which (causal / sliding window)?

A mask may become the op's ``causal``/``window`` flags only when it provably depends on nothing
but sequence lengths: its whole producer subgraph is built inside the graph from sizes and
constants through pure, position-only ops (arange, ones, tril, comparisons, slicing, ...).
Anything fed by tensor data (a buffer placeholder, ``cache_position``, a padding mask) stays a
bias, which is always correct.

Classification evaluates that subgraph for real on CPU at the traced sizes and, under dynamic
shapes, again with every size symbol moved, then accepts only a rule (alignment, window bounds)
that describes the mask at every evaluation.  The rule is what the kernels implement:
``j - (i + off)`` in ``[-window_left, window_right]``, ``off`` 0 (top-left) or ``Sk - Sq``
(bottom-right).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Optional

import torch
from torch.fx import Node
from torch.fx.node import map_aggregate

# Evaluating a mask materialises it (and its intermediates) on CPU at the traced sizes; a mask
# with an intermediate over this many bytes is left as a bias, which is correct, only slower.
# 1 GiB covers a float32 mask of 16k x 16k (a long-context model's training length).
_MAX_BYTES = 1 << 30


def _too_big(t: torch.Tensor) -> bool:
    return t.numel() * t.element_size() > _MAX_BYTES

_POSITION_FUNCTIONS = {
    torch.arange, torch.ones, torch.zeros, torch.full, torch.empty, torch.tril, torch.triu,
    torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.where, torch.logical_and,
    torch.logical_or, torch.logical_not, torch.logical_xor, torch.bitwise_and,
    torch.bitwise_or, torch.bitwise_not, torch.abs, torch.neg, torch.add, torch.sub,
    torch.mul, torch.masked_fill, torch.unsqueeze, torch.reshape, torch.broadcast_to,
    torch.minimum, torch.maximum, torch.clamp, torch.ones_like, torch.zeros_like,
    torch.full_like, torch.diff, torch.cumsum, torch.cat, torch.stack, torch.clamp_min,
    torch.clamp_max, torch.remainder, torch.floor_divide, torch.bitwise_xor,
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    operator.and_, operator.or_, operator.xor, operator.invert, operator.not_, operator.neg,
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
    operator.getitem, operator.truediv, abs,
}
_POSITION_METHODS = {
    "tril", "triu", "bool", "int", "long", "float", "half", "bfloat16", "double", "to",
    "type_as", "view", "reshape", "expand", "expand_as", "unsqueeze", "squeeze", "contiguous",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or",
    "masked_fill", "__getitem__", "add", "sub", "mul", "neg", "abs", "clamp", "__and__",
    "__or__", "__invert__", "transpose", "permute", "flip", "cumsum", "diff", "new_ones",
    "new_zeros", "new_full", "new_empty", "bitwise_and", "bitwise_or", "bitwise_not",
    "clamp_min", "clamp_max", "sum", "any", "all", "where", "__xor__", "sub_", "add_",
    "__rsub__", "__radd__", "__rmul__", "fill_", "masked_fill_", "repeat", "repeat_interleave",
    "narrow", "select", "clone",
}
# Ops whose tensor inputs contribute only their shape (and dtype), never their values.
_SHAPE_ONLY = {torch.ones_like, torch.zeros_like, torch.full_like}

_NEG_FILLS = {float("-inf")} | {float(torch.finfo(dt).min) for dt in
                                (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


@dataclasses.dataclass(frozen=True)
class PositionMask:
    """What a position-only mask means in the op's terms."""

    causal: bool
    bottom_right: bool
    window_left: int
    window_right: int

    @property
    def is_noop(self) -> bool:
        return not self.causal and self.window_left < 0 and self.window_right < 0

    @property
    def kind(self) -> str:
        if self.is_noop:
            return "none"
        return "window" if self.window_left >= 0 or self.window_right > 0 else "causal"


def is_negative_fill(value: Any) -> bool:
    """-inf or a dtype's most negative finite value (how HF and others spell "masked")."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        float(value) in _NEG_FILLS


def _symbols(ev: Any) -> set:
    if isinstance(ev, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return set(ev.node.expr.free_symbols)
    if isinstance(ev, torch.Tensor):
        out: set = set()
        for s in ev.shape:
            out |= _symbols(s)
        return out
    return set()


def _size_value(ev: Any, assignment: dict) -> Any:
    if isinstance(ev, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        expr = ev.node.expr.xreplace(assignment)
        if isinstance(ev, torch.SymInt):
            return int(expr)
        if isinstance(ev, torch.SymBool):
            return bool(expr)
        return float(expr)
    return ev


class _NotPositional(Exception):
    pass


def _position_subgraph(root: Node) -> list[Node]:
    """Nodes of root's producer subgraph in topological order; raises if data flows in."""
    seen: dict[Node, None] = {}

    def visit(n: Node) -> None:
        if n in seen:
            return
        ev = n.meta.get("example_value")
        if isinstance(ev, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
            seen[n] = None  # a size: a leaf, evaluated from its symbolic expression
            return
        if n.op == "call_function" and n.target in _POSITION_FUNCTIONS:
            pass
        elif n.op == "call_method" and n.target in _POSITION_METHODS:
            pass
        else:
            raise _NotPositional(n)
        if not isinstance(ev, torch.Tensor) or (not _symbols(ev) and _too_big(ev)):
            raise _NotPositional(n)
        shape_only = n.op == "call_function" and n.target in _SHAPE_ONLY
        for a in n.all_input_nodes:
            if shape_only and a is n.args[0]:
                continue
            visit(a)
        seen[n] = None

    visit(root)
    return list(seen)


def _evaluate(root: Node, nodes: list[Node], assignment: dict) -> torch.Tensor:
    env: dict[Node, Any] = {}

    def val(a):
        if isinstance(a, Node):
            if a in env:
                return env[a]
            # the shape-only input of ones_like & co: an empty stand-in of the evaluated shape
            ev = a.meta["example_value"]
            return torch.empty([_size_value(s, assignment) for s in ev.shape], dtype=ev.dtype)
        if isinstance(a, torch.device):
            return torch.device("cpu")
        return a

    for n in nodes:
        ev = n.meta.get("example_value")
        if not isinstance(ev, torch.Tensor):
            env[n] = _size_value(ev, assignment)
            continue
        args = map_aggregate(n.args, val)
        kwargs = dict(map_aggregate(n.kwargs, val))
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        if n.op == "call_method":
            if n.target == "to":
                args = tuple(a for a in args if not isinstance(a, (torch.device, str)))
            env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
        else:
            env[n] = n.target(*args, **kwargs)
        if isinstance(env[n], torch.Tensor) and _too_big(env[n]):
            raise _NotPositional(n)
    return env[root]


def _rules(keep: torch.Tensor, sq: int, sk: int) -> set[tuple]:
    """Every (bottom_right, window_left, window_right) that reproduces a [.., sq, sk] keep mask.

    Works on each row's first and last kept key and count (vectors of sq), never on an
    [sq, sk] index grid: a 16k x 16k mask is 256 MB as bool but would be 2 GB of int64 indices.
    A band rule holds iff every row keeps exactly the keys of its clipped band.
    """
    if keep.dim() < 2:
        keep = keep.reshape((1,) * (2 - keep.dim()) + tuple(keep.shape))
    keep = torch.broadcast_to(keep, keep.shape[:-2] + (sq, sk)).reshape(-1, sq, sk)
    if not bool((keep == keep[:1]).all()):
        return set()  # differs between batch/head slices: not a rule of positions
    keep = keep[0]
    count = keep.sum(1)
    nonempty = count > 0
    if not bool(nonempty.any()):
        return set()
    as_bytes = keep.to(torch.uint8)
    first = as_bytes.argmax(1)  # first kept key per row (0 for an empty row)
    last = (sk - 1) - as_bytes.flip(1).argmax(1)
    i = torch.arange(sq)
    out = set()
    for bottom_right in (False, True):
        off = (sk - sq) if bottom_right else 0
        # d = j - (i + off): the kept d range over all rows, and over the whole grid
        lo = int((first - i - off)[nonempty].min())
        hi = int((last - i - off)[nonempty].max())
        d_min, d_max = -(sq - 1) - off, (sk - 1) - off
        band_first = (i + off + lo).clamp(min=0)
        band_last = (i + off + hi).clamp(max=sk - 1)
        band_count = (band_last - band_first + 1).clamp(min=0)
        # A row keeping band_count keys, the first and last of them at the band's ends, keeps
        # the whole band and nothing else.
        if not bool((count == band_count).all()):
            continue
        ends = nonempty.logical_not() | ((first == band_first) & (last == band_last))
        if not bool(ends.all()):
            continue
        wl = -1 if lo == d_min else -lo
        wr = -1 if hi == d_max else hi
        if (wl != -1 and lo > 0) or (wr != -1 and hi < 0):
            continue  # a window that excludes the diagonal: the op cannot state it
        out.add((bottom_right, wl, wr))
    return out


def classify(mask: Node, score: Any, *, inverted: bool = False, additive: bool = False,
             cache: Optional[dict] = None) -> Optional[PositionMask]:
    """The position rule that ``mask`` implements for scores ``score``, or None.

    ``inverted``: True marks masked-out positions (masked_fill style); ``additive``: a float mask
    of 0 and -inf/finfo.min added to the scores.  ``cache``: a dict shared by the sites of one
    graph (a model's layers share one mask).
    """
    if not isinstance(mask, Node):
        return None
    if cache is None:
        return _classify(mask, score, inverted, additive)
    key = (mask, inverted, additive,
           tuple(str(s) for s in score.meta["example_value"].shape[-2:]))
    if key not in cache:
        cache[key] = _classify(mask, score, inverted, additive)
    return cache[key]


def _classify(mask: Node, score: Any, inverted: bool, additive: bool) -> Optional[PositionMask]:
    try:
        nodes = _position_subgraph(mask)
    except _NotPositional:
        return None
    score_ev = score.meta.get("example_value")
    symbols = _symbols(score_ev)
    for n in nodes:
        symbols |= _symbols(n.meta.get("example_value"))
    assignments = [{}]
    if symbols:
        shape_env = next(iter(_syms_with_env(score_ev, nodes)), None)
        if shape_env is None:
            return None
        values = getattr(shape_env, "backed_var_to_val", None) or shape_env.var_to_val
        hints = {s: values.get(s) for s in symbols}
        if any(v is None for v in hints.values()):
            return None
        # Distinct shifts per symbol, so that differences such as Sk - Sq move too.
        ordered = sorted(hints, key=str)
        assignments = [{s: int(hints[s]) for s in ordered},
                       {s: int(hints[s]) + 3 * (i + 1) for i, s in enumerate(ordered)},
                       {s: int(hints[s]) + 5 * (len(ordered) - i) for i, s in
                        enumerate(ordered)}]
    candidates: Optional[set] = None
    for assignment in assignments:
        try:
            with torch.no_grad():
                value = _evaluate(mask, nodes, assignment)
        except Exception:  # noqa: BLE001  (any failure: not provably positional)
            return None
        if not isinstance(value, torch.Tensor):
            return None
        if additive:
            if not value.dtype.is_floating_point:
                return None
            masked = torch.isneginf(value)
            for fill in _NEG_FILLS:
                masked |= value == fill
            if not bool(((value == 0) | masked).all()):
                return None
            keep = ~masked
            if not bool(keep.any(-1).all()):
                # a row with every key at finfo.min is a uniform average in eager, not the
                # op's empty row: only rules that leave every row a key are exact
                return None
        else:
            if value.dtype != torch.bool:
                return None
            keep = ~value if inverted else value
        sq = _size_value(score_ev.shape[-2], assignment)
        sk = _size_value(score_ev.shape[-1], assignment)
        rules = _rules(keep, sq, sk)
        candidates = rules if candidates is None else candidates & rules
        if not candidates:
            return None
    # Several rules can describe one mask (tril(Sk - Sq) is bottom-right causal and a top-left
    # window): prefer plain causal, then fewer bounds, then top-left.
    bottom_right, wl, wr = min(candidates, key=lambda r: (r[2] not in (-1, 0), r[1] != -1,
                                                         r[2] == -1, r[0]))
    causal = wr == 0
    if wl < 0 and wr < 0:
        return PositionMask(False, False, -1, -1)
    return PositionMask(causal, bottom_right, wl, -1 if causal else wr)


def _syms_with_env(score_ev: Any, nodes: list[Node]):
    for ev in [score_ev] + [n.meta.get("example_value") for n in nodes]:
        items = list(ev.shape) if isinstance(ev, torch.Tensor) else [ev]
        for s in items:
            if isinstance(s, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                yield s.node.shape_env


_AND_FUNCTIONS = {operator.and_, torch.logical_and, torch.bitwise_and}
_AND_METHODS = {"__and__", "logical_and", "bitwise_and"}
_PASS_METHODS = {"to", "expand", "contiguous"}


def conjuncts(node: Any) -> list:
    """The leaves of ``a & b & ...`` (through device moves and broadcasts), else [node]."""
    if not isinstance(node, Node):
        return [node]
    ev = node.meta.get("example_value")
    if not isinstance(ev, torch.Tensor) or ev.dtype != torch.bool:
        return [node]
    if (node.op == "call_function" and node.target in _AND_FUNCTIONS) or \
            (node.op == "call_method" and node.target in _AND_METHODS):
        if len(node.args) == 2 and not node.kwargs:
            return conjuncts(node.args[0]) + conjuncts(node.args[1])
    if node.op == "call_method" and node.target in _PASS_METHODS and node.args:
        inner = node.args[0]
        iev = inner.meta.get("example_value") if isinstance(inner, Node) else None
        if isinstance(iev, torch.Tensor) and iev.dtype == torch.bool:
            return conjuncts(inner)
    return [node]


def negated(node: Any) -> Optional[Node]:
    """x for a node computing ~x / logical_not(x) of a bool x, else None."""
    if isinstance(node, Node) and len(node.args) == 1 and (
            (node.op == "call_function" and node.target in (operator.invert,
                                                            torch.logical_not,
                                                            torch.bitwise_not)) or
            (node.op == "call_method" and node.target in ("logical_not", "__invert__",
                                                          "bitwise_not"))):
        x = node.args[0]
        ev = x.meta.get("example_value") if isinstance(x, Node) else None
        if isinstance(ev, torch.Tensor) and ev.dtype == torch.bool:
            return x
    return None

