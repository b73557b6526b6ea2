// Plain C ABI of libfa_kernels.so.  Nothing here depends on torch: the Python side (ctypes)
// validates tensors and passes raw pointers, element strides and the current stream.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/fa_params.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a params struct changes layout, so a stale library is never called with
// a mismatched mirror.
#define FA_ABI_VERSION 2

int fa_abi_version(void);
// Message of the last failed call on this thread ("" if none).
const char* fa_last_error(void);
// Forward attention with the SM80 (FlashAttention-2 style) kernels.  Returns FA_OK or an error
// code; the message is then in fa_last_error().
int fa_fwd_sm80(const FaFwdParams* params, cudaStream_t stream);
// Forward attention with the SM90 (FlashAttention-3 style: TMA, wgmma, warp specialisation)
// kernels.  Present only in libraries built for sm_90a; same params and status codes.
int fa_fwd_sm90(const FaFwdParams* params, cudaStream_t stream);
// The SM90 forward (head dim 128, bf16, dense or causal) with one scheduling idea switched off:
// variant 0 full, 1 no ping-pong, 2 no intra-warpgroup overlap, 3 no warp specialisation,
// 4 no L2 eviction hints, 5 128-key tiles without a mask.
int fa_fwd_sm90_ablation(const FaFwdParams* params, int variant, cudaStream_t stream);
// Backward attention with the SM90 kernels (TMA, wgmma, warp specialisation), head dims 64, 96
// and 128, not deterministic; present only in libraries built for sm_90a.  The params are the
// SM80 backward's (bwd_params.h) with these sizes: dsum and lse_log2 (a further fp32 workspace)
// [batch, heads_q, seqlen_q_rounded], dq_accum [batch, heads_q, seqlen_q_rounded, head_dim].
struct FaBwdParams;
int fa_bwd_sm90(const struct FaBwdParams* params, float* lse_log2, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
