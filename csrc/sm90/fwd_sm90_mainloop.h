// Main loop of the SM90 forward: the producer's TMA loads and the consumers' wgmma + softmax.
//
// Key blocks run from the last to the first, so that with a causal or window mask the blocks that
// need masking come first and the rest run unmasked.
//
// Consumer schedule per key block j (the intra-warpgroup pipeline of FlashAttention-3):
//     issue S[j] = Q.K[j]^T;  rescale O (for P[j+1]'s max);  issue O += P[j+1].V[j+1];
//     wait for S[j];  softmax of S[j] (overlaps the P.V product);  wait for P.V;  P[j] = S[j]
// and the consumer warpgroups take turns issuing their products (ping-pong): while one
// warpgroup's wgmmas run, the others are in their softmax.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "common/cute_utils.h"
#include "common/mask.h"
#include "fwd_sm90_softmax.h"
#include "fwd_sm90_traits.h"

namespace fa::sm90 {

using namespace cute;

// Named barriers (id 0 is __syncthreads): consumer warpgroup w waits on sched_barrier(w) before
// issuing its products and then releases the next warpgroup's, in a ring; epilogue_barrier(w)
// gathers one warpgroup before its output store; products_done_barrier gathers every consumer
// thread before an output is staged over K/V (Traits::kSeparateO).
CUTE_DEVICE int sched_barrier(int warpgroup) { return 1 + warpgroup; }
template <class Traits>
CUTE_DEVICE int epilogue_barrier(int warpgroup) { return 1 + Traits::kConsumerWarpgroups + warpgroup; }
template <class Traits>
CUTE_DEVICE int products_done_barrier() { return 1 + 2 * Traits::kConsumerWarpgroups; }

// A CTA's tile number `index` uses Q buffer index % kQBuffers, for that buffer's
// (index / kQBuffers)-th time: the buffer and the parity of its barriers' phase.
template <class Traits>
CUTE_DEVICE int q_buffer(int index) { return index % Traits::kQBuffers; }
template <class Traits>
CUTE_DEVICE int q_phase(int index) { return (index / Traits::kQBuffers) & 1; }
// Warpgroup w's part of Q in buffer b.
template <class Traits>
CUTE_DEVICE typename Traits::Element* q_smem(typename Traits::SharedStorage& smem, int b, int w) {
  return smem.q[b * Traits::kConsumerWarpgroups + w].data();
}

// Range of key blocks [min, max) a query tile must visit.
struct BlockRange {
  int min, max;
};

// Key blocks that query rows [row_begin, last_row] see.
template <int kBlockN, bool Is_local>
CUTE_DEVICE BlockRange rows_key_blocks(int row_begin, int last_row, KeyRange const& keys) {
  BlockRange r{0, ceil_div(keys.seqlen_k, kBlockN)};
  if constexpr (Is_local) {
    r.min = keys.lo(row_begin) / kBlockN;
    const int hi = keys.hi(last_row);
    r.max = min(r.max, hi <= 0 ? 0 : ceil_div(hi, kBlockN));
  }
  return r;
}

template <class Traits, bool Is_local>
CUTE_DEVICE BlockRange key_blocks(int m_block, int seqlen_q, KeyRange const& keys) {
  const int row_begin = m_block * Traits::kBlockM;
  return rows_key_blocks<Traits::kBlockN, Is_local>(row_begin, min(seqlen_q, row_begin + Traits::kBlockM) - 1, keys);
}

// Tile counters of dynamically scheduled launches, one per launch in flight (the host hands them
// out round robin).  A launch's counter counts its tiles taken beyond the first wave and returns to
// zero when the last one is taken, ready for the launch that gets it next.
constexpr int kTileCounters = 1024;
static __device__ unsigned int g_tile_counters[kTileCounters];

// The grid's tiles in launch order: query tiles of one head are adjacent (they share K and V in
// L2).  Without a mask every tile costs the same: CTA c (one per SM) takes tiles c, c + gridDim.x,
// ....  With a causal or window mask tile costs differ by up to the number of key blocks and that
// static assignment would leave some SMs with several times the work of others.  Two remedies:
//  - kDynamic: each head's tiles run from the last (most keys) to the first, the launch's
//    TileOrder takes the last group of heads rank by rank so that short tiles fill the tail, and
//    each CTA takes the next tile of that order from an atomic counter when it starts one, as a
//    hardware launch of one CTA per tile would, but with the next tile's loads issued under the
//    current one.  The producer's loop then needs registers for the counter (Traits::kDynamicWhenMasked).
//  - kFolded, where those registers are not to be had (Traits::kFoldedWhenMasked): a head's tiles
//    are folded into units of two, its longest with its shortest, its second longest with its
//    second shortest, ..., whose costs with a causal mask are the same (m + 1 of a head's m
//    tiles' worth of keys), and CTA c works units c, c + gridDim.x, ..., each long tile first,
//    with the next tile's loads under the current one as without a mask.  Units of one head are
//    adjacent, so the CTAs working them at once share its K and V in L2.  What this loses against
//    a CTA per tile is the last round of units, which leaves SMs idle when their count is not a
//    multiple of the grid's.
// Otherwise (head dim 256's widest tiles, and without a producer warpgroup: the ablation without
// warp specialisation) a masked launch has one CTA per tile in the TileOrder.  The kernel and the
// launch both go by kDynamic and kFolded.
template <class Traits, class Schedule, bool Is_local>
struct TileScheduler {
  static constexpr bool kDynamic = Schedule::kWarpSpecialized && Is_local && Traits::kDynamicWhenMasked;
  static constexpr bool kFolded = Schedule::kWarpSpecialized && Is_local && Traits::kFoldedWhenMasked;
  int num_m_blocks, heads, total;
  int end;  // the loops run while t < end: total, or (kFolded) past the last unit's tiles
  TileOrder order;
  int counter;

