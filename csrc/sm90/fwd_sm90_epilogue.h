// Epilogue of the SM90 forward: one normalisation of each warpgroup's output rows, lse, and the
// store through shared memory (stmatrix) and one TMA bulk store per warpgroup, which also clips
// the rows past seqlen_q.  The output is staged in the warpgroup's own buffer where one fits
// (Traits::kSeparateO), else over the tile's last K stage (first warpgroup) or V stage (second),
// which the storing thread releases to the producer once the store has read it.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "common/cute_utils.h"
#include "fwd_sm90_mainloop.h"
#include "fwd_sm90_softmax.h"
#include "fwd_sm90_traits.h"

namespace fa::sm90 {

using namespace cute;

// Its own buffer, once the previous tile's store has read it (that store is waited for here, a
// tile later, not right after it is issued).
template <class Traits>
CUTE_DEVICE typename Traits::Element* own_output_buffer(typename Traits::SharedStorage& smem, int warpgroup, int thread) {
  if (thread == 0) tma_store_wait<0>();
  named_barrier_sync(epilogue_barrier<Traits>(warpgroup), 128);
  return smem.o[warpgroup].data();
}

// Where this warpgroup stages its output: its own buffer, or stage `last_stage` of K (first
// warpgroup) or V (second) once no warpgroup's product reads it any more.
template <class Traits>
CUTE_DEVICE typename Traits::Element* output_staging(typename Traits::SharedStorage& smem, int warpgroup, int thread,
                                                     int last_stage) {
  if constexpr (Traits::kSeparateO) {
    return own_output_buffer<Traits>(smem, warpgroup, thread);
  } else {
    named_barrier_sync(products_done_barrier<Traits>(), Traits::kConsumerThreads);
    return (warpgroup == 0 ? smem.k.data() : smem.v.data()) + last_stage * Traits::kStageElems;
  }
}

// After the storing thread has issued the output's TMA store: staged over K/V, the stage goes back
// to the producer (release_stage) once the store has read it.
template <class Traits, class ReleaseStage>
CUTE_DEVICE void output_stored(ReleaseStage&& release_stage) {
  if constexpr (!Traits::kSeparateO) {
    tma_store_wait<0>();
    release_stage();
  }
}

template <class Traits, class AccO, class Softmax, class ReleaseStage>
CUTE_DEVICE void store_tile(FwdArgs<Traits> const& args, typename Traits::SharedStorage& smem, int warpgroup,
                            int thread, int head, int batch, int row0, float softmax_scale, AccO& acc_o,
                            Softmax& softmax, int last_stage, ReleaseStage&& release_stage) {
  using Element = typename Traits::Element;
  constexpr int kRows = Traits::kRowsPerWarpgroup;
  constexpr int kHeadDim = Traits::kHeadDim;

  Tensor acc_o_rc = make_tensor(acc_o.data(), acc_to_rowcol(acc_o.layout()));
  constexpr int kThreadRows = decltype(size<0>(acc_o_rc))::value;
  float lse[kThreadRows];
  CUTE_UNROLL
  for (int mi = 0; mi < kThreadRows; ++mi) {
    const float sum = quad_allreduce(softmax.row_sum[mi], SumOp{});
    const bool empty = !(sum > 0.f);  // no allowed key (or nothing finite) in this row
    const float inv = empty ? 0.f : 1.f / sum;
    lse[mi] = empty ? -INFINITY : softmax.row_max[mi] * softmax_scale + __logf(sum);
    CUTE_UNROLL
    for (int nj = 0; nj < size<1>(acc_o_rc); ++nj) acc_o_rc(mi, nj) *= inv;
  }

  typename Traits::TiledMmaPV mma_pv;
  auto thr_pv = mma_pv.get_thread_slice(thread);
  Tensor cO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kHeadDim>>{}));
  Tensor cO_rc = make_tensor(cO.data(), acc_to_rowcol(cO.layout()));
  if (get<1>(cO_rc(0, 0)) == 0) {  // the thread holding column 0 writes its rows' lse
    float* lse_ptr = args.lse + (int64_t(batch) * args.heads_q + head) * args.seqlen_q;
    CUTE_UNROLL
    for (int mi = 0; mi < kThreadRows; ++mi) {
      const int row = row0 + get<0>(cO_rc(mi, 0));
      if (row < args.seqlen_q) lse_ptr[row] = lse[mi];
    }
  }

  Tensor sO = make_tensor(make_smem_ptr(output_staging<Traits>(smem, warpgroup, thread, last_stage)),
                         typename Traits::SmemLayoutO{});
  Tensor rO = convert_type<Element>(acc_o);
  auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_pv);
  auto smem_thr_copy = smem_copy.get_thread_slice(thread);
  copy(smem_copy, smem_thr_copy.retile_S(rO), smem_thr_copy.partition_D(sO));
  // stmatrix writes through the generic proxy; the TMA store reads through the async proxy.
  cutlass::arch::fence_view_async_shared();
  named_barrier_sync(epilogue_barrier<Traits>(warpgroup), 128);
  if (thread == 0) {
    Tensor mO = args.tma_o.get_tma_tensor(make_shape(args.seqlen_q, kHeadDim, args.heads_q, args.batch));
    Tensor gO = local_tile(mO(_, _, head, batch), Shape<Int<kRows>, Int<kHeadDim>>{}, make_coord(_, _0{}));
    auto tma_o = args.tma_o.get_slice(_0{});
    copy(args.tma_o, tma_o.partition_S(sO), tma_o.partition_D(gO)(_, _, _, row0 / kRows));
    tma_store_arrive();
    output_stored<Traits>(release_stage);
  }
}

