// C entry point of the SM80 attention backward: validates the parameters that the kernels rely
// on, then runs preprocessing (D = rowsum(dO * O), zeroed dQ accumulator), the main dK/dV/dQ
// kernel and the dQ conversion on the caller's stream.  Errors are reported through the
// library's fa_last_error().
#include <cuda_runtime.h>
#include <stdio.h>

#include "bwd/bwd_launch.h"
#include "bwd_params.h"
#include "common/error.h"
#include "common/fa_params.h"

namespace {

int fail(int code, const char* what) {
  char buf[256];
  snprintf(buf, sizeof(buf), "fa_bwd_sm80: %s", what);
  fa::set_last_error(buf);
  return code;
}

int fail_cuda(int err, const char* stage) {
  char buf[256];
  snprintf(buf, sizeof(buf), "fa_bwd_sm80: %s: %s", stage,
           cudaGetErrorString(static_cast<cudaError_t>(err)));
  fa::set_last_error(buf);
  return FA_ERR_CUDA;
}

using Launch = int (*)(const FaBwdParams&, cudaStream_t);

Launch pick_main(int64_t head_dim, bool bf16) {
  using namespace fa_bwd;
  switch (head_dim) {
    case 64: return bf16 ? launch_bwd_sm80_hdim64_bf16 : launch_bwd_sm80_hdim64_fp16;
    case 96: return bf16 ? launch_bwd_sm80_hdim96_bf16 : launch_bwd_sm80_hdim96_fp16;
    case 128: return bf16 ? launch_bwd_sm80_hdim128_bf16 : launch_bwd_sm80_hdim128_fp16;
    case 192: return bf16 ? launch_bwd_sm80_hdim192_bf16 : launch_bwd_sm80_hdim192_fp16;
    case 256: return bf16 ? launch_bwd_sm80_hdim256_bf16 : launch_bwd_sm80_hdim256_fp16;
    default: return nullptr;
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

bool strides_ok(const int64_t* s) { return s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0; }

}  // namespace

extern "C" FA_EXPORT int fa_bwd_sm80(const FaBwdParams* params, cudaStream_t stream) {
  if (params == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "null params");
  const FaBwdParams& p = *params;
  if (p.dtype != FA_BWD_FP16 && p.dtype != FA_BWD_BF16) return fail(FA_ERR_INVALID_ARGUMENT, "dtype must be fp16 or bf16");
  const Launch main_kernel = pick_main(p.head_dim, p.dtype == FA_BWD_BF16);
  if (main_kernel == nullptr) return fail(FA_ERR_UNSUPPORTED, "head_dim must be one of 64, 96, 128, 192, 256");
  if (p.batch <= 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.seqlen_q <= 0 || p.seqlen_k <= 0)
    return fail(FA_ERR_INVALID_ARGUMENT, "empty problem (the caller handles zero sizes)");
  if (p.seqlen_q_rounded < p.seqlen_q || p.seqlen_q_rounded % 128 != 0)
    return fail(FA_ERR_INVALID_ARGUMENT, "seqlen_q_rounded must be seqlen_q rounded up to 128");
  if (p.heads_q % p.heads_kv != 0) return fail(FA_ERR_INVALID_ARGUMENT, "heads_q must be a multiple of heads_kv");
  if (p.seqlen_q >= (int64_t(1) << 30) || p.seqlen_k >= (int64_t(1) << 30))
    return fail(FA_ERR_INVALID_ARGUMENT, "sequence length too large");
  if (p.heads_kv > 65535 || p.batch > 65535) return fail(FA_ERR_INVALID_ARGUMENT, "batch or kv heads over 65535");
  if (p.deterministic && p.num_splits < 1) return fail(FA_ERR_INVALID_ARGUMENT, "deterministic mode needs num_splits >= 1");
  const void* ptrs[] = {p.q, p.k, p.v, p.out, p.dout, p.dq, p.dk, p.dv, p.dq_accum, p.dsum};
  for (const void* ptr : ptrs)
    if (ptr == nullptr || !aligned16(ptr)) return fail(FA_ERR_INVALID_ARGUMENT, "null or non-16-byte-aligned pointer");
  const int64_t* strides[] = {p.q_strides,    p.k_strides,  p.v_strides,  p.out_strides,
                              p.dout_strides, p.dq_strides, p.dk_strides, p.dv_strides};
  for (const int64_t* s : strides)
    if (!strides_ok(s)) return fail(FA_ERR_INVALID_ARGUMENT, "strides must be multiples of 8 elements");
  if (p.lse == nullptr) return fail(FA_ERR_INVALID_ARGUMENT, "null lse");

  int err = fa_bwd::launch_bwd_preprocess(p, stream);
  if (err) return fail_cuda(err, "preprocess launch");
  // The head-dim launcher runs the main kernel and the dQ conversion matching its accumulator layout.
  err = main_kernel(p, stream);
  if (err) return fail_cuda(err, "main kernel / dq conversion launch");
  fa::clear_last_error();
  return FA_OK;
}
