// Entry points of the per-head-dim SM90 backward translation units (one TU per head dim and dtype).
#pragma once

#include <cuda_runtime_api.h>

#include "bwd_params.h"

namespace fa::sm90 {

template <int kHeadDim, int kDtype>  // kDtype: FaBwdDtype
int run_bwd_sm90(const FaBwdParams& params, float* lse_log2, cudaStream_t stream);

}  // namespace fa::sm90
