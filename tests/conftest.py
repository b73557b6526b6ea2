"""Fixtures shared by the CPU tests and the GPU tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def redispatched(monkeypatch):
    """The keysets of the redispatches that fa.attention_forward's autograd kernel makes: none
    when it calls the implementation itself."""
    from fa_inductor.ops import library

    calls = []
    real = library._FORWARD

    class Spy:
        def redispatch(self, keyset, *args):
            calls.append(keyset)
            return real.redispatch(keyset, *args)

    monkeypatch.setattr(library, "_FORWARD", Spy())
    return calls
