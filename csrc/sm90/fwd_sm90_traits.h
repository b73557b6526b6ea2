// Kernel traits of the SM90 forward (FlashAttention-3 design): tile shapes, warpgroup roles,
// shared-memory layouts, the wgmma tiles and the TMA copy types.
//
// One CTA owns a query tile of 64 rows per consumer warpgroup (two, or three for the small head
// dims where the softmax weighs more against the products); each warpgroup has its own part of Q
// in shared memory, and all read the same K/V pipeline stages.  One more warpgroup only issues
// TMA loads.
#pragma once

#include "sm90_utils.h"
#include "common/tile_order.h"

#include <type_traits>

namespace fa::sm90 {

using namespace cute;

template <int kHeadDim_, int kBlockN_, int kStages_, typename Element_, int kConsumerWarpgroups_ = 2>
struct FwdTraits {
  using Element = Element_;
  using ElementAccum = float;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kRowsPerWarpgroup = 64;  // one wgmma M extent
  static constexpr int kConsumerWarpgroups = kConsumerWarpgroups_;
  static_assert(kConsumerWarpgroups >= 1 && kConsumerWarpgroups <= 3);
  static constexpr int kBlockM = kRowsPerWarpgroup * kConsumerWarpgroups;
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  static constexpr int kThreads = 128 + kConsumerThreads;  // producer warpgroup first
  // A single consumer warpgroup cannot take turns with another of its CTA, so two such CTAs share
  // an SM: one's tile starts (Q, the first S product) and ends (the output store) under the other's
  // products, which is what short tiles lack.
  static constexpr int kCtasPerSm = kConsumerWarpgroups == 1 ? 2 : 1;
  // The producer needs a handful of registers; consumers hold S, P and O accumulators and take
  // what the producer gives up (setmaxnreg_fits).  Taking tiles
  // from the dynamic scheduler (masked launches with one or two consumer warpgroups up to head dim
  // 128, see TileScheduler) the producer's loop also holds the mask's and the tile order's values and
  // the counter: 16 registers more for it, 8 fewer per consumer thread (with fewer it spilled about
  // 190 bytes at head dim 128).  Wider head dims and three consumer warpgroups have none to spare
  // (with them 1-3% and 19-34% slower on an H100, sm90_fwd_h100.md), nor head dim 96 (its
  // consumers spill 4-16 bytes at 232): those take folded units (below).
  static constexpr bool kDynamicWhenMasked = kConsumerWarpgroups <= 2 && (kHeadDim == 64 || kHeadDim == 128);
  // The others' masked launches take each head's tiles in folded units of a long and a short tile
  // on persistent CTAs (TileScheduler), except head dim 256's 80-key tiles (more than 1k keys),
  // which keep a CTA per tile.  Same-lease A/B against a CTA per tile (H100, 16k tokens, causal,
  // benchmarks/results/ab_h100_sm90_fwd_folded*.json): head dim 96 1.22x at 512 keys, 1.15x at 1k,
  // 1.06x at 2k, 1.01x at 8k; 192 0.995-1.026x; 64's 192-row tiles 1.04-1.05x at 4k, level at 8k,
  // 0.994x at 16k; 256's 64-key tiles 1.015x at 512, 0.989x at 1k, its 80-key ones 0.99x from 2k.
  // (The same with the choice made at run time, per key count, ran 3% slower at head dim 64 4k.)
  static constexpr bool kFoldedWhenMasked = !kDynamicWhenMasked && !(kHeadDim == 256 && kBlockN == 80);
  template <bool Dynamic>
  static constexpr int kProducerRegisters = Dynamic ? 40 : 24;
  // One consumer warpgroup: two CTAs of 256 threads share the register file (128 each at launch).
  template <bool Dynamic>
  static constexpr int kConsumerRegisters =
      kConsumerWarpgroups == 1 ? 256 - kProducerRegisters<Dynamic>
                               : (kConsumerWarpgroups == 2 ? (Dynamic ? 232 : 240) : 160);
  static_assert(setmaxnreg_fits(kProducerRegisters<false>, kConsumerThreads, kConsumerRegisters<false>,
                                kCtasPerSm) &&
                    setmaxnreg_fits(kProducerRegisters<kDynamicWhenMasked>, kConsumerThreads,
                                    kConsumerRegisters<kDynamicWhenMasked>, kCtasPerSm),
                "setmaxnreg cannot hand out more registers than the CTA was launched with");
  static_assert(kHeadDim % 32 == 0 && kBlockN % 16 == 0);

