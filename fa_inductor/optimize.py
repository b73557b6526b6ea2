"""``fa_inductor.optimize``: the opt-in decorator around ``torch.compile(backend="flash")``."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .backend import FlashBackend
from .options import to_compile_options, make_flash_options

_COMPILE_KEYS = {"dynamic", "fullgraph", "mode"}


def optimize(model: Optional[Callable] = None, /, **options: Any) -> Any:
    """Compile a function or module with the `flash` backend.

    Use as ``@fa_inductor.optimize``, ``@fa_inductor.optimize(fullgraph=True)`` or
    ``fa_inductor.optimize(model, dynamic=True)``.  Options: ``fp8`` (bool), ``dynamic``
    (bool or None), ``fullgraph`` (bool), ``mode`` (an Inductor mode name), ``compiler``
    ("inductor", "aot_eager", "eager"), ``rewrite`` (bool), ``inductor`` (a dict of Inductor
    config options).  Unknown names and bad values raise at once.
    """
    if model is not None and not callable(model):
        raise TypeError(f"fa_inductor.optimize expects a function or module, got {type(model).__name__}")
    dynamic = options.pop("dynamic", None)
    fullgraph = options.pop("fullgraph", False)
    mode = options.pop("mode", None)
    inductor = options.pop("inductor", None)
    if dynamic is not None and not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be True, False or None, got {dynamic!r}")
    if not isinstance(fullgraph, bool):
        raise TypeError(f"fullgraph must be a bool, got {fullgraph!r}")
    if mode is not None and not isinstance(mode, str):
        raise TypeError(f"mode must be a string, got {mode!r}")
    if inductor is not None and not isinstance(inductor, dict):
        raise TypeError(f"inductor must be a dict of Inductor options, got {type(inductor).__name__}")
    try:
        flash = make_flash_options(**options)
    except ValueError as e:
        known = sorted(_COMPILE_KEYS | {"inductor", "compiler", "rewrite", "fp8"})
        raise ValueError(f"{e.args[0].split(';')[0]}; fa_inductor.optimize knows: {', '.join(known)}") from None
    backend = FlashBackend(mode=mode, options=to_compile_options(flash, inductor))

    def wrap(fn: Callable) -> Any:
        if not callable(fn):
            raise TypeError(f"fa_inductor.optimize expects a function or module, got {type(fn).__name__}")
        return torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=fullgraph)

    return wrap(model) if model is not None else wrap
