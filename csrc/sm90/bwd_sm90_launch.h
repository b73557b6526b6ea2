// Host side of the SM90 backward: preprocessing, TMA descriptors and the main kernel, then the dQ
// conversion, all on the caller's stream.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "bwd_params.h"
#include "bwd_sm90_kernel.h"
#include "bwd_sm90_pre_post.h"
#include "common/device_cache.h"
#include "common/error.h"
#include "common/static_switch.h"
#include "common/tile_order.h"

namespace fa::sm90 {

template <class Traits, bool Is_local, bool Is_softcap>
int launch_bwd_main(const FaBwdParams& p, const float* lse_log2, cudaStream_t stream) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  const int sq = int(p.seqlen_q), sk = int(p.seqlen_k), b = int(p.batch), hq = int(p.heads_q), hkv = int(p.heads_kv);
  auto tensor_q = [&](auto ptr, const int64_t* s, int seqlen, int heads) {
    return seq_major_tensor<D>(ptr, seqlen, heads, b, s[2], s[1], s[0]);
  };
  auto mQ = tensor_q(static_cast<Element const*>(p.q), p.q_strides, sq, hq);
  auto mdO = tensor_q(static_cast<Element const*>(p.dout), p.dout_strides, sq, hq);
  auto mK = tensor_q(static_cast<Element const*>(p.k), p.k_strides, sk, hkv);
  auto mV = tensor_q(static_cast<Element const*>(p.v), p.v_strides, sk, hkv);
  auto mdK = tensor_q(static_cast<Element*>(p.dk), p.dk_strides, sk, hkv);
  auto mdV = tensor_q(static_cast<Element*>(p.dv), p.dv_strides, sk, hkv);
  using TileQ = Shape<Int<Traits::kBlockM>, Int<D>>;
  using TileK = Shape<Int<Traits::kKeysPerWarpgroup>, Int<D>>;
  auto smem_q = take<0, 2>(typename Traits::SmemLayoutQ{});
  typename Traits::SmemLayoutK smem_k;
  BwdArgs<Traits> args{
      make_tma_copy(SM90_TMA_LOAD{}, mQ, smem_q, TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mdO, smem_q, TileQ{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, smem_k, TileK{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, smem_k, TileK{}, _1{}),
      make_tma_copy(SM90_TMA_STORE{}, mdK, smem_k, TileK{}, _1{}),
      make_tma_copy(SM90_TMA_STORE{}, mdV, smem_k, TileK{}, _1{}),
      lse_log2, p.dsum, p.dq_accum, p.deterministic ? p.dq_semaphore : nullptr,
      b, hq, hkv, sq, sk, int(p.seqlen_q_rounded),
      p.scale, p.softcap,
      p.window_left, p.window_right, p.diag_offset,
      TileOrder{},  // set below for masked launches
  };
  auto kernel = &fa_bwd_sm90_kernel<Traits, Is_local, Is_softcap>;
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = opt_in_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  if (err != cudaSuccess) {
    set_last_error(std::string("fa_bwd_sm90: cannot get ") + std::to_string(smem) +
                   " bytes of shared memory: " + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  const int n_blocks = (sk + Traits::kBlockN - 1) / Traits::kBlockN;
  dim3 grid(n_blocks, hkv, b);
  if constexpr (Is_local) {
    FA_REQUIRE(int64_t(n_blocks) * hkv * b < (int64_t(1) << 31), FA_ERR_UNSUPPORTED,
               "fa_bwd_sm90: more than 2^31 key blocks");
    if (int status = masked_grid_order<fa_bwd_sm90_kernel<Traits, Is_local, Is_softcap>>(
            Traits::kThreads, smem, n_blocks, hkv * b, args.order);
        status != FA_OK)
      return status;
    grid = dim3(args.order.total());
  }
  kernel<<<grid, Traits::kThreads, smem, stream>>>(args);
  return check_launch("fa_bwd_sm90 launch");
}

// dsum and lse_log2: [B, Hq, seqlen_q_rounded] fp32 workspaces; dq_accum [B, Hq, seqlen_q_rounded, D].
template <class Traits, bool Is_local>
int run_bwd_kernels(const FaBwdParams& p, float* lse_log2, cudaStream_t stream) {
  constexpr int kHeadDim = Traits::kHeadDim;
  // The atomics' order varies run to run; the dQ semaphores order only the writer's bulk reduces.
  FA_REQUIRE(!(Traits::kDqAtomic && p.deterministic), FA_ERR_UNSUPPORTED,
             "fa_bwd_sm90: no deterministic mode at head dim " + std::to_string(kHeadDim) +
                 " (dQ is added by atomics; the SM80 backward has one)");
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q_rounded;
  constexpr int kPrepRows = PrepShape<kHeadDim>::kRowsPerBlock;
  fa_bwd_sm90_preprocess_kernel<Traits><<<unsigned((rows + kPrepRows - 1) / kPrepRows), kPrepWarps * 32, 0, stream>>>(
      p, lse_log2);
  if (int status = check_launch("fa_bwd_sm90 preprocessing launch"); status != FA_OK) return status;
  const bool softcap = p.softcap > 0.f;
  const int status = FA_BOOL_SWITCH(softcap, Is_softcap, [&] {
    return launch_bwd_main<Traits, Is_local, Is_softcap>(p, lse_log2, stream);
  });
  if (status != FA_OK) return status;
  const int64_t tiles = p.batch * p.heads_q * (p.seqlen_q_rounded / Traits::kBlockM);
  fa_bwd_sm90_convert_dq_kernel<Traits><<<unsigned(tiles), convert_dq_threads<Traits>(), 0, stream>>>(p);
  return check_launch("fa_bwd_sm90 dq conversion launch");
}

template <int kHeadDim, typename Element>
int run_bwd(const FaBwdParams& p, float* lse_log2, cudaStream_t stream) {
  const bool local = p.window_left >= 0 || p.window_right >= 0;
  return FA_BOOL_SWITCH(local, Is_local, [&] {
    // Head dim 64 splits dQ's columns between the warpgroups without a mask only: half the
    // reduce-add traffic into L2 for a barrier between them per tile (same-lease A/B, H100, 16k
    // tokens: non-causal 1.008-1.033x, causal 0.950-0.974x, ab_h100_sm90_bwd_d64_dq_split.json;
    // why causal loses was not looked into: on the diagonal tiles only some warps mask, so the
    // barrier may wait on them).
    using Defaults = BwdTraits<kHeadDim, Element>;
    using Traits = BwdTraits<kHeadDim, Element, Defaults::kStages, kHeadDim == 64 && !Is_local>;
    return run_bwd_kernels<Traits, Is_local>(p, lse_log2, stream);
  });
}

}  // namespace fa::sm90