// A tile none of whose rows sees any key: out = 0, lse = -inf.
template <class Traits>
CUTE_DEVICE void store_empty_tile(FwdArgs<Traits> const& args, typename Traits::SharedStorage& smem, int warpgroup,
                                  int thread, int qbuf, int head, int batch, int row0) {
  using Element = typename Traits::Element;
  constexpr int kRows = Traits::kRowsPerWarpgroup;
  constexpr int kHeadDim = Traits::kHeadDim;
  // Q is not read for such a tile: the zeros are staged in the output's buffer, or else over Q,
  // which is then free once their store has read it.
  Element* sO;
  if constexpr (Traits::kSeparateO) {
    cutlass::arch::ClusterBarrier::arrive(&smem.barrier_q_free[qbuf]);
    sO = own_output_buffer<Traits>(smem, warpgroup, thread);
  } else {
    sO = q_smem<Traits>(smem, qbuf, warpgroup);
  }
  for (int i = thread; i < kRows * kHeadDim; i += 128) sO[i] = Element(0.f);  // zero in any layout
  float* lse_ptr = args.lse + (int64_t(batch) * args.heads_q + head) * args.seqlen_q;
  for (int r = thread; r < kRows; r += 128) {
    if (row0 + r < args.seqlen_q) lse_ptr[row0 + r] = -INFINITY;
  }
  cutlass::arch::fence_view_async_shared();
  named_barrier_sync(epilogue_barrier<Traits>(warpgroup), 128);
  if (thread == 0) {
    Tensor sOt = make_tensor(make_smem_ptr(sO), typename Traits::SmemLayoutO{});
    Tensor mO = args.tma_o.get_tma_tensor(make_shape(args.seqlen_q, kHeadDim, args.heads_q, args.batch));
    Tensor gO = local_tile(mO(_, _, head, batch), Shape<Int<kRows>, Int<kHeadDim>>{}, make_coord(_, _0{}));
    auto tma_o = args.tma_o.get_slice(_0{});
    copy(args.tma_o, tma_o.partition_S(sOt), tma_o.partition_D(gO)(_, _, _, row0 / kRows));
    tma_store_arrive();
    if constexpr (!Traits::kSeparateO) tma_store_wait<0>();
  }
  if constexpr (!Traits::kSeparateO) {
    named_barrier_sync(epilogue_barrier<Traits>(warpgroup), 128);
    cutlass::arch::ClusterBarrier::arrive(&smem.barrier_q_free[qbuf]);
  }
}

}  // namespace fa::sm90
