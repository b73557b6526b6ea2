// C entry points of libfa_kernels.so (see fa_api.h).  Validates what the kernels rely on, then
// dispatches on head dim and dtype to the per-head-dim translation units.
#include "fa_api.h"

#include <string>

#include "common/error.h"
#include "fwd/fwd_entry.h"

namespace fa {

namespace {
thread_local std::string last_error;
}

void set_last_error(const std::string& message) { last_error = message; }
void clear_last_error() { last_error.clear(); }

}  // namespace fa

namespace {

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
bool stride_ok(int64_t s) { return s % 8 == 0; }  // 16-byte rows for 2-byte elements

int validate_fwd(const FaFwdParams* p) {
  FA_REQUIRE(p != nullptr, FA_ERR_INVALID_ARGUMENT, "fa_fwd_sm80: params is null");
  FA_REQUIRE(p->q && p->k && p->v && p->out && p->lse, FA_ERR_INVALID_ARGUMENT, "fa_fwd_sm80: null tensor pointer");
  FA_REQUIRE(p->batch > 0 && p->heads_q > 0 && p->heads_kv > 0 && p->seqlen_q > 0 && p->seqlen_k > 0,
             FA_ERR_INVALID_ARGUMENT, "fa_fwd_sm80: empty or negative shape");
  FA_REQUIRE(p->heads_q % p->heads_kv == 0, FA_ERR_INVALID_ARGUMENT,
             "fa_fwd_sm80: heads_q must be a multiple of heads_kv");
  FA_REQUIRE(p->batch <= 65535 && p->heads_q <= 65535, FA_ERR_UNSUPPORTED,
             "fa_fwd_sm80: batch and heads must be <= 65535");
  FA_REQUIRE(p->dtype == FA_FP16 || p->dtype == FA_BF16, FA_ERR_UNSUPPORTED, "fa_fwd_sm80: dtype must be fp16 or bf16");
  FA_REQUIRE(aligned16(p->q) && aligned16(p->k) && aligned16(p->v) && aligned16(p->out), FA_ERR_INVALID_ARGUMENT,
             "fa_fwd_sm80: q, k, v, out must be 16-byte aligned");
  const int64_t strides[] = {p->q_batch_stride, p->q_head_stride, p->q_row_stride, p->k_batch_stride,
                             p->k_head_stride,  p->k_row_stride,  p->v_batch_stride, p->v_head_stride,
                             p->v_row_stride,   p->o_batch_stride, p->o_head_stride, p->o_row_stride};
  for (int64_t s : strides) {
    FA_REQUIRE(stride_ok(s), FA_ERR_INVALID_ARGUMENT, "fa_fwd_sm80: strides must be multiples of 8 elements");
  }
  return FA_OK;
}

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
  if (int status = validate_fwd(params); status != FA_OK) return status;
  return params->dtype == FA_FP16 ? dispatch_head_dim<FA_FP16>(*params, stream)
                                  : dispatch_head_dim<FA_BF16>(*params, stream);
}

}  // extern "C"
