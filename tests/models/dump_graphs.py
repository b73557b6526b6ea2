"""Write each zoo family's Dynamo graph(s) to a folder, for reading the real attention spellings.

    python tests/models/dump_graphs.py [/tmp/graphs] [family ...]

One file per family, eval (under no_grad, as inference runs) then train; every graph Dynamo
produced is printed, so a graph break shows up as a second graph.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import zoo  # noqa: E402


def capture(case: zoo.ZooCase, train: bool) -> list[str]:
    graphs: list[str] = []

    def cap(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False, include_stride=True, include_device=False))
        return gm.forward

    torch._dynamo.reset()
    case.model.train(train)
    compiled = torch.compile(case.model, backend=cap)
    if train:
        compiled(*case.inputs)
    else:
        with torch.no_grad():
            compiled(*case.inputs)
    return graphs


def main(argv: list[str]) -> None:
    folder = argv[0] if argv else "/tmp/graphs"
    names = argv[1:] or list(zoo.REGISTRY)
    os.makedirs(folder, exist_ok=True)
    for name in names:
        start = time.time()
        parts = []
        for train in (False, True):
            graphs = capture(zoo.build(name), train)
            mode = "train" if train else "eval"
            for i, g in enumerate(graphs):
                parts.append(f"##### {name} {mode} graph {i + 1}/{len(graphs)}\n{g}\n")
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.write("\n".join(parts))
        print(f"{name}: {sum(p.count('#####') for p in parts)} graphs, {time.time() - start:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
