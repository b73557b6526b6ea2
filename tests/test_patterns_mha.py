"""nn.MultiheadAttention reaches the Dynamo graph as one F.multi_head_attention_forward call;
the pass expands it around the fa op (projections, heads, masks, dropout, output projection)."""
import copy

import pytest
import torch
import torch.nn as nn

from tests.test_patterns_harness import compile_fn


class SelfAttention(nn.Module):
    def __init__(self, batch_first, dropout=0.0):
        super().__init__()
        self.mha = nn.MultiheadAttention(24, 3, dropout=dropout, batch_first=batch_first)

    def forward(self, x, attn_mask=None, key_padding_mask=None):
        out, _ = self.mha(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                          need_weights=False)
        return out


class CrossAttention(SelfAttention):
    def forward(self, x, memory):
        return self.mha(x, memory, memory)[0]


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=g)


def _check(model, inputs, train=True):
    torch.manual_seed(0)
    model.train(train)
    reference = copy.deepcopy(model).double()
    compiled, cap = compile_fn(model)
    got = compiled(*inputs)
    want = reference(*[x.double() if x.is_floating_point() else x for x in inputs])
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
    if train:
        got.square().sum().backward()
        want.square().sum().backward()
        for (name, p), pr in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, pr.grad.float(), atol=1e-4, rtol=1e-4, msg=name)
    [site] = cap.sites
    assert site.rewritten, site.reason
    assert "fa.attention_forward" in cap.graphs[0]
    assert "multi_head_attention_forward" not in cap.graphs[0]
    return site


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_self_attention(batch_first, train):
    x = rnd(2, 7, 24) if batch_first else rnd(7, 2, 24)
    site = _check(SelfAttention(batch_first), (x,), train)
    assert (site.variant.mask, site.variant.head_dim) == ("none", 8)
    assert site.variant.scale == pytest.approx(8 ** -0.5)


def test_bool_causal_and_key_padding_masks():
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)   # True = not allowed
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    site = _check(SelfAttention(True), (rnd(2, 7, 24), causal, padding))
    # nn.MultiheadAttention.forward turns bool masks into float ones before the call
    assert site.variant.mask == "additive"


def test_float_mask():
    site = _check(SelfAttention(True), (rnd(2, 7, 24), rnd(7, 7)))
    assert site.variant.mask == "additive"


def test_cross_attention():
    _check(CrossAttention(True), (rnd(2, 5, 24), rnd(2, 9, 24)))


def test_attention_dropout_becomes_op_dropout():
    model = SelfAttention(True, dropout=0.5).train()
    compiled, cap = compile_fn(model)
    x = rnd(2, 7, 24)
    a, b = compiled(x), compiled(x)
    assert not torch.equal(a, b)
    [site] = cap.sites
    assert site.rewritten and site.variant.dropout_p == 0.5


def test_weights_returned_are_left_alone():
    class ReturnsWeights(SelfAttention):
        def forward(self, x):
            return self.mha(x, x, x)

    model = ReturnsWeights(True)
    compiled, cap = compile_fn(model)
    x = rnd(2, 7, 24)
    got, want = compiled(x), model(x)
    torch.testing.assert_close(got, want)
    [site] = cap.sites
    assert not site.rewritten
    assert site.reason == "nn.MultiheadAttention attention weights are used"


class EncoderStack(nn.Module):
    def __init__(self, norm_first, activation):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(24, 3, dim_feedforward=40, dropout=0.0,
                                       activation=activation, batch_first=True,
                                       norm_first=norm_first) for _ in range(2))

    def forward(self, x, mask=None, padding=None):
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=padding)
        return x


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_fast_path_is_expanded(norm_first, activation):
    # Inference under no_grad takes the fused _transformer_encoder_layer_fwd fast path.
    torch.manual_seed(0)
    model = EncoderStack(norm_first, activation).eval()
    reference = copy.deepcopy(model).double()
    compiled, cap = compile_fn(model)
    x = rnd(2, 7, 24)
    with torch.no_grad():
        got = compiled(x)
        want = reference(x.double())
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
    assert [s.rewritten for s in cap.sites] == [True, True], [s.reason for s in cap.sites]
    assert "_transformer_encoder_layer_fwd" not in cap.graphs[0]
    assert cap.graphs[0].count("fa.attention_forward") == 2


def test_encoder_layer_fast_path_with_padding():
    torch.manual_seed(0)
    model = EncoderStack(False, "relu").eval()
    reference = copy.deepcopy(model).double()
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True
    compiled, cap = compile_fn(model)
    x = rnd(2, 7, 24)
    with torch.no_grad():
        got = compiled(x, None, padding)
        want = reference(x.double(), None, padding)
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
    assert all(s.rewritten for s in cap.sites), [s.reason for s in cap.sites]