  CUTE_DEVICE explicit TileScheduler(FwdArgs<Traits> const& args)
      : num_m_blocks((args.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM), heads(args.heads_q),
        total(num_m_blocks * args.heads_q * args.batch), end(kFolded ? INT_MAX : total), order(args.order),
        counter(args.counter) {}

  struct Tile {
    int m_block, head, batch;
    BlockRange blocks;
    CUTE_DEVICE bool empty() const { return blocks.max <= blocks.min; }
  };

  CUTE_DEVICE Tile tile(int t, int seqlen_q, KeyRange const& keys) const {
    int m = t % num_m_blocks, head_batch = t / num_m_blocks;
    if constexpr (kFolded) {
      // t = CTA + step * gridDim.x; steps 2j and 2j + 1 are unit CTA + j * gridDim.x.
      const int step = t / int(gridDim.x);
      int f;
      unit_of(t - step * int(gridDim.x) + (step >> 1) * int(gridDim.x), head_batch, f);
      m = (step & 1) ? f : num_m_blocks - 1 - f;
    } else if constexpr (Is_local) {
      order.tile(t, m, head_batch);
      m = num_m_blocks - 1 - m;
    }
    Tile tile{m, head_batch % heads, head_batch / heads, {}};
    tile.blocks = key_blocks<Traits, Is_local>(tile.m_block, seqlen_q, keys);
    return tile;
  }

  // kFolded: units per head (the middle tile of an odd count is a unit of one) and in the launch.
  CUTE_HOST_DEVICE static int units_per_head(int m_blocks) { return (m_blocks + 1) / 2; }
  CUTE_DEVICE void unit_of(int u, int& head_batch, int& f) const {
    const int per_head = units_per_head(num_m_blocks);
    head_batch = u / per_head;
    f = u - head_batch * per_head;
  }

  // The producer's next tile, taken once it has issued the current one's loads (those run ahead
  // of the consumers by the pipeline's stages, which cover the atomic's latency); the consumers'
  // too, except under kDynamic, where the producer posts each tile's number.
  CUTE_DEVICE int next_tile(int t) const {
    if constexpr (kFolded) {
      const int grid = int(gridDim.x);
      int next = t + grid;
      int step = next / grid;
      const int units = units_per_head(num_m_blocks) * (total / num_m_blocks);
      if (step & 1) {
        int head_batch, f;
        unit_of(int(blockIdx.x) + (step >> 1) * grid, head_batch, f);
        if (2 * f + 1 == num_m_blocks) {  // the middle tile: a unit of one
          next += grid;
          ++step;
        }
      }
      return int(blockIdx.x) + (step >> 1) * grid < units ? next : end;
    } else if constexpr (!kDynamic) {
      return t + gridDim.x;
    } else {
      const unsigned ticket = atomicAdd(&g_tile_counters[counter], 1u);
      // Every CTA takes tickets until one is past the end: total - gridDim.x tiles and one ticket
      // per CTA, `total` in all, so the one numbered total - 1 is the launch's last.
      if (ticket == unsigned(total - 1)) atomicExch(&g_tile_counters[counter], 0u);
      return int(gridDim.x + ticket);
    }
  }
};

// The TMA loads, issued by a single thread: the producer warpgroup's first thread, or (in the
// ablation without warp specialisation) the first consumer thread between its products.  Rows past
// seqlen (Q, K and V alike) are zero-filled by the TMA unit.
//
// Tiles take the Q buffers (Traits::kQBuffers) in turn.  Q of a tile waits on its buffer's
// barrier_q_free: every consumer thread is past the last S product of the tile that used it before
// (the previous tile with one buffer, so Q loads under that tile's last P.V and epilogue; with two
// the one before, long done, so Q lands a whole tile ahead), and goes before the tile's first K/V
// stages, which may wait for the previous tile's output store (staged over its last stage where
// the output has no buffer of its own).  Every tile, empty or not, completes one phase of its
// buffer's barrier_q and one of its barrier_q_free, so producer and consumers never drift apart.
// Under the dynamic scheduler each phase of barrier_q also carries the tile's number (the
// buffer's smem.tile, written before the arrival, whose release makes it visible), and one last
// phase with -1 ends the consumers' loop.
template <class Traits, class Schedule>
struct TileLoader {
  using Pipeline = typename Traits::Pipeline;
  static CUTE_DEVICE constexpr TMA::CacheHintSm90 hint_q() {
    return Schedule::kL2Hints ? TMA::CacheHintSm90::EVICT_FIRST : TMA::CacheHintSm90::EVICT_NORMAL;
  }
  static CUTE_DEVICE constexpr TMA::CacheHintSm90 hint_kv() {
    return Schedule::kL2Hints ? TMA::CacheHintSm90::EVICT_LAST : TMA::CacheHintSm90::EVICT_NORMAL;
  }
  static constexpr int kRows = Traits::kRowsPerWarpgroup;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;

