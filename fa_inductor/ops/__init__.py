"""The attention ops: the contract between the pattern passes and the kernels.

Two ``torch.library`` ops in namespace ``fa``; patterns insert them as OpOverloads
(``torch.ops.fa.attention_forward.default`` plus ``operator.getitem``)::

    fa::attention_forward(Tensor q, Tensor k, Tensor v, Tensor? bias, float scale,
                          bool causal, bool bottom_right, int window_left, int window_right,
                          float softcap, float dropout_p, Tensor? dropout_seed)
        -> (Tensor out, Tensor lse)

    fa::attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out,
                           Tensor lse, Tensor? bias, float scale, bool causal,
                           bool bottom_right, int window_left, int window_right,
                           float softcap, float dropout_p, Tensor? dropout_seed,
                           bool bias_requires_grad)
        -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)

Semantics, for b < B, h < Hq, i < Sq, j < Sk, with g = h // (Hq // Hkv) the KV head of h:

    x[i, j] = scale * <q[b, h, i], k[b, g, j]>
    x       = softcap * tanh(x / softcap)              if softcap > 0
    x       = x + bias[b, h, i, j]                     float bias (broadcast to [B, Hq, Sq, Sk])
    x       = where(bias[b, h, i, j], x, -inf)         bool bias: True keeps the key
    allowed(i, j): off = (Sk - Sq) if bottom_right else 0
                   causal       -> j <= i + off
                   window_left  >= 0 -> j >= i + off - window_left
                   window_right >= 0 -> j <= i + off + window_right
    p       = softmax_j(x over allowed j)   (fp32)
    p       = p * keep(seed, b, h, i, j) / (1 - dropout_p)      if dropout_p > 0
    out[b, h, i] = sum_j p[i, j] * v[b, g, j]
    lse[b, h, i] = logsumexp_j x[i, j]      (natural log, fp32; -inf for a row with no key)

A row with no allowed key gives out = 0 and lse = -inf.  Shapes: q [B,Hq,Sq,D], k [B,Hkv,Sk,D],
v [B,Hkv,Sk,Dv], Hq % Hkv == 0; q, k, v share one floating dtype; any strides.  out is
[B,Hq,Sq,Dv] in q's dtype, allocated in [B,Sq,Hq,Dv] memory order (so the usual
``out.transpose(1, 2).reshape(B, Sq, Hq*Dv)`` is a view); lse is contiguous [B,Hq,Sq] fp32.
Gradients dq/dk/dv have their input's shape in the same [B,S,H,D] memory order; grad_bias
has bias's own (broadcastable) shape when bias_requires_grad, else it is an empty tensor.
dropout_seed is an int64 tensor of one element drawn in the graph, so forward and backward
see one mask and every call a new one.

Implementation notes (this package):

* ``library.py`` registers the ops, their fakes (which allocate exactly what the real ops return,
  whatever the input strides) and the autograd formula: the backward op gets
  ``bias_requires_grad`` only for a float bias that needs a gradient; a bool bias and the seed
  get none; lse is not differentiable.  The ops carry ``torch.Tag.needs_exact_strides``.
* ``validation.py`` checks arguments for the real ops and the fakes alike (ValueError/TypeError).
* ``dispatch.py`` picks compiled kernel → SDPA internals (CUDA) → ``reference.py`` per call and
  says why (``select_forward``/``select_backward``; ``choice_for_node`` at trace time;
  ``record_choices()`` lists what actually ran).
* ``sdpa.py`` runs the calls PyTorch's flash / memory-efficient SDPA ops cover exactly (windows
  and bottom-right causal reach the efficient kernel as an explicit mask).
* ``reference.py`` is the blockwise online-softmax implementation of everything above.
* ``dropout.py`` defines ``keep(seed, b, h, i, j)``: a counter-based 32-bit hash (see its
  docstring) that any kernel supporting dropout must reproduce bit for bit.
"""

from . import library as _library  # noqa: E402,F401  (registers the ops on import)
