// Parameter structs of the C ABI.  Plain C so that ctypes can mirror them field by field
// (fa_inductor/kernels/library.py); keep the two in the same order.
#pragma once

#include <stdint.h>

// The library is built with -fvisibility=hidden: entry points must say they are exported.
#define FA_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

enum FaDtype { FA_FP16 = 0, FA_BF16 = 1 };

enum FaStatus {
  FA_OK = 0,
  FA_ERR_INVALID_ARGUMENT = 1,
  FA_ERR_UNSUPPORTED = 2,
  FA_ERR_CUDA = 3,
};

typedef struct FaFwdParams {
  // q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, D], out [B, Hq, Sq, D] in any
  // strides (elements) with a contiguous last dim; lse [B, Hq, Sq] fp32 contiguous.
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int32_t batch, heads_q, heads_kv, seqlen_q, seqlen_k;
  int32_t head_dim;  // one of 64, 96, 128, 192, 256 (the Python side pads others up)
  int32_t dtype;     // FaDtype
  float scale;       // applied to q.k before softcap
  float softcap;     // <= 0: off
  // Allowed keys of query i: i + off - window_left <= j <= i + off + window_right, with
  // off = seqlen_k - seqlen_q when bottom_right else 0; a negative window is unbounded.
  // Causal is window_right = 0.
  int32_t window_left, window_right;
  int32_t bottom_right;
} FaFwdParams;

#ifdef __cplusplus
}
#endif
