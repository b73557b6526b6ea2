"""One table from the many spellings of a torch-level op to a canonical op with named arguments.

Dynamo graphs keep the user's spelling: ``x.transpose(-2, -1)`` is a ``call_method``,
``torch.transpose(x, 2, 3)`` a ``call_function``, ``x.mT`` a ``getattr`` call and ``x @ y``
``operator.matmul``.  The matcher never looks at targets; it asks ``canon(node)`` and gets one
``Canon`` per meaning, with arguments bound by name (defaults filled in).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.fx import Node


@dataclasses.dataclass
class Canon:
    kind: str
    args: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


def example_value(x: Any) -> Any:
    """A node's traced value (fake tensor, SymInt, ...); constants are their own value."""
    if isinstance(x, Node):
        return x.meta.get("example_value")
    return x


def rank_of(x: Any) -> Optional[int]:
    ev = example_value(x)
    return ev.dim() if isinstance(ev, torch.Tensor) else None


def _permute_from_dims(x: Node, dims: tuple) -> Optional[list[int]]:
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    r = rank_of(x)
    if r is None or len(dims) != r or not all(isinstance(d, int) for d in dims):
        return None
    perm = [d % r for d in dims]
    return perm if sorted(perm) == list(range(r)) else None


def _swap(x: Node, a: Any, b: Any) -> Optional[list[int]]:
    r = rank_of(x)
    if r is None or not isinstance(a, int) or not isinstance(b, int):
        return None
    perm = list(range(r))
    a, b = a % r, b % r
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def _bind(names: tuple[str, ...], defaults: dict[str, Any]):
    """Binder for a signature given as names (positional order) plus defaults."""
    def bind(args: tuple, kwargs: dict) -> Optional[dict[str, Any]]:
        if len(args) > len(names) or any(k not in names for k in kwargs):
            return None
        out = dict(defaults)
        out.update(zip(names, args))
        out.update(kwargs)
        if any(n not in out for n in names):
            return None
        return out
    return bind


def _softmax_args(args, kwargs):
    # F.softmax(input, dim=None, _stacklevel=3, dtype=None); torch.softmax(input, dim, dtype)
    b = _bind(("x", "dim", "_stacklevel", "dtype"), {"dim": None, "_stacklevel": 3,
                                                    "dtype": None})(args, kwargs)
    return b


def _torch_softmax_args(args, kwargs):
    return _bind(("x", "dim", "dtype"), {"dtype": None})(args, kwargs)


def _binary(args, kwargs):
    renamed = {({"input": "a", "other": "b"}.get(k, k)): v for k, v in kwargs.items()}
    return _bind(("a", "b", "alpha"), {"alpha": 1})(args, renamed)


def _div_args(args, kwargs):
    renamed = {({"input": "a", "other": "b"}.get(k, k)): v for k, v in kwargs.items()}
    b = _bind(("a", "b", "rounding_mode"), {"rounding_mode": None})(args, renamed)
    return b if b is not None and b["rounding_mode"] is None else None


def _to_args(args, kwargs):
    # x.to(dtype) / x.to(other) / x.to(device, dtype): a cast when the result keeps shape and
    # device; the matcher checks that on example values.
    return {"x": args[0]}


def _dropout_args(args, kwargs):
    return _bind(("x", "p", "training", "inplace"), {"p": 0.5, "training": True,
                                                     "inplace": False})(args, kwargs)


def _torch_dropout_args(args, kwargs):
    return _bind(("x", "p", "training"), {})(
        args, {("training" if k == "train" else k): v for k, v in kwargs.items()})


def _sdpa_args(args, kwargs):
    return _bind(("q", "k", "v", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
                 {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                  "enable_gqa": False})(args, kwargs)


def _einsum_args(args, kwargs):
    if kwargs or not args or not isinstance(args[0], str):
        return None
    ops = args[1:]
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = tuple(ops[0])
    return {"equation": args[0].replace(" ", ""), "operands": tuple(ops)}


def _baddbmm_args(args, kwargs):
    return _bind(("input", "b1", "b2", "beta", "alpha"), {"beta": 1, "alpha": 1})(
        args, {({"batch1": "b1", "batch2": "b2"}.get(k, k)): v for k, v in kwargs.items()})


def _masked_fill_args(args, kwargs):
    return _bind(("x", "mask", "value"), {})(args, kwargs)


def _where_args(args, kwargs):
    b = _bind(("cond", "a", "b"), {})(
        args, {({"condition": "cond", "input": "a", "other": "b"}.get(k, k)): v
               for k, v in kwargs.items()})
    return b


def _repeat_interleave_args(args, kwargs):
    b = _bind(("x", "repeats", "dim", "output_size"), {"dim": None, "output_size": None})(
        args, kwargs)
    return b if b is not None and isinstance(b["repeats"], int) else None


def _variadic_shape(args, kwargs):
    if kwargs or len(args) < 2:
        return None
    shape = args[1:]
    if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size)):
        shape = tuple(shape[0])
    return {"x": args[0], "shape": tuple(shape)}


def _unary(args, kwargs):
    return {"x": args[0]} if len(args) == 1 and not kwargs else None


def _unsqueeze_args(args, kwargs):
    return _bind(("x", "dim"), {})(args, kwargs)


def _permute_args_fn(args, kwargs):
    if kwargs or len(args) < 2:
        return None
    perm = _permute_from_dims(args[0], tuple(args[1:]))
    return {"x": args[0], "perm": perm} if perm is not None else None


