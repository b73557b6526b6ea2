// The SM90 forward kernel: persistent (one CTA per SM, two for single-warpgroup tiles, walks the
// tiles TileScheduler hands it: in turn without a mask; with one from an atomic counter, or in
// units of a long and a short tile where the producer has no registers for the counter) and
// warp-specialised (one producer warpgroup issuing TMA loads, consumer warpgroups running wgmma and
// the softmax), registers moved from the producer to the consumers with setmaxnreg.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "common/mask.h"
#include "fwd_sm90_epilogue.h"
#include "fwd_sm90_mainloop.h"
#include "fwd_sm90_softmax.h"
#include "fwd_sm90_traits.h"

namespace fa::sm90 {

using namespace cute;

template <class Traits, class Schedule>
constexpr int kernel_threads() {
  return Schedule::kWarpSpecialized ? Traits::kThreads : Traits::kConsumerThreads;
}

template <class Traits, class Schedule, bool Is_local, bool Is_softcap>
__global__ void __launch_bounds__(kernel_threads<Traits, Schedule>(), Traits::kCtasPerSm)
    fa_fwd_sm90_kernel(CUTE_GRID_CONSTANT FwdArgs<Traits> const args) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr bool kWarpSpecialized = Schedule::kWarpSpecialized;
  using Scheduler = TileScheduler<Traits, Schedule, Is_local>;
  constexpr bool kDynamic = Scheduler::kDynamic;
  extern __shared__ __align__(1024) char smem_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  const int warpgroup_idx = cutlass::canonical_warp_group_idx();
  const bool is_producer = kWarpSpecialized && warpgroup_idx == 0;
  const KeyRange keys{args.seqlen_k, args.bottom_right ? args.seqlen_k - args.seqlen_q : 0, args.window_left,
                      args.window_right};
  const Scheduler scheduler(args);

  if (threadIdx.x == 0) {
    prefetch_tma_descriptor(args.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_v.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_o.get_tma_descriptor());
    for (int b = 0; b < Traits::kQBuffers; ++b) {
      Barrier::init(&smem.barrier_q[b], 1);
      Barrier::init(&smem.barrier_q_free[b], Traits::kConsumerThreads);  // every consumer thread, past its last S
    }
  }
  typename Pipeline::Params pipe_params;
  pipe_params.role = is_producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;  // the thread that issues the loads
  pipe_params.num_consumers = Traits::kConsumerThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesKV;
  Pipeline pipeline_k(smem.pipeline_k, pipe_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(smem.pipeline_v, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  TileLoader<Traits, Schedule> loader{args, smem, pipeline_k, pipeline_v};
  if (is_producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::template kProducerRegisters<kDynamic>>();
    if (threadIdx.x == 0) {
      int index = 0;
      for (int t = blockIdx.x; t < scheduler.end; ++index) {
        const auto tile = scheduler.tile(t, args.seqlen_q, keys);
        for (int n = loader.template begin_tile<kDynamic>(tile, index, t); n >= tile.blocks.min; --n) loader.load_kv(tile, n);
        t = scheduler.next_tile(t);
      }
      if constexpr (kDynamic) loader.finish(index);
    }
    return;
  }

  if constexpr (kWarpSpecialized) cutlass::arch::warpgroup_reg_alloc<Traits::template kConsumerRegisters<kDynamic>>();
  const int warpgroup = kWarpSpecialized ? warpgroup_idx - 1 : warpgroup_idx;
  const int thread = threadIdx.x % 128;
  // Without a producer, the first thread loads the first stages of each tile and Q itself, then
  // refills each stage as soon as the block it held is done.
  const bool self_loading = !kWarpSpecialized && threadIdx.x == 0;
  // Softcap: x = cap * tanh(s * scale / cap); the exponent then works in units of cap.
  const float softmax_scale = Is_softcap ? args.softcap : args.scale;
  typename Traits::PipelineState state_k, state_v;

  // One tile whose Q has landed (in buffer index % kQBuffers).
  auto process = [&](auto const& tile, int index) {
    const int qbuf = q_buffer<Traits>(index);
    const int row0 = tile.m_block * Traits::kBlockM + warpgroup * Traits::kRowsPerWarpgroup;
    if (tile.empty()) {
      store_empty_tile<Traits>(args, smem, warpgroup, thread, qbuf, tile.head, tile.batch, row0);
      return;
    }
    auto released_v = [&](int n) {
      if (self_loading && n - Traits::kStages >= tile.blocks.min) loader.load_kv(tile, n - Traits::kStages);
    };
    typename Traits::TiledMmaPV mma_pv;
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kRowsPerWarpgroup>, Int<Traits::kHeadDim>>{});
    clear(acc_o);
    OnlineSoftmax<2> softmax(softmax_scale * float(M_LOG2E));
    const auto last = compute_tile<Traits, Schedule, Is_local, Is_softcap>(
        args, smem, pipeline_k, pipeline_v, state_k, state_v, warpgroup, thread, qbuf, row0, tile.blocks, keys, acc_o,
        softmax, released_v);
    store_tile<Traits>(args, smem, warpgroup, thread, tile.head, tile.batch, row0, softmax_scale, acc_o, softmax,
                       last.index(), [&] {
                         pipeline_k.consumer_release(last);
                         pipeline_v.consumer_release(last);
                       });
  };
  if constexpr (kDynamic) {
    // Tiles from the counter: the producer posts each one's number with its Q.
    for (int index = 0;; ++index) {
      const int b = q_buffer<Traits>(index);
      Barrier::wait(&smem.barrier_q[b], q_phase<Traits>(index));
      const int t = *static_cast<volatile int*>(&smem.tile[b]);  // volatile: read after the wait
      if (t < 0) break;
      process(scheduler.tile(t, args.seqlen_q, keys), index);
    }
  } else {
    // This CTA's tiles (blockIdx.x, then as TileScheduler::next_tile says), worked out while
    // their Q is on its way.
    int index = 0;
    for (int t = blockIdx.x; t < scheduler.end; t = scheduler.next_tile(t), ++index) {
      const auto tile = scheduler.tile(t, args.seqlen_q, keys);
      if (self_loading) loader.template begin_tile<false>(tile, index, t);
      Barrier::wait(&smem.barrier_q[q_buffer<Traits>(index)], q_phase<Traits>(index));
      process(tile, index);
    }
  }
  // The output buffer must stay valid until the last store has read it.
  if constexpr (Traits::kSeparateO) {
    if (thread == 0) tma_store_wait<0>();
  }
}

}  // namespace fa::sm90
