// SM90 backward, head dim 192, fp16.  Built for sm_90a only (wgmma, setmaxnreg).
#include "bwd_sm90_entry.h"
#include "bwd_sm90_launch.h"

namespace fa::sm90 {

template <>
int run_bwd_sm90<192, FA_BWD_FP16>(const FaBwdParams& params, float* lse_log2, cudaStream_t stream) {
  return run_bwd<192, cutlass::half_t>(params, lse_log2, stream);
}

}  // namespace fa::sm90
