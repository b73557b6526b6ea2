// Entry points of the per-head-dim forward translation units (one TU per head dim and dtype).
#pragma once

#include <cuda_runtime_api.h>

#include "common/fa_params.h"

namespace fa::fwd {

template <int kHeadDim, int kDtype>  // kDtype: FaDtype
int run_fwd_sm80(const FaFwdParams& params, cudaStream_t stream);

}  // namespace fa::fwd
