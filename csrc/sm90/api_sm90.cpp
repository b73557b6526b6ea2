// C entry point of the SM90 forward (fa_fwd_sm90, declared in fa_api.h).  Built only for sm_90a,
// so a library without it simply lacks the symbol and the Python side uses the SM80 kernels.
#include <string>

#include "common/error.h"
#include "common/fa_params.h"
#include "common/validate.h"
#include "fwd_sm90_entry.h"

namespace {

template <int kDtype>
int dispatch_head_dim(const FaFwdParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return fa::sm90::run_fwd_sm90<64, kDtype>(p, stream);
    case 96: return fa::sm90::run_fwd_sm90<96, kDtype>(p, stream);
    case 128: return fa::sm90::run_fwd_sm90<128, kDtype>(p, stream);
    case 192: return fa::sm90::run_fwd_sm90<192, kDtype>(p, stream);
    case 256: return fa::sm90::run_fwd_sm90<256, kDtype>(p, stream);
    default:
      fa::set_last_error("fa_fwd_sm90: head_dim " + std::to_string(p.head_dim) +
                         " not compiled (64, 96, 128, 192, 256; pad others up)");
      return FA_ERR_UNSUPPORTED;
  }
}

}  // namespace

extern "C" FA_EXPORT int fa_fwd_sm90(const FaFwdParams* params, cudaStream_t stream) {
  fa::clear_last_error();
  if (int status = fa::validate_fwd(params, "fa_fwd_sm90"); status != FA_OK) return status;
  return params->dtype == FA_FP16 ? dispatch_head_dim<FA_FP16>(*params, stream)
                                  : dispatch_head_dim<FA_BF16>(*params, stream);
}
