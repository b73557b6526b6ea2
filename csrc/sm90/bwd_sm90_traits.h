// Kernel traits of the SM90 backward (FlashAttention-3 design): tile shapes, warpgroup roles,
// shared-memory layouts, the wgmma tiles and the TMA copy types.
//
// One CTA owns a block of keys of one (batch, kv head) and walks the query tiles (64 rows) of
// every query head of its group that can see those keys.  Up to head dim 128 the block has 128
// keys and each of the two consumer warpgroups owns 64 of them, computing everything with the
// keys as the wgmma M dimension:
//     S^T  = K_w Q^T        dP^T = V_w dO^T               (both operands from shared memory)
//     dV_w += P^T dO        dK_w += dS^T Q                (P^T, dS^T straight from registers)
//     dQ   += dS K_w        (dS^T through shared memory; dQ through shared memory too, added
//                            into an fp32 buffer by one bulk reduce per tile)
// so the transposes the FlashAttention-2 backward makes through shared memory are only the
// operand views of wgmma (MN-major B operands).  With head dim 128 the warpgroups split dQ's
// columns instead (see kDqSplit).
// Over head dim 128 a warpgroup's dK and dV (64 keys x D each) would take 2 * D / 2 fp32
// registers per thread (256 at head dim 256), so the block has 64 keys that both warpgroups share
// (kSplitHeadDim): each computes S^T and dP^T for half of the tile's queries, writes its P^T and
// dS^T to shared memory, and after a barrier accumulates dV, dK and dQ for half of the head dim's
// columns from both halves (all five products then read shared memory only).
// One more warpgroup moves data: one thread issues the TMA loads (K and V once, then Q, dO and
// their row statistics, lse and rowsum(dO * O), per query tile through a pipeline), one warp adds
// each tile's dQ from shared memory into global memory (bulk reduce-add in L2) while the
// consumers go on with the next tile.  At head dim 256 the staging buffer does not fit beside
// two pipeline stages; the consumers add dQ with vector atomics instead (kDqAtomic).
#pragma once

#include "sm90_utils.h"
#include "common/tile_order.h"

#include <type_traits>

namespace fa::sm90 {

using namespace cute;

// Three Q/dO pipeline stages (two tiles loading while one is computed).  Measured against two on
// an H100 (bwd_quick.py, 16k tokens, two leases, 2026-11-23): head dim 64 faster at all ten points
// (+1% to +8%), 96 and 128 between -9% and +8%, as noisy as the peers' own run-to-run spread.  At
// head dim 128 the three stages leave 1 KB of the 227 KB (the static_assert below).  Head dim 64
// takes four (1.009-1.017x at all six points of a same-lease A/B, 2026-11-24,
// ab_h100_sm90_bwd_d64_stages.json; five gave the same).
// Head dims over 128 take two stages: 2 x (Q + dO) tiles of 64 x 256 are 128 KB.
// kDqSplit64: head dim 64 splits dQ's columns between the warpgroups (see kDqSplit).
template <int kHeadDim_, typename Element_, int kStages_ = (kHeadDim_ > 128 ? 2 : kHeadDim_ == 64 ? 4 : 3),
          bool kDqSplit64_ = false>
struct BwdTraits {
  using Element = Element_;
  using ElementAccum = float;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;  // query rows per step: one wgmma N extent of S^T
  static constexpr int kKeysPerWarpgroup = 64;  // one wgmma M extent
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr bool kSplitHeadDim = kHeadDim > 128;
  // K/V tiles of 64 keys per CTA: one per warpgroup, or one shared by both.
  static constexpr int kKVTiles = kSplitHeadDim ? 1 : kConsumerWarpgroups;
  static constexpr int kBlockN = kKeysPerWarpgroup * kKVTiles;
  // A warpgroup's queries of S^T and dP^T, and its columns of dK and dV.
  static constexpr int kQueriesPerWarpgroup = kSplitHeadDim ? kBlockM / kConsumerWarpgroups : kBlockM;
  static constexpr int kDkvCols = kSplitHeadDim ? kHeadDim / kConsumerWarpgroups : kHeadDim;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  static constexpr int kThreads = 128 + kConsumerThreads;  // producer warpgroup first
  // 128 x 24 + 256 x 240 is all of the CTA's allocation (168 x 384 at launch, setmaxnreg_fits).
  static constexpr int kProducerRegisters = 24;
  // dK and dV accumulators (64 x D each) stay in registers for the whole CTA.
  static constexpr int kConsumerRegisters = 240;
  static_assert(setmaxnreg_fits(kProducerRegisters, kConsumerThreads, kConsumerRegisters),
                "setmaxnreg cannot hand out more registers than the CTA was launched with");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head dims 64..256 in steps of 32");

