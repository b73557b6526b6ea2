// The ablation instances of the SM90 forward (head dim 128, bf16): the full kernel with one of
// FlashAttention-3's scheduling ideas switched off each, so the benchmark can measure what each
// is worth on this GPU (benchmarks/attention.py --ablation).
#include <string>

#include "common/error.h"
#include "common/validate.h"
#include "fwd_sm90_config.h"
#include "fwd_sm90_launch.h"

namespace {

template <bool Is_local>
using Traits = typename fa::sm90::FwdConfig<128, cutlass::bfloat16_t, Is_local>::Traits;

}  // namespace

// variant: 0 full, 1 no ping-pong, 2 no intra-warpgroup overlap, 3 no warp specialisation,
// 4 no L2 eviction hints, 5 128-key tiles without a mask too (176 is the default there).
extern "C" FA_EXPORT int fa_fwd_sm90_ablation(const FaFwdParams* params, int variant, cudaStream_t stream) {
  using namespace fa::sm90;
  fa::clear_last_error();
  if (int status = fa::validate_fwd(params, "fa_fwd_sm90_ablation"); status != FA_OK) return status;
  FA_REQUIRE(params->head_dim == 128 && params->dtype == FA_BF16, FA_ERR_UNSUPPORTED,
             "fa_fwd_sm90_ablation: built for head dim 128, bf16 only");
  FA_REQUIRE(params->window_left < 0 && params->softcap <= 0.f, FA_ERR_UNSUPPORTED,
             "fa_fwd_sm90_ablation: dense or causal only");
  const bool causal = params->window_right >= 0;
  switch (variant) {
    case 0:
      return causal ? launch<Traits<true>, FullSchedule, true, false>(*params, stream)
                    : launch<Traits<false>, FullSchedule, false, false>(*params, stream);
    case 1:
      return causal ? launch<Traits<true>, Schedule<false, true, true>, true, false>(*params, stream)
                    : launch<Traits<false>, Schedule<false, true, true>, false, false>(*params, stream);
    case 2:
      return causal ? launch<Traits<true>, Schedule<true, false, true>, true, false>(*params, stream)
                    : launch<Traits<false>, Schedule<true, false, true>, false, false>(*params, stream);
    case 3:
      return causal ? launch<Traits<true>, Schedule<false, true, false>, true, false>(*params, stream)
                    : launch<Traits<false>, Schedule<false, true, false>, false, false>(*params, stream);
    case 4:
      return causal ? launch<Traits<true>, Schedule<true, true, true, false>, true, false>(*params, stream)
                    : launch<Traits<false>, Schedule<true, true, true, false>, false, false>(*params, stream);
    case 5:  // the causal tile shape everywhere
      return causal ? launch<Traits<true>, FullSchedule, true, false>(*params, stream)
                    : launch<Traits<true>, FullSchedule, false, false>(*params, stream);
    default:
      fa::set_last_error("fa_fwd_sm90_ablation: variant " + std::to_string(variant) + " is not 0..5");
      return FA_ERR_INVALID_ARGUMENT;
  }
}
