// Entry points of the per-head-dim SM90 forward translation units (one TU per head dim and dtype).
#pragma once

#include <cuda_runtime_api.h>

#include "common/fa_params.h"

namespace fa::sm90 {

template <int kHeadDim, int kDtype>  // kDtype: FaDtype
int run_fwd_sm90(const FaFwdParams& params, cudaStream_t stream);

}  // namespace fa::sm90
