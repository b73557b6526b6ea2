"""Helpers of ``benchmarks/attention.py``: the FlashAttention-3 paper's attention benchmark.

Pure pieces (grid and FLOP count, result records, tables, JSON/markdown writers, chart) import
nothing heavy so the CPU tests and ``--help`` stay fast; the GPU path lives in ``impls``,
``timing`` and ``runner``.
"""
