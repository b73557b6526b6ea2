"""Pattern passes: find attention in a Dynamo graph and rewrite it to the fa ops.

``rewrite.rewrite_attention`` drives one pass per graph.  Modules, one job each:
``normalize`` (spellings → canonical ops), ``matcher`` (one softmax site → a Plan, or a
reason), ``masks`` (position-only masks → causal/window flags), ``emit`` (node insertion with
fake-mode metadata), ``mha`` / ``encoder_layer`` (fused nn.MultiheadAttention /
TransformerEncoderLayer calls expanded around the op), ``report`` (what was found).
"""
from .report import RewriteReport, Site, Variant
from .rewrite import rewrite_attention

__all__ = ["rewrite_attention", "RewriteReport", "Site", "Variant"]