  FwdArgs<Traits> const& args;
  typename Traits::SharedStorage& smem;
  Pipeline& pipeline_k;
  Pipeline& pipeline_v;
  typename Traits::PipelineState state_k = cutlass::make_producer_start_state<Pipeline>();
  typename Traits::PipelineState state_v = cutlass::make_producer_start_state<Pipeline>();

  // The start of tile t, number `index` of this CTA: Q (kPost: with the tile's number for the
  // consumers), then the first K/V stages.  Returns the next key block still to load.
  template <bool kPost, class Tile>
  CUTE_DEVICE int begin_tile(Tile const& tile, int index, int t) {
    int n = tile.blocks.max - 1;
    const int b = q_buffer<Traits>(index);
    wait_q_free(index);
    if constexpr (kPost) post_tile(b, t);
    if (tile.empty()) {
      cutlass::arch::ClusterBarrier::arrive(&smem.barrier_q[b]);
    } else {
      load_q(tile, b);
    }
    for (; n >= max(tile.blocks.min, tile.blocks.max - Traits::kStages); --n) load_kv(tile, n);
    return n;
  }

  // The tile `kQBuffers` before this CTA's tile number `index` (same Q buffer) no longer reads Q.
  CUTE_DEVICE void wait_q_free(int index) {
    if (index >= Traits::kQBuffers) {
      cutlass::arch::ClusterBarrier::wait(&smem.barrier_q_free[q_buffer<Traits>(index)],
                                          q_phase<Traits>(index - Traits::kQBuffers));
    }
  }

