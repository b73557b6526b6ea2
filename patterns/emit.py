"""Insert nodes into a Dynamo graph with the metadata later passes rely on.

Every new node gets ``meta["example_value"]`` computed by running its target on the inputs'
example values under the graph's own fake mode (a different fake mode raises "Mixing fake
modes" inside AOTAutograd), plus the replaced node's stack trace and module stack so errors and
profiles still point at the user's line.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

from torch.fx import Graph, Node
from torch.fx.node import map_aggregate

_COPIED_META = ("stack_trace", "nn_module_stack", "source_fn_stack")


def fake_mode_of(graph: Graph):
    for n in graph.nodes:
        ev = n.meta.get("example_value")
        mode = getattr(ev, "fake_mode", None)
        if mode is not None:
            return mode
    return None


class Emitter:
    """Creates nodes before ``anchor``; ``rollback()`` erases all of them (newest first)."""

    def __init__(self, graph: Graph, anchor: Node, meta_from: Node):
        self.graph = graph
        self.anchor = anchor
        self.meta_from = meta_from
        self.fake_mode = fake_mode_of(graph)
        self.created: list[Node] = []

    def _example(self, target: Any, args: tuple, kwargs: dict, method: bool) -> Any:
        def ev(a):
            return a.meta.get("example_value") if isinstance(a, Node) else a
        eargs = map_aggregate(args, ev)
        ekwargs = map_aggregate(kwargs, ev)
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        with ctx:
            if method:
                return getattr(eargs[0], target)(*eargs[1:], **ekwargs)
            return target(*eargs, **ekwargs)

    def _node(self, op: str, target: Any, args: tuple, kwargs: Optional[dict]) -> Node:
        kwargs = dict(kwargs or {})
        value = self._example(target, args, kwargs, method=(op == "call_method"))
        with self.graph.inserting_before(self.anchor):
            node = self.graph.create_node(op, target, tuple(args), kwargs)
        self.created.append(node)
        node.meta["example_value"] = value
        for key in _COPIED_META:
            if key in self.meta_from.meta:
                node.meta[key] = self.meta_from.meta[key]
        return node

    def call(self, target: Any, *args: Any, **kwargs: Any) -> Node:
        return self._node("call_function", target, args, kwargs)

    def method(self, name: str, *args: Any, **kwargs: Any) -> Node:
        return self._node("call_method", name, args, kwargs)

    def rollback(self) -> None:
        for node in reversed(self.created):
            if not node.users:
                self.graph.erase_node(node)
        self.created.clear()


def erase_dead(graph: Graph, roots: list[Node]) -> None:
    """Erase ``roots`` and, transitively, their inputs once nothing uses them."""
    work = list(roots)
    erased: set[Node] = set()
    while work:
        node = work.pop()
        if node in erased or node.users or node.op not in ("call_function", "call_method"):
            continue
        if node.is_impure():
            continue
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        erased.add(node)
        work.extend(inputs)
