// Parameters of the SM80 attention backward (plain C layout: mirrored field by field by
// fa_inductor/kernels/backward.py through ctypes, so the order and types here are the ABI).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum FaBwdDtype { FA_BWD_FP16 = 0, FA_BWD_BF16 = 1 };

typedef struct FaBwdParams {
  // Inputs, q's dtype: q [B,Hq,Sq,D], k/v [B,Hkv,Sk,D], out/dout [B,Hq,Sq,D]; last dim contiguous.
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  const float* lse;  // [B,Hq,Sq] contiguous fp32, natural log; -inf for rows with no allowed key
  // Outputs, q's dtype, same shapes as their inputs, last dim contiguous.
  void* dq;
  void* dk;
  void* dv;
  // fp32 workspaces owned by the caller: dq_accum [num_splits,B,Hq,seqlen_q_rounded,D] and
  // dsum [B,Hq,Sq], both contiguous; the kernels initialise them (no zeroing by the caller).
  // The padded rows let edge tiles add their (zero) rows without predicates.  The order of the
  // values inside a query tile is the kernels' business (row-major, or MMA-fragment order).
  float* dq_accum;
  float* dsum;
  // Strides in elements: batch, head, sequence (the last dim has stride 1).
  int64_t q_strides[3];
  int64_t k_strides[3];
  int64_t v_strides[3];
  int64_t out_strides[3];
  int64_t dout_strides[3];
  int64_t dq_strides[3];
  int64_t dk_strides[3];
  int64_t dv_strides[3];
  int64_t batch;
  int64_t heads_q;
  int64_t heads_kv;
  int64_t seqlen_q;
  int64_t seqlen_k;
  int64_t head_dim;     // one of 64, 96, 128, 192, 256 (the caller pads others)
  int64_t seqlen_q_rounded;  // seqlen_q rounded up to a multiple of 128
  float scale;          // softmax scale applied to q.k
  float softcap;        // <= 0: off
  // Allowed keys of query row i: i + diag_offset - window_left <= j <= i + diag_offset + window_right,
  // a negative window meaning unbounded on that side (causal is window_right = 0).
  int32_t window_left;
  int32_t window_right;
  int32_t diag_offset;  // Sk - Sq for bottom-right alignment, else 0
  int32_t dtype;        // FaBwdDtype
  // deterministic != 0: each CTA owns split blockIdx.x of dq_accum (num_splits of them) and walks
  // its key blocks in a fixed order, so the fp32 sums do not depend on scheduling.
  int32_t deterministic;
  int32_t num_splits;
  // SM90 deterministic mode: int32 [B, Hq, seqlen_q_rounded / 64], one per 64-row query tile of
  // dq_accum: 1 + the last key block that has added into it (set to 0 by the preprocessing), so
  // that the key blocks add in a fixed order.  Unused elsewhere (may be null).
  int32_t* dq_semaphore;
} FaBwdParams;

#ifdef __cplusplus
}
#endif
