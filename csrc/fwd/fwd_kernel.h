// The SM80 forward kernel (FlashAttention-2 design): one CTA per (query tile, head, batch), the
// query tile resident in shared memory, an inner loop over key/value tiles from the last to the
// first with online softmax in registers, and one normalisation at the end.
//
// Pipeline: K and V have one shared-memory buffer each and their cp.async loads alternate with
// the two products, so the load of V[n] runs under Q.K[n]^T and the softmax, and the load of
// K[n-1] under the softmax and P.V[n].
#pragma once

#include <cute/tensor.hpp>

#include "common/cute_utils.h"
#include "common/fa_params.h"
#include "common/tile_order.h"
#include "fwd_softmax.h"
#include "fwd_traits.h"

namespace fa::fwd {

using namespace cute;

// `order` (masked launches, a one-dimensional grid): which tile each CTA takes, see
// common/tile_order.h; unmasked launches use the (query tile, head, batch) grid.
template <typename Traits, bool Is_local, bool Is_softcap>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fa_fwd_sm80_kernel(const FaFwdParams params, const TileOrder order) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  extern __shared__ __align__(128) char smem[];

  const int tidx = threadIdx.x;
  int m_block = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  if constexpr (Is_local) {  // later query tiles see more keys: rank 0 is the last tile
    int rank, pair;
    order.tile(blockIdx.x, rank, pair);
    m_block = order.blocks - 1 - rank;
    head = pair % params.heads_q;
    batch = pair / params.heads_q;
  }
  const int head_kv = head / (params.heads_q / params.heads_kv);
  const int seqlen_q = params.seqlen_q;
  const int seqlen_k = params.seqlen_k;
  const int row_begin = m_block * kBlockM;
  const int rows_here = seqlen_q - row_begin;

  const KeyRange keys{seqlen_k, params.bottom_right ? seqlen_k - seqlen_q : 0, params.window_left,
                      params.window_right};
  int n_block_min = 0;
  int n_block_max = ceil_div(seqlen_k, kBlockN);
  if constexpr (Is_local) {
    const int last_row = min(seqlen_q, row_begin + kBlockM) - 1;
    n_block_min = keys.lo(row_begin) / kBlockN;
    const int hi = keys.hi(last_row);
    n_block_max = min(n_block_max, hi <= 0 ? 0 : ceil_div(hi, kBlockN));
  }

