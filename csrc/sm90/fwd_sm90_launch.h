// Host side of the SM90 forward: TMA descriptors for Q, K, V and O, then the launch.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <string>

#include "common/device_cache.h"
#include "common/error.h"
#include "common/fa_params.h"
#include "common/static_switch.h"
#include "common/tile_order.h"
#include "fwd_sm90_config.h"
#include "fwd_sm90_kernel.h"

namespace fa::sm90 {

// Tile counters go round robin over launches; a counter is in use until its launch has taken its
// last tile, so this needs fewer than kTileCounters dynamically scheduled launches of one unit in
// flight at once.
static int next_tile_counter() {
  static std::atomic<unsigned> next{0};
  return int(next.fetch_add(1, std::memory_order_relaxed) % unsigned(kTileCounters));
}

template <typename Traits, class Schedule, bool Is_local, bool Is_softcap>
int launch(const FaFwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  auto mQ = seq_major_tensor<Traits::kHeadDim>(static_cast<Element const*>(p.q), p.seqlen_q, p.heads_q, p.batch, p.q_row_stride,
                               p.q_head_stride, p.q_batch_stride);
  auto mK = seq_major_tensor<Traits::kHeadDim>(static_cast<Element const*>(p.k), p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride,
                               p.k_head_stride, p.k_batch_stride);
  auto mV = seq_major_tensor<Traits::kHeadDim>(static_cast<Element const*>(p.v), p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride,
                               p.v_head_stride, p.v_batch_stride);
  auto mO = seq_major_tensor<Traits::kHeadDim>(static_cast<Element*>(p.out), p.seqlen_q, p.heads_q, p.batch, p.o_row_stride,
                               p.o_head_stride, p.o_batch_stride);
  constexpr int kRows = Traits::kRowsPerWarpgroup;
  FwdArgs<Traits> args{
      make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}, Shape<Int<kRows>, Int<Traits::kHeadDim>>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutKV{}),
                    Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutKV{}),
                    Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>{}, _1{}),
      make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutO{}, Shape<Int<kRows>, Int<Traits::kHeadDim>>{}, _1{}),
      p.lse,
      p.batch, p.heads_q, p.heads_kv, p.seqlen_q, p.seqlen_k,
      p.scale, p.softcap,
      p.window_left, p.window_right, p.bottom_right,
      TileOrder{},  // set below for masked launches
      -1,           // static tile order unless set below
  };

  auto kernel = &fa_fwd_sm90_kernel<Traits, Schedule, Is_local, Is_softcap>;
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = opt_in_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
  if (err != cudaSuccess) {
    set_last_error(std::string("fa_fwd_sm90: cannot get ") + std::to_string(smem) +
                   " bytes of shared memory: " + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  // One CTA per SM (each takes a whole SM's shared memory; two for single-warpgroup tiles) walking
  // the tiles, so that the next tile's loads run under the current one's epilogue; see
  // TileScheduler for who takes which.
  const int m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const int64_t tiles = int64_t(m_blocks) * p.heads_q * p.batch;
  FA_REQUIRE(tiles < (int64_t(1) << 31), FA_ERR_UNSUPPORTED, "fa_fwd_sm90: more than 2^31 query tiles");
  int sms = 0;
  if (int status = multiprocessor_count(sms); status != FA_OK) return status;
  const int slots = sms * Traits::kCtasPerSm;
  int grid = int(tiles) < slots ? int(tiles) : slots;
  using Scheduler = TileScheduler<Traits, Schedule, Is_local>;
  if constexpr (Scheduler::kFolded) {
    const int64_t units = int64_t(Scheduler::units_per_head(m_blocks)) * p.heads_q * p.batch;
    grid = int(units < slots ? units : slots);
  } else if constexpr (Is_local) {
    if (int status = masked_grid_order<fa_fwd_sm90_kernel<Traits, Schedule, Is_local, Is_softcap>>(
            kernel_threads<Traits, Schedule>(), smem, m_blocks, p.heads_q * p.batch, args.order);
        status != FA_OK)
      return status;
    if constexpr (Scheduler::kDynamic) {
      args.counter = next_tile_counter();
    } else {
      grid = int(tiles);  // a CTA per tile, see TileScheduler
    }
  }
  kernel<<<grid, kernel_threads<Traits, Schedule>(), smem, stream>>>(args);
  return check_launch("fa_fwd_sm90 launch");
}

// The first of the tiers whose bound the keys are within.
template <class Schedule, bool Is_local, bool Is_softcap, class First, class... Rest>
int launch_tier(const FaFwdParams& params, cudaStream_t stream, Tiers<First, Rest...>) {
  if constexpr (sizeof...(Rest) > 0) {
    if (params.seqlen_k > First::kMaxSeqlenK) {
      return launch_tier<Schedule, Is_local, Is_softcap>(params, stream, Tiers<Rest...>{});
    }
  }
  return launch<typename First::Traits, Schedule, Is_local, Is_softcap>(params, stream);
}

template <int kHeadDim, typename Element, class Schedule = FullSchedule>
int run_fwd(const FaFwdParams& params, cudaStream_t stream) {
  const bool local = params.window_left >= 0 || params.window_right >= 0;
  const bool softcap = params.softcap > 0.f;
  return FA_BOOL_SWITCH(local, Is_local, [&] {
    return FA_BOOL_SWITCH(softcap, Is_softcap, [&] {
      return launch_tier<Schedule, Is_local, Is_softcap>(params, stream,
                                                         typename FwdConfig<kHeadDim, Element, Is_local>::Tiers{});
    });
  });
}

}  // namespace fa::sm90
