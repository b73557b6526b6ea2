"""fa_inductor: a torch.compile backend that finds attention in unmodified models.

``torch.compile(model, backend="flash")`` (no import needed), or ``fa_inductor.optimize``;
``fa_inductor.explain(model, *inputs)`` says which attention sites were rewritten.
"""
from . import ops  # noqa: F401  (registers torch.ops.fa.*)
from .explain import ExplainReport, explain
from .optimize import optimize

__all__ = ["optimize", "explain", "ExplainReport"]
__version__ = "0.1.0"