  // Output views are rebuilt where they are used so that their addresses do not stay live in
  // registers across the main loop.
  auto output_views = [&] {
    Element* o_ptr = reinterpret_cast<Element*>(params.out) + batch * params.o_batch_stride + head * params.o_head_stride;
    Tensor mO = make_tensor(make_gmem_ptr(o_ptr), make_shape(seqlen_q, Int<kHeadDim>{}),
                            make_stride(params.o_row_stride, _1{}));
    return local_tile(mO, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));
  };
  auto lse_row_ptr = [&] { return params.lse + (int64_t(batch) * params.heads_q + head) * seqlen_q + row_begin; };
  Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{});
  typename Traits::GmemTiledCopyO gmem_tiled_copy_O;
  auto gmem_thr_copy_O = gmem_tiled_copy_O.get_thread_slice(tidx);

  if (n_block_max <= n_block_min) {
    // No row of this tile sees any key: out = 0, lse = -inf.
    Tensor tOgO = gmem_thr_copy_O.partition_D(output_views());
    Tensor tOcO = gmem_thr_copy_O.partition_D(cO);
    Tensor zeros = make_tensor<Element>(shape(tOgO));
    clear(zeros);
    copy_rows(gmem_tiled_copy_O, zeros, tOgO, tOcO, rows_here);
    float* lse_ptr = lse_row_ptr();
    for (int r = tidx; r < kBlockM && r < rows_here; r += Traits::kNThreads) lse_ptr[r] = -INFINITY;
    return;
  }

  const Element* q_ptr = reinterpret_cast<const Element*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride;
  const Element* k_ptr = reinterpret_cast<const Element*>(params.k) + batch * params.k_batch_stride + head_kv * params.k_head_stride;
  const Element* v_ptr = reinterpret_cast<const Element*>(params.v) + batch * params.v_batch_stride + head_kv * params.v_head_stride;
  Tensor mQ = make_tensor(make_gmem_ptr(q_ptr), make_shape(seqlen_q, Int<kHeadDim>{}), make_stride(params.q_row_stride, _1{}));
  Tensor mK = make_tensor(make_gmem_ptr(k_ptr), make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(params.k_row_stride, _1{}));
  Tensor mV = make_tensor(make_gmem_ptr(v_ptr), make_shape(seqlen_k, Int<kHeadDim>{}), make_stride(params.v_row_stride, _1{}));
  Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m_block, 0));   // (M, D)
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));         // (N, D, n)
  Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, 0));         // (N, D, n)

  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(sV.data(), typename Traits::SmemLayoutVt{});
  Tensor sVtNoSwizzle = make_tensor(sV.data().get(), typename Traits::SmemLayoutVtNoSwizzle{});

  typename Traits::GmemTiledCopyQKV gmem_tiled_copy;
  auto gmem_thr_copy = gmem_tiled_copy.get_thread_slice(tidx);
  Tensor tQgQ = gmem_thr_copy.partition_S(gQ);
  Tensor tQsQ = gmem_thr_copy.partition_D(sQ);
  Tensor tKgK = gmem_thr_copy.partition_S(gK);  // (CPY, CPY_N, CPY_D, n)
  Tensor tKsK = gmem_thr_copy.partition_D(sK);
  Tensor tVgV = gmem_thr_copy.partition_S(gV);
  Tensor tVsV = gmem_thr_copy.partition_D(sV);
  Tensor tQcQ = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKVcKV = gmem_thr_copy.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));

  // Only the tile holding the end of the keys needs per-row predicates.
  auto load_kv = [&](auto const& src, auto& dst, int n_block) {
    const int rows = seqlen_k - n_block * kBlockN;
    if (rows >= kBlockN) {
      copy(gmem_tiled_copy, src, dst);
    } else {
      copy_rows_or_zero(gmem_tiled_copy, src, dst, tKVcKV, rows);
    }
  };

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tidx);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
  Tensor tSrK = thr_mma.partition_fragment_B(sK);
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtNoSwizzle);
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});

  auto smem_tiled_copy_Q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_Q = smem_tiled_copy_Q.get_thread_slice(tidx);
  Tensor tSsQ = smem_thr_copy_Q.partition_S(sQ);
  auto smem_tiled_copy_K = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto smem_thr_copy_K = smem_tiled_copy_K.get_thread_slice(tidx);
  Tensor tSsK = smem_thr_copy_K.partition_S(sK);
  auto smem_tiled_copy_V = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  auto smem_thr_copy_V = smem_tiled_copy_V.get_thread_slice(tidx);
  Tensor tOsVt = smem_thr_copy_V.partition_S(sVt);

  // Tile coordinates of each score this thread holds, in the (rows, cols) view.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), acc_to_rowcol(tScS.layout()));

  copy_rows_or_zero(gmem_tiled_copy, tQgQ, tQsQ, tQcQ, rows_here);
  int n_block = n_block_max - 1;
  load_kv(tKgK(_, _, _, n_block), tKsK, n_block);
  cp_async_fence();

  clear(acc_o);
  Tensor acc_o_rc = make_tensor(acc_o.data(), acc_to_rowcol(acc_o.layout()));
  constexpr int kRows = decltype(size<0>(acc_o_rc))::value;
  float row_max[kRows];
  float row_sum[kRows];

  // Softcap: x = cap * tanh(s * scale / cap); the exponent then works in units of cap.
  const float softmax_scale = Is_softcap ? params.softcap : params.scale;
  const float scale_log2 = softmax_scale * float(M_LOG2E);
  const float tanh_scale = Is_softcap ? params.scale / params.softcap : 1.f;
  const int last_row = min(seqlen_q, row_begin + kBlockM) - 1;

  for (int iter = 0; n_block >= n_block_min; --n_block, ++iter) {
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cp_async_wait<0>();
    __syncthreads();  // K[n] has landed, and every warp is done reading V[n+1]
    load_kv(tVgV(_, _, _, n_block), tVsV, n_block);
    cp_async_fence();

    gemm_smem_smem(acc_s, tSrQ, tSrK, tSsQ, tSsK, tiled_mma, smem_tiled_copy_Q, smem_thr_copy_Q,
                   smem_tiled_copy_K, smem_thr_copy_K);

    Tensor s = make_tensor(acc_s.data(), acc_to_rowcol(acc_s.layout()));
    if constexpr (Is_softcap) {
      CUTE_UNROLL
      for (int i = 0; i < size(s); ++i) s(i) = tanhf(s(i) * tanh_scale);
    }
    const int col0 = n_block * kBlockN;
    if constexpr (Is_local) {
      const bool need_mask =
          col0 + kBlockN > seqlen_k || col0 + kBlockN > keys.hi(row_begin) || col0 < keys.lo(last_row);
      if (need_mask) mask_scores<true>(s, tScS_rc, row_begin, col0, keys);
    }

    cp_async_wait<0>();
    __syncthreads();  // V[n] has landed, and every warp is done reading K[n]
    if (n_block > n_block_min) {
      load_kv(tKgK(_, _, _, n_block - 1), tKsK, n_block - 1);
      cp_async_fence();
    }

    if (iter == 0) {
      // Without a window only the first tile (the last keys) can be partial, so its mask goes in
      // this branch, which stays a real branch.  Under its own `if (need_mask)` ptxas if-converted
      // the mask into about 100 predicated instructions that every tile executed.
      if constexpr (!Is_local) {
        if (col0 + kBlockN > seqlen_k) mask_scores<false>(s, tScS_rc, row_begin, col0, keys);
      }
      online_softmax_step<true>(s, acc_o_rc, row_max, row_sum, scale_log2);
    } else {
      online_softmax_step<false>(s, acc_o_rc, row_max, row_sum, scale_log2);
    }

    Tensor rP = convert_type<Element>(acc_s);
    Tensor tOrP = make_tensor(rP.data(), acc_to_a_operand(rP.layout()));
    gemm_reg_smem(acc_o, tOrP, tOrVt, tOsVt, tiled_mma, smem_tiled_copy_V, smem_thr_copy_V);
  }

  // Epilogue: normalise once, stage the tile in shared memory, write 16 B per thread per row.
  float lse[kRows];
  CUTE_UNROLL
  for (int mi = 0; mi < kRows; ++mi) {
    const float sum = quad_allreduce(row_sum[mi], SumOp{});
    const bool empty = !(sum > 0.f);  // a row with no allowed key (or nothing finite)
    const float inv = empty ? 0.f : 1.f / sum;
    lse[mi] = empty ? -INFINITY : row_max[mi] * softmax_scale + __logf(sum);
    CUTE_UNROLL
    for (int nj = 0; nj < size<1>(acc_o_rc); ++nj) acc_o_rc(mi, nj) *= inv;
  }

  Tensor rO = convert_type<Element>(acc_o);
  Tensor sO = make_tensor(sQ.data(), typename Traits::SmemLayoutO{});
  auto smem_tiled_copy_O = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_copy_O = smem_tiled_copy_O.get_thread_slice(tidx);
  Tensor taccOrO = smem_thr_copy_O.retile_S(rO);
  Tensor taccOsO = smem_thr_copy_O.partition_D(sO);
  __syncthreads();  // sO aliases sQ
  copy(smem_tiled_copy_O, taccOrO, taccOsO);

  Tensor taccOcO = thr_mma.partition_C(cO);
  Tensor taccOcO_rc = make_tensor(taccOcO.data(), acc_to_rowcol(taccOcO.layout()));
  if (get<1>(taccOcO_rc(0, 0)) == 0) {  // one thread of each quad writes the row's lse
    float* lse_ptr = lse_row_ptr();
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const int row = get<0>(taccOcO_rc(mi, 0));
      if (row < rows_here) lse_ptr[row] = lse[mi];
    }
  }

  __syncthreads();
  Tensor tOgO = gmem_thr_copy_O.partition_D(output_views());
  Tensor tOcO = gmem_thr_copy_O.partition_D(cO);
  Tensor tOsO = gmem_thr_copy_O.partition_S(sO);
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  copy(gmem_tiled_copy_O, tOsO, tOrO);
  copy_rows(gmem_tiled_copy_O, tOrO, tOgO, tOcO, rows_here);
}

}  // namespace fa::fwd
