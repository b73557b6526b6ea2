// Host-side launchers of the backward kernels, one definition per translation unit
// (bwd_sm80_hdim<D>_<dtype>.cu, bwd_pre_post.cu) so the build compiles them in parallel.
// Each returns a cudaError_t value (0 = launched).
#pragma once
#include <cuda_runtime.h>

#include "../bwd_params.h"

namespace fa_bwd {

int launch_bwd_preprocess(const FaBwdParams& p, cudaStream_t stream);
int launch_bwd_convert_dq(const FaBwdParams& p, cudaStream_t stream);

#define FA_BWD_DECLARE(D)                                                  \
  int launch_bwd_sm80_hdim##D##_fp16(const FaBwdParams& p, cudaStream_t s); \
  int launch_bwd_sm80_hdim##D##_bf16(const FaBwdParams& p, cudaStream_t s);
FA_BWD_DECLARE(64)
FA_BWD_DECLARE(96)
FA_BWD_DECLARE(128)
FA_BWD_DECLARE(192)
FA_BWD_DECLARE(256)
#undef FA_BWD_DECLARE

}  // namespace fa_bwd
