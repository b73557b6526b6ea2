// Checks of a forward call that every kernel family relies on (pointers, shapes, alignment).
#pragma once

#include <stdint.h>

#include <string>

#include "error.h"
#include "fa_params.h"

namespace fa {

inline int validate_fwd(const FaFwdParams* p, const char* who) {
  const std::string name(who);
  auto aligned16 = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  FA_REQUIRE(p != nullptr, FA_ERR_INVALID_ARGUMENT, name + ": params is null");
  FA_REQUIRE(p->q && p->k && p->v && p->out && p->lse, FA_ERR_INVALID_ARGUMENT, name + ": null tensor pointer");
  FA_REQUIRE(p->batch > 0 && p->heads_q > 0 && p->heads_kv > 0 && p->seqlen_q > 0 && p->seqlen_k > 0,
             FA_ERR_INVALID_ARGUMENT, name + ": empty or negative shape");
  FA_REQUIRE(p->heads_q % p->heads_kv == 0, FA_ERR_INVALID_ARGUMENT,
             name + ": heads_q must be a multiple of heads_kv");
  FA_REQUIRE(p->batch <= 65535 && p->heads_q <= 65535, FA_ERR_UNSUPPORTED,
             name + ": batch and heads must be <= 65535");
  FA_REQUIRE(p->dtype == FA_FP16 || p->dtype == FA_BF16, FA_ERR_UNSUPPORTED, name + ": dtype must be fp16 or bf16");
  FA_REQUIRE(aligned16(p->q) && aligned16(p->k) && aligned16(p->v) && aligned16(p->out), FA_ERR_INVALID_ARGUMENT,
             name + ": q, k, v, out must be 16-byte aligned");
  const int64_t strides[] = {p->q_batch_stride, p->q_head_stride, p->q_row_stride, p->k_batch_stride,
                             p->k_head_stride,  p->k_row_stride,  p->v_batch_stride, p->v_head_stride,
                             p->v_row_stride,   p->o_batch_stride, p->o_head_stride, p->o_row_stride};
  for (int64_t s : strides) {
    // 16-byte rows for 2-byte elements
    FA_REQUIRE(s % 8 == 0, FA_ERR_INVALID_ARGUMENT, name + ": strides must be multiples of 8 elements");
  }
  return FA_OK;
}

}  // namespace fa
