// The SM90 backward kernel: one CTA per (key block, kv head, batch), longest key blocks first
// (with a causal mask the first key blocks see the most query rows; masked launches order them
// across heads too, see common/tile_order.h); a producer warpgroup with
// the TMA loads and the dQ writer warp, and two consumer warpgroups, registers moved to them with
// setmaxnreg.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "bwd_sm90_mainloop.h"
#include "bwd_sm90_traits.h"
#include "common/cute_utils.h"
#include "common/mask.h"

namespace fa::sm90 {

using namespace cute;

// dK (scaled) and dV of one warpgroup's keys (with kSplitHeadDim: its columns of the shared keys)
// through the K and V buffers (stmatrix) to one TMA store each, which clips the rows past seqlen_k.
template <class Traits, class AccdK, class AccdV>
CUTE_DEVICE void store_dk_dv(BwdArgs<Traits> const& args, typename Traits::SharedStorage& smem, int warpgroup,
                             int thread, int n_block, int head_kv, int batch, AccdK& acc_dk, AccdV& acc_dv) {
  using Element = typename Traits::Element;
  constexpr int kKeys = Traits::kKeysPerWarpgroup;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr bool kSplit = Traits::kSplitHeadDim;
  const int kv = kSplit ? 0 : warpgroup;
  // Who must be done reading K and V before they are overwritten: the warpgroup itself, or with a
  // shared tile both.
  const int barrier = kSplit ? BwdBarriers::kBothWarpgroups : BwdBarriers::warpgroup(warpgroup);
  constexpr int kBarrierThreads = kSplit ? Traits::kConsumerThreads : 128;
  CUTE_UNROLL
  for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= args.scale;
  auto own_columns = [&](Element* p) {
    Tensor t = make_tensor(make_smem_ptr(p), typename Traits::SmemLayoutK{});
    return local_tile(t, Shape<Int<kKeys>, Int<Traits::kDkvCols>>{}, make_coord(_0{}, warpgroup * kSplit));
  };
  typename Traits::TiledMmadKV mma_dkv;
  auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_dkv);
  auto smem_thr_copy = smem_copy.get_thread_slice(thread);
  Tensor rdK = convert_type<Element>(acc_dk);
  Tensor rdV = convert_type<Element>(acc_dv);
  // Every product that read K and V has been waited for, by every warp.
  named_barrier_sync(barrier, kBarrierThreads);
  copy(smem_copy, smem_thr_copy.retile_S(rdK), smem_thr_copy.partition_D(own_columns(smem.k[kv].data())));
  copy(smem_copy, smem_thr_copy.retile_S(rdV), smem_thr_copy.partition_D(own_columns(smem.v[kv].data())));
  cutlass::arch::fence_view_async_shared();
  named_barrier_sync(barrier, kBarrierThreads);
  if (thread == 0 && (!kSplit || warpgroup == 0)) {
    const int tile = n_block * Traits::kKVTiles + kv;
    auto store = [&](auto const& tma, auto* p) {
      Tensor s = make_tensor(make_smem_ptr(p), typename Traits::SmemLayoutK{});
      Tensor m = tma.get_tma_tensor(make_shape(args.seqlen_k, int32_t(kHeadDim), args.heads_kv, args.batch));
      Tensor g = local_tile(m(_, _, head_kv, batch), Shape<Int<kKeys>, Int<kHeadDim>>{}, make_coord(_, _0{}));
      auto thr = tma.get_slice(_0{});
      copy(tma, thr.partition_S(s), thr.partition_D(g)(_, _, _, tile));
    };
    store(args.tma_dk, smem.k[kv].data());
    store(args.tma_dv, smem.v[kv].data());
    tma_store_arrive();
    tma_store_wait<0>();  // shared memory must stay valid until the stores have read it
  }
}

template <class Traits, bool Is_local, bool Is_softcap>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    fa_bwd_sm90_kernel(CUTE_GRID_CONSTANT BwdArgs<Traits> const args) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ __align__(1024) char smem_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  int n_block = blockIdx.x, head_kv = blockIdx.y, batch = blockIdx.z;
  if constexpr (Is_local) {  // rank 0, the first key block, sees the most queries
    int pair;
    args.order.tile(blockIdx.x, n_block, pair);
    head_kv = pair % args.heads_kv;
    batch = pair / args.heads_kv;
  }
  // Deterministic mode adds dQ from the last key block to the first (BwdDqWriter): those start first.
  if (args.dq_semaphore != nullptr) n_block = (args.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN - 1 - n_block;
  const int warpgroup_idx = cutlass::canonical_warp_group_idx();
  const bool is_producer = warpgroup_idx == 0;
  const QueryRange range = query_blocks<Traits, Is_local>(args, n_block);

  if (threadIdx.x == 0) {
    prefetch_tma_descriptor(args.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_do.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(args.tma_v.get_tma_descriptor());
    cutlass::arch::ClusterBarrier::init(&smem.barrier_kv, 1);
    smem.head_kv_and_batch[0] = head_kv;
    smem.head_kv_and_batch[1] = batch;
  }
  typename Pipeline::Params pipe_params;
  pipe_params.role = is_producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kConsumerThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesQ;
  Pipeline pipeline_q(smem.pipeline_q, pipe_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_do(smem.pipeline_do, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barriers initialised before anyone waits on them

  const int group = args.heads_q / args.heads_kv;
  if (is_producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (threadIdx.x == 0) {
      BwdLoader<Traits> loader{args, smem, pipeline_q, pipeline_do};
      loader.load_kv(n_block, head_kv, batch);
      // With a masked launch order the head and batch are no longer blockIdx values that ptxas can
      // re-read at each use; reading them back from shared memory keeps them out of the producer's
      // 24 registers.
      volatile int* head_kv_and_batch = smem.head_kv_and_batch;
      // The query loop is not unrolled: unrolled copies of the loads spill in those registers.
      for (int h = 0; h < group; ++h) {
#pragma unroll 1
        for (int m = range.min; m < range.max; ++m)
          loader.load_q_do(m, head_kv_and_batch[0] * group + h, head_kv_and_batch[1]);
      }
    } else if (threadIdx.x / 32 == 1 && !Traits::kDqAtomic) {
      BwdDqWriter<Traits, Is_local>{args, smem}.run(n_block, head_kv, batch, range, threadIdx.x % 32);
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
  const int warpgroup = warpgroup_idx - 1;
  const int thread = threadIdx.x % 128;
  const KeyRange keys{args.seqlen_k, args.diag_offset, args.window_left, args.window_right};
  typename Traits::TiledMmadKV mma_dkv;
  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<Traits::kKeysPerWarpgroup>, Int<Traits::kDkvCols>>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<Traits::kKeysPerWarpgroup>, Int<Traits::kDkvCols>>{});
  clear(acc_dk);
  clear(acc_dv);
  // K and V always land before the epilogue reuses their buffers, even when no row sees the keys.
  cutlass::arch::ClusterBarrier::wait(&smem.barrier_kv, 0);
  BwdConsumer<Traits, Is_local, Is_softcap> consumer{args, smem, warpgroup, thread, keys};
  consumer.run(n_block, head_kv, batch, range, pipeline_q, pipeline_do, acc_dk, acc_dv);
  store_dk_dv<Traits>(args, smem, warpgroup, thread, n_block, head_kv, batch, acc_dk, acc_dv);
}

}  // namespace fa::sm90
