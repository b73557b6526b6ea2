// Checks of a forward call that every kernel family relies on (pointers, shapes, alignment).
#pragma once

#include <stdint.h>

#include <string>

#include "error.h"
#include "fa_params.h"
#include "bwd_params.h"

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

// Checks of a backward call that every kernel family relies on.
inline int validate_bwd(const FaBwdParams* p, const char* who) {
  const std::string name(who);
  auto aligned16 = [](const void* ptr) { return ptr != nullptr && (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  FA_REQUIRE(p != nullptr, FA_ERR_INVALID_ARGUMENT, name + ": params is null");
  FA_REQUIRE(p->dtype == FA_BWD_FP16 || p->dtype == FA_BWD_BF16, FA_ERR_INVALID_ARGUMENT,
             name + ": dtype must be fp16 or bf16");
  FA_REQUIRE(p->batch > 0 && p->heads_q > 0 && p->heads_kv > 0 && p->seqlen_q > 0 && p->seqlen_k > 0,
             FA_ERR_INVALID_ARGUMENT, name + ": empty problem (the caller handles zero sizes)");
  FA_REQUIRE(p->seqlen_q_rounded >= p->seqlen_q && p->seqlen_q_rounded % 128 == 0, FA_ERR_INVALID_ARGUMENT,
             name + ": seqlen_q_rounded must be seqlen_q rounded up to 128");
  FA_REQUIRE(p->heads_q % p->heads_kv == 0, FA_ERR_INVALID_ARGUMENT, name + ": heads_q must be a multiple of heads_kv");
  FA_REQUIRE(p->seqlen_q < (int64_t(1) << 30) && p->seqlen_k < (int64_t(1) << 30), FA_ERR_INVALID_ARGUMENT,
             name + ": sequence length too large");
  FA_REQUIRE(p->heads_kv <= 65535 && p->batch <= 65535, FA_ERR_INVALID_ARGUMENT, name + ": batch or kv heads over 65535");
  FA_REQUIRE(!p->deterministic || p->num_splits >= 1, FA_ERR_INVALID_ARGUMENT,
             name + ": deterministic mode needs num_splits >= 1");
  const void* ptrs[] = {p->q, p->k, p->v, p->out, p->dout, p->dq, p->dk, p->dv, p->dq_accum, p->dsum};
  for (const void* ptr : ptrs) {
    FA_REQUIRE(aligned16(ptr), FA_ERR_INVALID_ARGUMENT, name + ": null or non-16-byte-aligned pointer");
  }
  const int64_t* strides[] = {p->q_strides,    p->k_strides,  p->v_strides,  p->out_strides,
                              p->dout_strides, p->dq_strides, p->dk_strides, p->dv_strides};
  for (const int64_t* s : strides) {
    FA_REQUIRE(s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0, FA_ERR_INVALID_ARGUMENT,
               name + ": strides must be multiples of 8 elements");
  }
  FA_REQUIRE(p->lse != nullptr, FA_ERR_INVALID_ARGUMENT, name + ": null lse");
  return FA_OK;
}

}  // namespace fa
