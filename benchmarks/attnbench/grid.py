"""The benchmark grid of the FlashAttention-3 paper and its FLOP count.

Every point holds the token count (batch x seqlen) and the hidden size (heads x head dim)
fixed, so the memory footprint is the same at every seqlen and only the attention's shape
changes: 16k tokens and hidden 2048 in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_DIMS = (64, 128, 256)
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
TOKENS = 16384
HIDDEN = 2048
DIRECTIONS = ("fwd", "bwd")

# A smoke run: one head dim, a short and a long sequence, both masks and both directions.
QUICK_HEAD_DIMS = (128,)
QUICK_SEQLENS = (1024, 4096)

# FlashAttention-3 paper, Table 2 (the pipelining ablation).
ABLATION_BATCH, ABLATION_SEQLEN, ABLATION_HEADS, ABLATION_HEAD_DIM = 4, 8448, 16, 128

# The backward runs five matmuls of the forward's size where the forward runs two.
BACKWARD_FLOP_FACTOR = 2.5


@dataclass(frozen=True, order=True)
class Shape:
    """One attention problem: q, k, v are [batch, heads, seqlen, head_dim]."""

    head_dim: int
    seqlen: int
    causal: bool
    batch: int
    heads: int


def attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool,
                    direction: str) -> float:
    """FLOPs the paper credits: 4 s^2 d h B forward (two matmuls of 2 s^2 d each per head),
    half of that with a causal mask, and 2.5x the forward for the backward."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    flops = 4.0 * seqlen * seqlen * head_dim * heads * batch
    if causal:
        flops /= 2
    if direction == "bwd":
        flops *= BACKWARD_FLOP_FACTOR
    return flops


def shape_flops(shape: Shape, direction: str) -> float:
    return attention_flops(shape.batch, shape.heads, shape.seqlen, shape.head_dim, shape.causal,
                           direction)


def tflops_per_s(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def make_shape(head_dim: int, seqlen: int, causal: bool, tokens: int = TOKENS,
               hidden: int = HIDDEN) -> Shape:
    if tokens % seqlen or hidden % head_dim:
        raise ValueError(
            f"seqlen {seqlen} must divide tokens {tokens} and head dim {head_dim} must divide "
            f"hidden {hidden}"
        )
    return Shape(head_dim=head_dim, seqlen=seqlen, causal=causal, batch=tokens // seqlen,
                 heads=hidden // head_dim)


def build_grid(head_dims=HEAD_DIMS, seqlens=SEQLENS, causals=(False, True), tokens: int = TOKENS,
               hidden: int = HIDDEN) -> list[Shape]:
    """Shapes in run order: head dim, then mask, then seqlen (so a panel's points run together)."""
    return [make_shape(d, s, c, tokens, hidden) for d in head_dims for c in causals
            for s in seqlens]


def seqlen_label(seqlen: int) -> str:
    return f"{seqlen // 1024}k" if seqlen >= 1024 and seqlen % 1024 == 0 else str(seqlen)


def parse_int_list(text: str) -> tuple[int, ...]:
    """'512,1k,2K,16384' -> (512, 1024, 2048, 16384)."""
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            values.append(int(item[:-1]) * 1024 if item.endswith("k") else int(item))
        except ValueError:
            raise ValueError(f"not an integer: {item!r} (in {text!r})") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected a comma-separated list of positive integers, got {text!r}")
    return tuple(dict.fromkeys(values))


def parse_causal(text: str) -> tuple[bool, ...]:
    choices = {"both": (False, True), "yes": (True,), "true": (True,), "causal": (True,),
               "no": (False,), "false": (False,), "none": (False,)}
    try:
        return choices[text.strip().lower()]
    except KeyError:
        raise ValueError(f"--causal must be both, yes or no, got {text!r}") from None


def parse_directions(text: str) -> tuple[str, ...]:
    dirs = tuple(dict.fromkeys(d.strip() for d in text.split(",") if d.strip()))
    bad = [d for d in dirs if d not in DIRECTIONS]
    if bad or not dirs:
        raise ValueError(f"--direction takes fwd and/or bwd, got {text!r}")
    return dirs
