// SM90 forward, head dim 64, bf16.  Built for sm_90a only (wgmma, setmaxnreg).
#include "fwd_sm90_config.h"
#include "fwd_sm90_entry.h"
#include "fwd_sm90_launch.h"

namespace fa::sm90 {

template <>
int run_fwd_sm90<64, FA_BF16>(const FaFwdParams& params, cudaStream_t stream) {
  return run_fwd<64, cutlass::bfloat16_t>(params, stream);
}

}  // namespace fa::sm90