def _torch_permute_args(args, kwargs):
    b = _bind(("x", "dims"), {})(args, kwargs)
    if b is None:
        return None
    perm = _permute_from_dims(b["x"], tuple(b["dims"]))
    return {"x": b["x"], "perm": perm} if perm is not None else None


def _transpose_args(args, kwargs):
    b = _bind(("x", "dim0", "dim1"), {})(args, kwargs)
    if b is None:
        return None
    perm = _swap(b["x"], b["dim0"], b["dim1"])
    return {"x": b["x"], "perm": perm} if perm is not None else None


def _getattr_args(args, kwargs):
    x, name = args
    if name == "mT":
        perm = _swap(x, -2, -1)
        return ("permute", {"x": x, "perm": perm}) if perm is not None else None
    if name == "T" and rank_of(x) == 2:
        return ("permute", {"x": x, "perm": [1, 0]})
    return None


# kind, binder.  Keys: ("call_function", target) or ("call_method", name).
_TABLE: dict[tuple[str, Any], tuple[str, Callable]] = {}


def _reg(kind: str, binder: Callable, functions=(), methods=()):
    for f in functions:
        _TABLE[("call_function", f)] = (kind, binder)
    for m in methods:
        _TABLE[("call_method", m)] = (kind, binder)


_ab = _bind(("a", "b"), {})
_reg("matmul", _ab, (torch.matmul, operator.matmul, torch.bmm, torch.Tensor.matmul),
     ("matmul", "bmm", "__matmul__"))
_reg("einsum", _einsum_args, (torch.einsum, torch.functional.einsum))
_reg("baddbmm", _baddbmm_args, (torch.baddbmm,), ("baddbmm",))
_reg("softmax", _softmax_args, (F.softmax,))
_reg("softmax", _torch_softmax_args, (torch.softmax, torch.Tensor.softmax), ("softmax",))
# In-place spellings (``scores /= d``, ``scores.mul_(s)``) count as their pure forms: the
# matcher only folds a node when the chain value it updates has no other user.
_reg("mul", _binary, (operator.mul, torch.mul, torch.multiply, operator.imul),
     ("mul", "multiply", "__mul__", "mul_"))
_reg("div", _div_args, (operator.truediv, torch.div, torch.true_divide, torch.divide,
                        operator.itruediv), ("div", "true_divide", "divide", "__truediv__", "div_"))
_reg("add", _binary, (operator.add, torch.add, operator.iadd), ("add", "__add__", "add_"))
_reg("sub", _binary, (operator.sub, torch.sub, torch.subtract, operator.isub),
     ("sub", "subtract", "__sub__", "sub_"))
_reg("neg", _unary, (operator.neg, torch.neg, torch.negative), ("neg", "negative", "__neg__"))
_reg("tanh", _unary, (torch.tanh, F.tanh), ("tanh",))
_reg("masked_fill", _masked_fill_args, (torch.masked_fill,), ("masked_fill", "masked_fill_"))
_reg("where", _where_args, (torch.where,), ("where",))
_reg("cast", _unary, (), ("float", "half", "bfloat16", "double", "contiguous"))
_reg("cast", _to_args, (), ("to", "type_as", "type"))
_reg("dropout", _dropout_args, (F.dropout,))
_reg("dropout", _torch_dropout_args, (torch.dropout,))
_reg("sdpa", _sdpa_args, (F.scaled_dot_product_attention,))
_reg("permute", _permute_args_fn, (), ("permute",))
_reg("permute", _torch_permute_args, (torch.permute,))
_reg("permute", _transpose_args, (torch.transpose, torch.swapaxes, torch.swapdims),
     ("transpose", "swapaxes", "swapdims"))
_reg("repeat_interleave", _repeat_interleave_args, (torch.repeat_interleave,),
     ("repeat_interleave",))
_reg("expand", _variadic_shape, (), ("expand",))
_reg("reshape", _variadic_shape, (), ("reshape", "view"))
_reg("reshape", lambda a, k: _bind(("x", "shape"), {})(a, k), (torch.reshape,))
_reg("unsqueeze", _unsqueeze_args, (torch.unsqueeze,), ("unsqueeze",))
_reg("logical_not", _unary, (torch.logical_not, operator.invert, torch.bitwise_not),
     ("logical_not", "__invert__", "bitwise_not"))


def canon(node: Any) -> Optional[Canon]:
    """The canonical op a node computes, or None for anything the matcher need not understand."""
    if not isinstance(node, Node) or node.op not in ("call_function", "call_method"):
        return None
    if node.op == "call_function" and node.target is getattr:
        r = _getattr_args(node.args, node.kwargs)
        return Canon(*r) if r is not None else None
    try:
        entry = _TABLE.get((node.op, node.target))
    except TypeError:  # unhashable target
        return None
    if entry is None:
        return None
    kind, binder = entry
    try:
        bound = binder(tuple(node.args), dict(node.kwargs))
    except (TypeError, ValueError, IndexError):
        return None
    if bound is None:
        return None
    if kind == "cast":
        ev_in, ev_out = example_value(bound["x"]), example_value(node)
        if not (isinstance(ev_in, torch.Tensor) and isinstance(ev_out, torch.Tensor)
                and ev_in.shape == ev_out.shape and ev_in.device == ev_out.device
                and ev_out.dtype.is_floating_point and ev_in.dtype.is_floating_point):
            return None
    return Canon(kind, bound)
