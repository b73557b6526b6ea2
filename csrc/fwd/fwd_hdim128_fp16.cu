// Forward, head dim 128, fp16.  One translation unit per head dim and dtype keeps the build parallel.
#include "fwd/fwd_config.h"
#include "fwd/fwd_entry.h"
#include "fwd/fwd_launch.h"

namespace fa::fwd {

template <>
int run_fwd_sm80<128, FA_FP16>(const FaFwdParams& params, cudaStream_t stream) {
  return run_fwd<FwdConfig<128, cutlass::half_t>::Traits>(params, stream);
}

}  // namespace fa::fwd
