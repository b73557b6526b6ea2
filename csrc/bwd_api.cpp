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
#include "common/validate.h"

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

}  // namespace

extern "C" FA_EXPORT int fa_bwd_sm80(const FaBwdParams* params, cudaStream_t stream) {
  if (int status = fa::validate_bwd(params, "fa_bwd_sm80"); status != FA_OK) return status;
  const FaBwdParams& p = *params;
  const Launch main_kernel = pick_main(p.head_dim, p.dtype == FA_BWD_BF16);
  if (main_kernel == nullptr) return fail(FA_ERR_UNSUPPORTED, "head_dim must be one of 64, 96, 128, 192, 256");

  int err = fa_bwd::launch_bwd_preprocess(p, stream);
  if (err) return fail_cuda(err, "preprocess launch");
  // The head-dim launcher runs the main kernel and the dQ conversion matching its accumulator layout.
  err = main_kernel(p, stream);
  if (err) return fail_cuda(err, "main kernel / dq conversion launch");
  fa::clear_last_error();
  return FA_OK;
}
