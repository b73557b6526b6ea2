"""`fa_inductor.optimize`: the opt-in decorator, its options, and its errors."""
import pytest
import torch

import fa_inductor
from tests._attention_zoo import attention, qkv


def test_decorator_without_arguments():
    torch._dynamo.reset()
    f = fa_inductor.optimize(attention, compiler="eager")
    q, k, v = qkv()
    torch.testing.assert_close(f(q, k, v), attention(q, k, v))


def test_decorator_with_arguments():
    torch._dynamo.reset()

    @fa_inductor.optimize(compiler="aot_eager", fullgraph=True)
    def attn(q, k, v):
        return attention(q, k, v)

    q, k, v = qkv()
    torch.testing.assert_close(attn(q, k, v), attention(q, k, v))


def test_compiles_a_module():
    torch._dynamo.reset()

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return attention(q, k, v)

    compiled = fa_inductor.optimize(Attn(), compiler="aot_eager")
    q, k, v = qkv()
    torch.testing.assert_close(compiled(q, k, v), attention(q, k, v))


def test_dynamic_shapes_compile_once_across_sequence_lengths():
    torch._dynamo.reset()
    f = fa_inductor.optimize(attention, compiler="aot_eager", dynamic=True, fullgraph=True)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for s in (17, 40, 65):
        q, k, v = qkv(s=s, seed=s)
        torch.testing.assert_close(f(q, k, v), attention(q, k, v))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before == 1


def test_fullgraph_is_honoured():
    torch._dynamo.reset()

    def breaks(q, k, v):
        torch._dynamo.graph_break()
        return attention(q, k, v)

    with pytest.raises(Exception):
        fa_inductor.optimize(breaks, compiler="eager", fullgraph=True)(*qkv())


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"fp9": True}, ValueError, "unknown fa_inductor option"),
        ({"compiler": "tvm"}, ValueError, "must be one of"),
        ({"dynamic": "yes"}, TypeError, "dynamic must be"),
        ({"fullgraph": 1}, TypeError, "fullgraph must be"),
        ({"mode": 3}, TypeError, "mode must be"),
        ({"fp8": True}, NotImplementedError, "fp8"),
    ],
)
def test_bad_options_fail_at_decoration(kwargs, error, words):
    with pytest.raises(error, match=words):
        fa_inductor.optimize(attention, **kwargs)


def test_not_a_callable():
    with pytest.raises(TypeError, match="function or module"):
        fa_inductor.optimize(42)
