// C entry points of libfa_kernels.so (see fa_api.h).  Validates what the kernels rely on, then
// dispatches on head dim and dtype to the per-head-dim translation units.
#include "fa_api.h"

#include <string>

#include "common/error.h"
#include "common/validate.h"
#include "fwd/fwd_entry.h"

namespace fa {

namespace {
thread_local std::string last_error;
}

void set_last_error(const std::string& message) { last_error = message; }
void clear_last_error() { last_error.clear(); }

}  // namespace fa

namespace {

template <int kDtype>
int dispatch_head_dim(const FaFwdParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64: return fa::fwd::run_fwd_sm80<64, kDtype>(p, stream);
    case 96: return fa::fwd::run_fwd_sm80<96, kDtype>(p, stream);
    case 128: return fa::fwd::run_fwd_sm80<128, kDtype>(p, stream);
    case 192: return fa::fwd::run_fwd_sm80<192, kDtype>(p, stream);
    case 256: return fa::fwd::run_fwd_sm80<256, kDtype>(p, stream);
    default:
      fa::set_last_error("fa_fwd_sm80: head_dim " + std::to_string(p.head_dim) +
                         " not compiled (64, 96, 128, 192, 256; pad others up)");
      return FA_ERR_UNSUPPORTED;
  }
}

}  // namespace

extern "C" {

FA_EXPORT int fa_abi_version(void) { return FA_ABI_VERSION; }

FA_EXPORT const char* fa_last_error(void) { return fa::last_error.c_str(); }

FA_EXPORT int fa_fwd_sm80(const FaFwdParams* params, cudaStream_t stream) {
  fa::clear_last_error();
  if (int status = fa::validate_fwd(params, "fa_fwd_sm80"); status != FA_OK) return status;
  return params->dtype == FA_FP16 ? dispatch_head_dim<FA_FP16>(*params, stream)
                                  : dispatch_head_dim<FA_BF16>(*params, stream);
}

}  // extern "C"