  using TileQK = Shape<Int<kRowsPerWarpgroup>, Int<kBlockN>, Int<kHeadDim>>;  // S = Q.K^T
  using TilePV = Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>, Int<kBlockN>>;  // O += P.V
  // Both operands of S from shared memory; P of O += P.V straight from the softmax registers,
  // V read as its transpose (head dim contiguous, so MN-major for this product).
  using TiledMmaQK = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, ElementAccum, TileQK>()));
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, ElementAccum, TilePV, GMMA::Major::K, GMMA::Major::MN>()));

  // 128-byte swizzled rows when the head dim allows (64 elements), else 64-byte rows.
  using SmemAtom = std::conditional_t<kHeadDim % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
                                      GMMA::Layout_K_SW64_Atom<Element>>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V as (head dim, keys, stage): the same bytes, modes swapped.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutO = SmemLayoutQ;  // a warpgroup's output: its own buffer, or a K/V stage (kSeparateO)

  // Global tensors as TMA sees them: (seqlen, head dim, heads, batch).
  using ShapeQKV = Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQKV = Stride<int64_t, _1, int64_t, int64_t>;
  using LayoutQKV = Layout<ShapeQKV, StrideQKV>;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), LayoutQKV{}),
                                      SmemLayoutQ{}, Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), LayoutQKV{}),
                                       take<0, 2>(SmemLayoutKV{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), LayoutQKV{}),
                                      SmemLayoutO{}, Shape<Int<kRowsPerWarpgroup>, Int<kHeadDim>>{}, _1{}));

  static constexpr uint32_t kTmaBytesQ = kRowsPerWarpgroup * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

  // kQ Q buffers (each with its barriers and tile number), used by tiles in turn.
  template <int kQ>
  struct SharedStorageNoO {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q[kQ * kConsumerWarpgroups];
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    alignas(16) uint64_t barrier_q[kQ];  // Q of a tile has landed
    uint64_t barrier_q_free[kQ];         // Q of a tile is no longer read
    int tile[kQ];                        // which tile barrier_q's phase is for; -1: none is left
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
  };
  template <int kQ>
  struct SharedStorageWithO : SharedStorageNoO<kQ> {
    cute::array_aligned<Element, cosize_v<SmemLayoutO>, 1024> o[kConsumerWarpgroups];
  };
  // Q is free as soon as a tile's last S product is done, so the next tile's Q loads under the
  // last P.V and the epilogue.  The output is staged for its TMA store in a buffer of its own where
  // one fits, whose store is waited for a tile later.  Otherwise (head dims 192 and 256, head dim
  // 128's 176-key tiles) the first warpgroup stages it over the tile's last K stage and the second
  // over its last V stage, once every warpgroup's products are done with them; the storing thread
  // of each holds that stage (keeps back its pipeline release) until its store has read it.  (Before,
  // the output was staged over Q, so a tile's Q loaded only after the previous tile's store: a
  // wait per tile with the consumers idle.)
  // An SM's 228 KB less 1 KB the hardware reserves per CTA.
  static constexpr int kSmemLimit = (228 / kCtasPerSm - 1) * 1024;
  static constexpr bool kSeparateO = sizeof(SharedStorageWithO<1>) <= kSmemLimit;
  static constexpr int kStageElems = kBlockN * kHeadDim;
  static_assert(kSeparateO || (kConsumerWarpgroups == 2 && kBlockN >= kRowsPerWarpgroup &&
                               cosize_v<SmemLayoutKV> == kStageElems * kStages && kStageElems * sizeof(Element) % 1024 == 0),
                "an output staged over K/V needs a stage per warpgroup (K, V), each as large and 1 KB aligned");
  // With room for a second Q buffer the next tile's Q loads a whole tile ahead instead of under
  // this tile's last P.V, which short tiles otherwise wait for.
  static constexpr int kQBuffers = kSeparateO && sizeof(SharedStorageWithO<2>) <= kSmemLimit ? 2 : 1;
  using SharedStorage = std::conditional_t<kSeparateO, SharedStorageWithO<kQBuffers>, SharedStorageNoO<1>>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= kSmemLimit, "tile does not fit in its share of an SM90 SM's shared memory");
};

// Which of FlashAttention-3's scheduling ideas a kernel instance uses (all of them, except in the
// ablation instances that measure what each one is worth).
template <bool kPingPong_ = true, bool kIntraWgOverlap_ = true, bool kWarpSpecialized_ = true, bool kL2Hints_ = true>
struct Schedule {
  static constexpr bool kPingPong = kPingPong_;              // warpgroups take turns on the tensor cores
  static constexpr bool kIntraWgOverlap = kIntraWgOverlap_;  // softmax of S[j] under P[j+1].V[j+1]
  // A producer warpgroup that only loads.  Without it the first consumer thread issues the loads
  // between its own products, and ping-pong is off (that thread may wait for the other warpgroup
  // to free a stage, which would deadlock with the turn-taking).
  static constexpr bool kWarpSpecialized = kWarpSpecialized_;
  // K and V are read by every query tile of their head, Q once: ask L2 to keep the former.
  static constexpr bool kL2Hints = kL2Hints_;
  static_assert(kWarpSpecialized || !kPingPong);
};
using FullSchedule = Schedule<>;

// Everything the kernel reads, passed as one __grid_constant__ argument (the TMA descriptors must
// live in parameter, constant or global memory).
template <class Traits>
struct FwdArgs {
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  typename Traits::TmaO tma_o;
  float* lse;
  int32_t batch, heads_q, heads_kv, seqlen_q, seqlen_k;
  float scale, softcap;
  int32_t window_left, window_right, bottom_right;
  TileOrder order;  // masked launches: the order tiles are taken in (common/tile_order.h)
  int32_t counter;  // dynamically scheduled launches: their tile counter (TileScheduler); else unused
};

}  // namespace fa::sm90