  // No tile is left for this CTA, which has started `index` of them.
  CUTE_DEVICE void finish(int index) {
    const int b = q_buffer<Traits>(index);
    wait_q_free(index);
    post_tile(b, -1);
    cutlass::arch::ClusterBarrier::arrive(&smem.barrier_q[b]);
  }

  // The consumers are past reading the buffer's previous number (and Q): its barrier_q_free has
  // been waited for.
  CUTE_DEVICE void post_tile(int b, int t) {
    *static_cast<volatile int*>(&smem.tile[b]) = t;  // volatile: stays before the arrival that publishes it
  }

  template <class Tile>
  CUTE_DEVICE void load_q(Tile const& tile, int b) {
    Tensor mQ = args.tma_q.get_tma_tensor(make_shape(args.seqlen_q, int32_t(kHeadDim), args.heads_q, args.batch));
    Tensor gQ = local_tile(mQ(_, _, tile.head, tile.batch), Shape<Int<kRows>, Int<kHeadDim>>{},
                           make_coord(_, _0{}));  // (64, D, m)
    auto tma_q = args.tma_q.get_slice(_0{});
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(
        &smem.barrier_q[b], Traits::kTmaBytesQ * Traits::kConsumerWarpgroups);
    CUTE_UNROLL
    for (int w = 0; w < Traits::kConsumerWarpgroups; ++w) {
      Tensor sQ = make_tensor(make_smem_ptr(q_smem<Traits>(smem, b, w)), typename Traits::SmemLayoutQ{});
      copy(args.tma_q.with(smem.barrier_q[b], 0, hint_q()),
           tma_q.partition_S(gQ)(_, _, _, tile.m_block * Traits::kConsumerWarpgroups + w), tma_q.partition_D(sQ));
    }
  }

  // K and V of key block n into the next free stages (waits until every warpgroup released them).
  template <class Tile>
  CUTE_DEVICE void load_kv(Tile const& tile, int n) {
    const int head_kv = tile.head / (args.heads_q / args.heads_kv);
    auto load = [&](auto const& tma, auto* smem_ptr, Pipeline& pipeline, auto& state) {
      Tensor m = tma.get_tma_tensor(make_shape(args.seqlen_k, int32_t(kHeadDim), args.heads_kv, args.batch));
      Tensor g = local_tile(m(_, _, head_kv, tile.batch), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));
      Tensor sm = make_tensor(make_smem_ptr(smem_ptr), typename Traits::SmemLayoutKV{});
      auto thr = tma.get_slice(_0{});
      pipeline.producer_acquire(state);
      copy(tma.with(*pipeline.producer_get_barrier(state), 0, hint_kv()), thr.partition_S(g)(_, _, _, n),
           thr.partition_D(sm)(_, _, _, state.index()));
      ++state;
    };
    load(args.tma_k, smem.k.data(), pipeline_k, state_k);
    load(args.tma_v, smem.v.data(), pipeline_v, state_v);
  }
};

// Consumer: one warpgroup's 64 query rows against every key block.  Leaves the unnormalised
// output in acc_o and the softmax statistics in softmax.  released_v(n) runs once V of block n is
// no longer read by this warpgroup (the hook of the loads without warp specialisation).  Returns
// the pipeline state (K's and V's alike) of the tile's last block, whose stage the warpgroup's
// storing thread has not released where the output is staged over it (Traits::kSeparateO).
template <class Traits, class Schedule, bool Is_local, bool Is_softcap, class AccO, class Softmax, class OnRelease>
CUTE_DEVICE typename Traits::PipelineState compute_tile(FwdArgs<Traits> const& args, typename Traits::SharedStorage& smem,
                              typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                              typename Traits::PipelineState& state_k, typename Traits::PipelineState& state_v,
                              int warpgroup, int thread, int qbuf, int row0, BlockRange blocks,
                              KeyRange const& keys, AccO& acc_o, Softmax& softmax, OnRelease&& released_v) {
  constexpr int kRows = Traits::kRowsPerWarpgroup;
  constexpr int kBlockN = Traits::kBlockN;
  using Element = typename Traits::Element;

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread);
  auto thr_pv = mma_pv.get_thread_slice(thread);