  // Head dim 64: a warpgroup's K and V (64 x 64, 16 registers per thread each) stay in registers
  // as the A operands of S^T and dP^T, so that those products read only Q and dO from shared
  // memory.  A 64 x 64 x 16 product with both operands there reads 4 KB in the 32 cycles of its
  // math, the SM's whole shared-memory bandwidth.  Wider head dims have no registers to spare
  // beside dK and dV.
  static constexpr bool kKVInRegisters = kHeadDim == 64;
  // (keys, queries, head dim): S^T and dP^T.
  using TileSdP = Shape<Int<kKeysPerWarpgroup>, Int<kQueriesPerWarpgroup>, Int<kHeadDim>>;
  using TiledMmaSdP = decltype(make_tiled_mma(std::conditional_t<
      kKVInRegisters, decltype(GMMA::rs_op_selector<Element, Element, ElementAccum, TileSdP>()),
      decltype(GMMA::ss_op_selector<Element, Element, ElementAccum, TileSdP>())>{}));
  // (keys, head dim columns, queries): dV += P^T dO and dK += dS^T Q; dO and Q read transposed.
  // P^T and dS^T from registers, or with kSplitHeadDim from shared memory (both halves).
  using TiledMmadKV = decltype(make_tiled_mma(std::conditional_t<
      kSplitHeadDim,
      decltype(GMMA::ss_op_selector<Element, Element, ElementAccum, Shape<Int<kKeysPerWarpgroup>, Int<kDkvCols>, Int<kBlockM>>,
                                    GMMA::Major::K, GMMA::Major::MN>()),
      decltype(GMMA::rs_op_selector<Element, Element, ElementAccum, Shape<Int<kKeysPerWarpgroup>, Int<kDkvCols>, Int<kBlockM>>,
                                    GMMA::Major::K, GMMA::Major::MN>())>{}));
  // (queries, dQ columns, keys): dQ = dS K, dS stored query-contiguous, K read transposed.  With a
  // head dim of 128 each warpgroup computes half of dQ's columns over all 128 keys (both
  // warpgroups' dS), so every dQ element is added to dq_accum once, not once per warpgroup: half
  // the reduce-add traffic into L2, for a barrier between the warpgroups per tile.  A half is one
  // 64-column atom of the 128-byte swizzle (head dim 64's halves take 64-byte swizzled rows, below;
  // head dim 96's 48 columns fit neither).
  // With kSplitHeadDim the warpgroups split every product's columns this way.
  // Head dim 64 splits too where asked (kDqSplit64_: the launches without a mask, see run_bwd),
  // into 32-column halves; those are whole atoms of K^T only with 64-byte swizzled rows, which K
  // (and V beside it) then take (SmemAtomKV).
  static constexpr bool kDqSplit = (kHeadDim == 64 && kDqSplit64_) || kHeadDim == 128 || kSplitHeadDim;
  static constexpr int kDqCols = kDqSplit ? kHeadDim / kConsumerWarpgroups : kHeadDim;
  static constexpr int kDqPart = kBlockM * kDqCols;  // fp32 elements of dQ one warpgroup adds per tile
  // dQ added by each consumer thread's vector atomics, not staged for the writer warp's bulk reduce.
  static constexpr bool kDqAtomic = kHeadDim > 192;
  // Staging buffers per warpgroup: with two, a tile's dQ is stored while the writer's reduce of the
  // previous tile still reads the other (head dim 64, where the smem is there; a single buffer
  // made the store wait for that reduce).
  static constexpr int kDqBuffers = kHeadDim == 64 ? 2 : 1;
  using TiledMmadQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, ElementAccum, Shape<Int<kBlockM>, Int<kDqCols>, Int<kKeysPerWarpgroup>>,
                           GMMA::Major::MN, GMMA::Major::MN>()));

  // 128-byte swizzled rows when the head dim allows (64 elements), else 64-byte rows; with
  // kSplitHeadDim a warpgroup's half of the columns must start at an atom (head dim 192: 96).
  using SmemAtom = std::conditional_t<kHeadDim % 64 == 0 && kDkvCols % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
                                      GMMA::Layout_K_SW64_Atom<Element>>;
  // Q and dO: (queries, head dim, stage); transposed views (head dim, queries, stage).
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  // A warpgroup's K or V: (keys, head dim); K transposed (head dim, keys).
  using SmemAtomKV = std::conditional_t<kDqSplit && kDqCols == 32, GMMA::Layout_K_SW64_Atom<Element>, SmemAtom>;
  using SmemLayoutK = decltype(tile_to_shape(SmemAtomKV{}, Shape<Int<kKeysPerWarpgroup>, Int<kHeadDim>>{}));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kKeysPerWarpgroup>>{}, Step<_2, _1>{})));
  // dS as the A operand of dQ: (queries, keys, buffer), queries contiguous, so that the S^T
  // accumulator (keys, queries) is written as pairs of consecutive queries through the view dSt.
  // Two buffers: a tile's dS is written while no product reads that buffer.
  using SmemLayoutdS = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<Element>{},
                                              Shape<Int<kBlockM>, Int<kKeysPerWarpgroup>, _2>{}));
  using SmemLayoutdSt = decltype(composition(
      SmemLayoutdS{}, make_ordered_layout(Shape<Int<kKeysPerWarpgroup>, Int<kBlockM>, _2>{}, Step<_2, _1, _3>{})));
  // The same bytes as dSt, as the K-major A operand (keys, queries, buffer) of dV and dK when P^T
  // and dS^T come from shared memory (kSplitHeadDim); P^T has buffers of its own in that layout.
  using SmemLayoutPt = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                              Shape<Int<kKeysPerWarpgroup>, Int<kBlockM>, _2>{}));

  using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;  // (seqlen, head dim, heads, batch)
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using LayoutQKV = Layout<ShapeQKV, StrideQKV>;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), LayoutQKV{}),
                                      take<0, 2>(SmemLayoutQ{}), Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), LayoutQKV{}),
                                      SmemLayoutK{}, Shape<Int<kKeysPerWarpgroup>, Int<kHeadDim>>{}, _1{}));
  using TmadKV = decltype(make_tma_copy(SM90_TMA_STORE{}, make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), LayoutQKV{}),
                                        SmemLayoutK{}, Shape<Int<kKeysPerWarpgroup>, Int<kHeadDim>>{}, _1{}));

  // A pipeline stage: a Q (or dO) tile plus its rows' lse (or rowsum(dO * O)), one fp32 each.
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element) + kBlockM * sizeof(float);
  static constexpr uint32_t kTmaBytesKV = 2 * kBlockN * kHeadDim * sizeof(Element);

  // Shared buffers some configurations leave out (zero bytes then).
  template <class T, int N, int Align>
  struct Buffer {
    cute::array_aligned<T, N, Align> a;
    CUTE_DEVICE T* data() { return a.data(); }
  };
  template <class T, int Align>
  struct Buffer<T, 0, Align> {
    CUTE_DEVICE T* data() { return nullptr; }
  };

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> k[kKVTiles];
    cute::array_aligned<Element, cosize_v<SmemLayoutK>, 1024> v[kKVTiles];
    cute::array_aligned<Element, cosize_v<SmemLayoutdS>, 1024> ds[kKVTiles];
    Buffer<Element, kSplitHeadDim ? cosize_v<SmemLayoutPt> : 0, 1024> pt;
    // Each warpgroup's dQ of the current tile, in the dQ fragment order of dq_accum.
    Buffer<float, kDqAtomic ? 0 : kDqPart * kConsumerWarpgroups * kDqBuffers, 128> dq;
    cute::array_aligned<float, kBlockM * kStages, 16> lse_log2;
    cute::array_aligned<float, kBlockM * kStages, 16> dsum;
    alignas(16) uint64_t barrier_kv;
    int head_kv_and_batch[2];  // this CTA's tile, for the producer's loop (see the kernel)
    typename Pipeline::SharedStorage pipeline_q;
    typename Pipeline::SharedStorage pipeline_do;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in an SM90 CTA's shared memory");
};

