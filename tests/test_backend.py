"""`backend="flash"`: found by name, rewrites attention, trains through our backward op."""
import subprocess
import sys
import textwrap

import pytest
import torch

import fa_inductor  # noqa: F401
from tests._attention_zoo import attention, qkv


class OpLog:
    """The ops that ran, as the profiler saw them (a dispatch mode would stop Dynamo)."""

    def __enter__(self):
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        self.names = {e.key.replace("::", ".") for e in self._prof.key_averages()}


def test_backend_is_found_by_name_without_importing_fa_inductor():
    code = textwrap.dedent(
        """
        import sys, torch
        def attn(q, k, v):
            return (q @ k.transpose(-2, -1) * 0.25).softmax(-1) @ v
        q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
        assert "fa_inductor" not in sys.modules
        f = torch.compile(attn, backend="flash", options={"flash.compiler": "eager"})
        torch.testing.assert_close(f(q, k, v), attn(q, k, v))
        assert "fa_inductor" in sys.modules
        print("ok")
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def test_forward_and_backward_run_our_ops():
    torch._dynamo.reset()
    q, k, v = qkv(requires_grad=True)
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    f = torch.compile(attention, backend="flash", options={"flash.compiler": "aot_eager"}, fullgraph=True)
    with OpLog() as log:
        out = f(q, k, v)
        out.backward(torch.ones_like(out))
    assert "fa.attention_forward" in log.names
    assert "fa.attention_backward" in log.names
    expected = attention(*ref)
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(out, expected)
    for got, want in zip((q, k, v), ref):
        torch.testing.assert_close(got.grad, want.grad)


def test_rewrite_can_be_switched_off_for_a_b_comparisons():
    torch._dynamo.reset()
    f = torch.compile(attention, backend="flash", options={"flash.compiler": "eager", "flash.rewrite": False})
    with OpLog() as log:
        f(*qkv())
    assert "fa.attention_forward" not in log.names


def test_bad_option_fails_with_our_message():
    torch._dynamo.reset()
    f = torch.compile(attention, backend="flash", options={"flash.compiler": "tvm"})
    with pytest.raises(Exception, match="must be one of"):
        f(*qkv())


def test_inductor_options_need_inductor():
    torch._dynamo.reset()
    f = torch.compile(attention, backend="flash", options={"flash.compiler": "eager", "max_autotune": True})
    with pytest.raises(Exception, match="does not run Inductor"):
        f(*qkv())


@pytest.mark.inductor
def test_full_inductor_training_step_matches_eager():
    # The one test that pays for Inductor's C++ code generation on CPU (forward and backward
    # graphs): it checks that Inductor keeps our op's input/output strides as the fake says.
    torch._dynamo.reset()

    def block(x, w_qkv):
        b, s, _ = x.shape
        q, k, v = (x @ w_qkv).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return out.transpose(1, 2).reshape(b, s, 16).sum(-1)

    x = torch.randn(2, 37, 16, requires_grad=True)
    w = torch.randn(16, 48, requires_grad=True)
    x2, w2 = (t.detach().clone().requires_grad_() for t in (x, w))
    f = torch.compile(block, backend="flash")
    with OpLog() as log:
        out = f(x, w)
        out.sum().backward()
    assert "fa.attention_forward" in log.names and "fa.attention_backward" in log.names
    ref = block(x2, w2)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)
