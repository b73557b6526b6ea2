// C entry point of the SM90 backward (fa_bwd_sm90, declared in fa_api.h).  Built only for sm_90a,
// so a library without it lacks the symbol and the Python side uses the SM80 backward.
#include <string>

#include "bwd_params.h"
#include "bwd_sm90_entry.h"
#include "common/error.h"
#include "common/validate.h"

namespace {

template <int kDtype>
int dispatch_head_dim(const FaBwdParams& p, float* lse_log2, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return fa::sm90::run_bwd_sm90<64, kDtype>(p, lse_log2, stream);
    case 96: return fa::sm90::run_bwd_sm90<96, kDtype>(p, lse_log2, stream);
    case 128: return fa::sm90::run_bwd_sm90<128, kDtype>(p, lse_log2, stream);
    case 192: return fa::sm90::run_bwd_sm90<192, kDtype>(p, lse_log2, stream);
    case 256: return fa::sm90::run_bwd_sm90<256, kDtype>(p, lse_log2, stream);
    default:
      fa::set_last_error("fa_bwd_sm90: head_dim " + std::to_string(p.head_dim) +
                         " not compiled (64, 96, 128, 192, 256)");
      return FA_ERR_UNSUPPORTED;
  }
}

}  // namespace

extern "C" FA_EXPORT int fa_bwd_sm90(const FaBwdParams* params, float* lse_log2, cudaStream_t stream) {
  fa::clear_last_error();
  if (int status = fa::validate_bwd(params, "fa_bwd_sm90"); status != FA_OK) return status;
  FA_REQUIRE(!params->deterministic || params->dq_semaphore != nullptr, FA_ERR_INVALID_ARGUMENT,
             "fa_bwd_sm90: deterministic mode needs the dq_semaphore workspace");
  FA_REQUIRE(lse_log2 != nullptr && (reinterpret_cast<uintptr_t>(lse_log2) & 15u) == 0, FA_ERR_INVALID_ARGUMENT,
             "fa_bwd_sm90: null or non-16-byte-aligned lse_log2 workspace");
  return params->dtype == FA_BWD_FP16 ? dispatch_head_dim<FA_BWD_FP16>(*params, lse_log2, stream)
                                      : dispatch_head_dim<FA_BWD_BF16>(*params, lse_log2, stream);
}