// Named barriers (0 is __syncthreads).  dQFull / dQEmpty hand a warpgroup's dQ buffer to the
// writer warp and back: 128 consumer threads plus the writer's 32.
struct BwdBarriers {
  static constexpr int kDqHandoffThreads = 128 + 32;
  CUTE_HOST_DEVICE static constexpr int warpgroup(int w) { return 1 + w; }
  static constexpr int kBothWarpgroups = 3;
  // Per warpgroup and staging buffer: ids 4-7, and 8-11 for the second buffer.
  CUTE_HOST_DEVICE static constexpr int dq_full(int w, int buffer = 0) { return 4 + w + 4 * buffer; }
  CUTE_HOST_DEVICE static constexpr int dq_empty(int w, int buffer = 0) { return 6 + w + 4 * buffer; }
};

// Everything the kernel reads, as one __grid_constant__ argument.
template <class Traits>
struct BwdArgs {
  typename Traits::TmaQ tma_q;
  typename Traits::TmaQ tma_do;
  typename Traits::TmaK tma_k;
  typename Traits::TmaK tma_v;
  typename Traits::TmadKV tma_dk;
  typename Traits::TmadKV tma_dv;
  // [batch, heads_q, seqlen_q_rounded] fp32: lse * log2(e) (+inf for rows without keys and past
  // seqlen_q) and rowsum(dO * O) (0 past seqlen_q), from the preprocessing kernel.
  float const* lse_log2;
  float const* dsum;
  // [batch, heads_q, seqlen_q_rounded, head dim] fp32, 64-row tiles in the dQ fragment order.
  float* dq_accum;
  // Deterministic mode (else null): per 64-row tile of dq_accum, 1 + the last key block that added.
  int* dq_semaphore;
  int32_t batch, heads_q, heads_kv, seqlen_q, seqlen_k, seqlen_q_rounded;
  float scale, softcap;
  int32_t window_left, window_right, diag_offset;
  TileOrder order;  // masked launches: which key block each CTA takes (common/tile_order.h)
};

}  // namespace fa::sm90