  Tensor sQ = make_tensor(make_smem_ptr(q_smem<Traits>(smem, qbuf, warpgroup)), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutVt{});
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);  // smem descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), acc_to_rowcol(tScS.layout()));
  Tensor acc_o_rc = make_tensor(acc_o.data(), acc_to_rowcol(acc_o.layout()));

  constexpr int kWarpgroups = Traits::kConsumerWarpgroups;
  // Without ping-pong (an ablation, or a single warpgroup) the warpgroups issue whenever they are ready.
  constexpr bool kPingPong = Schedule::kPingPong && kWarpgroups > 1;
  const int sched_mine = sched_barrier(warpgroup);
  const int sched_next = sched_barrier((warpgroup + 1) % kWarpgroups);
  constexpr int kSchedThreads = 2 * 128;  // the waiting warpgroup and the one releasing it
  auto sched_wait = [&] {
    if constexpr (kPingPong) named_barrier_sync(sched_mine, kSchedThreads);
  };
  // The last warpgroup gives the first an extra turn at the start, so it skips its last release.
  auto sched_release = [&](bool last) {
    if constexpr (kPingPong) {
      if (!(last && warpgroup == kWarpgroups - 1)) named_barrier_arrive(sched_next, kSchedThreads);
    }
  };
  if constexpr (kPingPong) {
    if (warpgroup == kWarpgroups - 1) named_barrier_arrive(sched_barrier(0), kSchedThreads);
  }

  const float tanh_scale = Is_softcap ? args.scale / args.softcap : 1.f;
  const int last_row = min(args.seqlen_q, row0 + kRows) - 1;
  // Scores of block n: softcap, then the mask where the block crosses the sequence end or a
  // diagonal of this warpgroup's rows.
  auto prepare_scores = [&](auto& acc_s, int n) {
    Tensor s = make_tensor(acc_s.data(), acc_to_rowcol(acc_s.layout()));
    if constexpr (Is_softcap) {
      CUTE_UNROLL
      for (int i = 0; i < size(s); ++i) s(i) = tanhf(s(i) * tanh_scale);
    }
    const int col0 = n * kBlockN;
    bool need_mask = col0 + kBlockN > keys.seqlen_k;
    if constexpr (Is_local) {
      need_mask = need_mask || col0 + kBlockN > keys.hi(row0) || col0 < keys.lo(last_row);
    }
    if (need_mask) mask_scores<Is_local>(s, tScS_rc, row0, col0, keys);
    return s;
  };

  // With a mask, a warpgroup's 64 rows may see fewer key blocks than the tile's rows: with key
  // tiles narrower than the query tile (head dims 64 with three warpgroups, 192 and 256) the first
  // warpgroup's last block is often wholly masked, a tenth of the products of a causal 512-token
  // launch.  It skips such blocks: waits for their stages and releases them (the producer loads
  // what the tile's rows need), and passes its turn, so that every warpgroup takes as many turns
  // as the tile has blocks plus one.  Only with a producer warpgroup and the intra-warpgroup
  // pipeline (one turn per block); a warpgroup whose rows see no key keeps the tile's range.
  constexpr bool kOwnRange = Is_local && kWarpgroups > 1 && Schedule::kWarpSpecialized && Schedule::kIntraWgOverlap;
  BlockRange mine = blocks;
  if constexpr (kOwnRange) {
    const BlockRange rows = rows_key_blocks<kBlockN, Is_local>(row0, last_row, keys);
    const BlockRange clipped{max(rows.min, blocks.min), min(rows.max, blocks.max)};
    if (clipped.max > clipped.min) mine = clipped;
  }
  // K or V of block n is no longer read by this warpgroup.  The stage of the tile's last block
  // may hold the output (see above); its storing thread releases it once the store has read it.
  const bool holds_last_stage = !Traits::kSeparateO && thread == 0;
  typename Traits::PipelineState last_state;
  auto release = [&](typename Traits::Pipeline& pipeline, typename Traits::PipelineState& state, int n) {
    if (n == blocks.min && &state == &state_k) last_state = state;  // V's state is the same
    if (!(holds_last_stage && n == blocks.min)) pipeline.consumer_release(state);
    ++state;
  };
  auto skip_block = [&](int n, bool last) {
    pipeline_k.consumer_wait(state_k);
    release(pipeline_k, state_k, n);
    pipeline_v.consumer_wait(state_v);
    release(pipeline_v, state_v, n);
    sched_wait();
    sched_release(last);
  };
  if constexpr (kOwnRange) {
    for (int n = blocks.max - 1; n >= mine.max; --n) skip_block(n, false);
  }

  // First block: S only.
  int n = mine.max - 1;
  Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kRows>, Int<kBlockN>>{});
  pipeline_k.consumer_wait(state_k);
  sched_wait();
  wgmma<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s);
  sched_release(false);
  warpgroup_wait<0>();
  release(pipeline_k, state_k, n);
  {
    Tensor s = prepare_scores(acc_s, n);
    softmax.template step<true>(s);
  }
  Tensor rP = make_tensor_like<Element>(acc_s);
  Tensor tOrP = make_tensor(rP.data(), acc_to_a_operand(rP.layout()));
  convert_into(acc_s, rP);

  if constexpr (!Schedule::kIntraWgOverlap) {  // ablation: S, softmax and P.V one after the other
    for (--n; n >= mine.min; --n) {
      pipeline_v.consumer_wait(state_v);
      sched_wait();
      wgmma<false, -1>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
      sched_release(false);
      warpgroup_wait<0>();
      release(pipeline_v, state_v, n + 1);
      released_v(n + 1);
      pipeline_k.consumer_wait(state_k);
      sched_wait();
      wgmma<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s);
      sched_release(false);
      warpgroup_wait<0>();
      release(pipeline_k, state_k, n);
      Tensor s = prepare_scores(acc_s, n);
      softmax.template step<false>(s);
      softmax.rescale_output(acc_o_rc);
      convert_into(acc_s, rP);
    }
  } else {
    for (--n; n >= mine.min; --n) {
      Tensor acc_s_next = partition_fragment_C(mma_qk, Shape<Int<kRows>, Int<kBlockN>>{});
      pipeline_k.consumer_wait(state_k);
      sched_wait();
      wgmma<true, -1>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s_next);
      // O holds blocks after n + 1 at the max before block n + 1: bring it to P[n+1]'s max while
      // S runs, not between the products.
      softmax.rescale_output(acc_o_rc);
      pipeline_v.consumer_wait(state_v);
      wgmma<false, -1>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
      sched_release(false);
      warpgroup_wait<1>();  // S is done; P.V may still run
      release(pipeline_k, state_k, n);
      Tensor s = prepare_scores(acc_s_next, n);
      softmax.template step<false>(s);
      warpgroup_wait<0>();  // P.V has read P: it may be overwritten
      release(pipeline_v, state_v, n + 1);
      released_v(n + 1);
      convert_into(acc_s_next, rP);
    }
    softmax.rescale_output(acc_o_rc);
  }

  // Every S product of the tile has been waited for: Q is free now, and the Q of the tile that
  // takes this buffer next may load.
  cutlass::arch::ClusterBarrier::arrive(&smem.barrier_q_free[qbuf]);

  // Last block's P.V.
  pipeline_v.consumer_wait(state_v);
  sched_wait();
  wgmma<false, -1>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
  const int skipped_after = mine.min - blocks.min;
  sched_release(skipped_after == 0);
  warpgroup_wait<0>();
  release(pipeline_v, state_v, mine.min);
  if constexpr (kOwnRange) {
    for (int n = mine.min - 1; n >= blocks.min; --n) skip_block(n, n == blocks.min);
  }
  return last_state;
}

}  // namespace fa::sm90
