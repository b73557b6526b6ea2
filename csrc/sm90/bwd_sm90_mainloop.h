// Main loop of the SM90 backward: the producer's TMA loads and one consumer warpgroup's five
// products per query tile (see bwd_sm90_traits.h for the roles).
//
// Consumer schedule per query tile (64 rows):
//     issue S^T = K Q^T, issue dP^T = V dO^T;  wait S;  P = exp2(S * scale - lse)  (under dP)
//     wait dP;  dS = P (dP - rowsum(dO * O));  issue dV += P^T dO;  dS -> shared memory
//     issue dQ = dS K, issue dK += dS^T Q;  wait dQ: dQ -> shared memory for the writer warp (under dK)
//     wait dK: release Q and dO
// With kSplitHeadDim, P^T goes to shared memory with dS^T, and dQ, dV, dK are issued after the
// barrier between the warpgroups (dQ first: it is added while dV and dK run).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "bwd_sm90_traits.h"
#include "common/cute_utils.h"
#include "common/mask.h"

namespace fa::sm90 {

using namespace cute;

// Query tiles [min, max) whose rows see at least one key of key block n_block (per query head).
struct QueryRange {
  int min, max;
};

template <class Traits, bool Is_local>
CUTE_DEVICE QueryRange query_blocks(BwdArgs<Traits> const& args, int n_block) {
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  QueryRange r{0, ceil_div(args.seqlen_q, kBlockM)};
  if constexpr (Is_local) {
    // Row i sees key j iff j - offset - window_right <= i <= j - offset + window_left.
    const int key_first = n_block * kBlockN;
    const int key_last = min(args.seqlen_k, key_first + kBlockN) - 1;
    if (args.window_right >= 0) r.min = max(0, key_first - args.diag_offset - args.window_right) / kBlockM;
    if (args.window_left >= 0) {
      const int last_row = key_last - args.diag_offset + args.window_left;
      r.max = last_row < 0 ? 0 : min(r.max, last_row / kBlockM + 1);
    }
  }
  return r;
}

// The producer's loads, issued by one thread.  Rows past the sequence ends are zero-filled by the
// TMA unit; their lse (+inf) makes P zero there.
template <class Traits>
struct BwdLoader {
  using Pipeline = typename Traits::Pipeline;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kKeys = Traits::kKeysPerWarpgroup;

  BwdArgs<Traits> const& args;
  typename Traits::SharedStorage& smem;
  Pipeline& pipeline_q;
  Pipeline& pipeline_do;
  typename Traits::PipelineState state_q = cutlass::make_producer_start_state<Pipeline>();
  typename Traits::PipelineState state_do = cutlass::make_producer_start_state<Pipeline>();

  CUTE_DEVICE void load_kv(int n_block, int head_kv, int batch) {
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&smem.barrier_kv, Traits::kTmaBytesKV);
    auto load = [&](auto const& tma, auto& dst) {
      Tensor m = tma.get_tma_tensor(make_shape(args.seqlen_k, int32_t(kHeadDim), args.heads_kv, args.batch));
      Tensor g = local_tile(m(_, _, head_kv, batch), Shape<Int<kKeys>, Int<kHeadDim>>{}, make_coord(_, _0{}));
      auto thr = tma.get_slice(_0{});
      CUTE_UNROLL
      for (int w = 0; w < Traits::kKVTiles; ++w) {
        Tensor s = make_tensor(make_smem_ptr(dst[w].data()), typename Traits::SmemLayoutK{});
        copy(tma.with(smem.barrier_kv), thr.partition_S(g)(_, _, _, n_block * Traits::kKVTiles + w),
             thr.partition_D(s));
      }
    };
    load(args.tma_k, smem.k);
    load(args.tma_v, smem.v);
  }

  // Q (with lse) and dO (with rowsum(dO * O)) of query tile m_block of one query head.
  CUTE_DEVICE void load_q_do(int m_block, int head, int batch) {
    const int64_t stats = (int64_t(batch) * args.heads_q + head) * args.seqlen_q_rounded + m_block * kBlockM;
    auto load = [&](auto const& tma, typename Traits::Element* dst, float const* stats_src, float* stats_dst,
                    Pipeline& pipeline, auto& state) {
      Tensor m = tma.get_tma_tensor(make_shape(args.seqlen_q, int32_t(kHeadDim), args.heads_q, args.batch));
      Tensor g = local_tile(m(_, _, head, batch), Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(_, _0{}));
      Tensor s = make_tensor(make_smem_ptr(dst), typename Traits::SmemLayoutQ{});
      auto thr = tma.get_slice(_0{});
      pipeline.producer_acquire(state);
      uint64_t* barrier = pipeline.producer_get_barrier(state);
      copy(tma.with(*barrier), thr.partition_S(g)(_, _, _, m_block), thr.partition_D(s)(_, _, _, state.index()));
      SM90_BULK_COPY_G2S::copy(stats_src + stats, barrier, stats_dst + state.index() * kBlockM,
                               kBlockM * int(sizeof(float)));
      ++state;
    };
    load(args.tma_q, smem.q.data(), args.lse_log2, smem.lse_log2.data(), pipeline_q, state_q);
    load(args.tma_do, smem.dout.data(), args.dsum, smem.dsum.data(), pipeline_do, state_do);
  }

};

// One consumer warpgroup: its 64 keys (with kSplitHeadDim: its half of the queries, then its half
// of the head dim's columns) against every query tile of every query head of the group,
// accumulating dK (unscaled) and dV, and adding dQ (unscaled) into dq_accum.
template <class Traits, bool Is_local, bool Is_softcap>
struct BwdConsumer {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kKeys = Traits::kKeysPerWarpgroup;
  static constexpr int kQueries = Traits::kQueriesPerWarpgroup;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr bool kSplit = Traits::kSplitHeadDim;

  // P and dS to 16 bits straight into the registers wgmma and the smem store read: an element-wise
  // copy of convert_type's result makes ptxas move each 16-bit half on its own (PRMT/LOP3 chains).
  // Not in the head dim 128 softcap instances, which then spill 48-80 bytes (the others 20-28, as
  // with the copy; 6-9% faster main kernel at head dim 128, ab_h100_sm90_bwd_convert_into_d128.json).
  template <class Acc, class Frag>
  CUTE_DEVICE static void to_operand(Acc const& acc, Frag& frag) {
    if constexpr (kHeadDim == 128 && Is_softcap) {
      copy(convert_type<Element>(acc), frag);
    } else {
      convert_into(acc, frag);
    }
  }

  BwdArgs<Traits> const& args;
  typename Traits::SharedStorage& smem;
  int warpgroup, thread;
  KeyRange keys;

  template <class AccdK, class AccdV>
  CUTE_DEVICE void run(int n_block, int head_kv, int batch, QueryRange range, typename Traits::Pipeline& pipeline_q,
                       typename Traits::Pipeline& pipeline_do, AccdK& acc_dk, AccdV& acc_dv) {
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmadKV mma_dkv;
    typename Traits::TiledMmadQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(thread);
    auto thr_dkv = mma_dkv.get_thread_slice(thread);
    auto thr_dq = mma_dq.get_thread_slice(thread);
    // This warpgroup's K/V tile, its first query of S^T, its first column of dK and dV.
    const int kv = kSplit ? 0 : warpgroup;
    const int query_first = kSplit ? warpgroup * kQueries : 0;
    constexpr int kStages = Traits::kStages;

    Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(smem.dout.data()), typename Traits::SmemLayoutQ{});
    Tensor sdOt = make_tensor(make_smem_ptr(smem.dout.data()), typename Traits::SmemLayoutQt{});
    Tensor sK = make_tensor(make_smem_ptr(smem.k[kv].data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v[kv].data()), typename Traits::SmemLayoutK{});
    auto queries_of = [&](auto const& t) {  // (queries, head dim, stage) -> this warpgroup's queries
      return local_tile(t, Shape<Int<kQueries>, Int<kHeadDim>, Int<kStages>>{}, make_coord(warpgroup * kSplit, _0{}, _0{}));
    };
    auto columns_of = [&](auto const& t) {  // (head dim, queries, stage) -> this warpgroup's columns
      return local_tile(t, Shape<Int<Traits::kDkvCols>, Int<kBlockM>, Int<kStages>>{}, make_coord(warpgroup * kSplit, _0{}, _0{}));
    };

    // K and V as the A operands of S^T and dP^T: shared-memory descriptors, or with
    // kKVInRegisters this thread's elements, read once for all the CTA's query tiles.
    auto kv_operand = [&](auto const& s) {
      Tensor frag = thr_sdp.partition_fragment_A(s);
      if constexpr (Traits::kKVInRegisters) copy(thr_sdp.partition_A(s), frag);
      return frag;
    };
    Tensor tSrK = kv_operand(sK);
    Tensor tSrQ = thr_sdp.partition_fragment_B(queries_of(sQ));  // (MMA, MMA_N, MMA_K, stage)
    Tensor tdPrV = kv_operand(sV);
    Tensor tdPrdO = thr_sdp.partition_fragment_B(queries_of(sdO));
    Tensor tdVrdOt = thr_dkv.partition_fragment_B(columns_of(sdOt));
    Tensor tdKrQt = thr_dkv.partition_fragment_B(columns_of(sQt));
    // dQ's operands: this warpgroup's dS and K, or with kDqSplit both warpgroups' dS and K (one
    // product per warpgroup's keys, or one over the shared keys), restricted to this warpgroup's
    // half of the columns.
    constexpr int kDqParts = Traits::kDqSplit && !kSplit ? Traits::kConsumerWarpgroups : 1;
    auto dq_operands = [&](int part) {
      const int w = kSplit ? 0 : (Traits::kDqSplit ? part : warpgroup);
      Tensor sdS_w = make_tensor(make_smem_ptr(smem.ds[w].data()), typename Traits::SmemLayoutdS{});
      Tensor sKt_w = make_tensor(make_smem_ptr(smem.k[w].data()), typename Traits::SmemLayoutKt{});
      Tensor sKt_cols = local_tile(sKt_w, Shape<Int<Traits::kDqCols>, Int<kKeys>>{},
                                   make_coord(Traits::kDqSplit ? warpgroup : 0, 0));
      return cute::make_tuple(thr_dq.partition_fragment_A(sdS_w), thr_dq.partition_fragment_B(sKt_cols));
    };
    auto dq_part0 = dq_operands(0);
    auto dq_part1 = dq_operands(kDqParts - 1);
    // Where this thread's S^T elements go in dS^T (and with kSplitHeadDim in P^T): (MMA, M, N, buffer).
    auto own_queries = [&](Element* p) {
      if constexpr (kSplit) {
        Tensor t = make_tensor(make_smem_ptr(p), typename Traits::SmemLayoutPt{});
        return thr_sdp.partition_C(local_tile(t, Shape<Int<kKeys>, Int<kQueries>, _2>{}, make_coord(_0{}, warpgroup, _0{})));
      } else {
        return thr_sdp.partition_C(make_tensor(make_smem_ptr(p), typename Traits::SmemLayoutdSt{}));
      }
    };
    Tensor tdSsdS = own_queries(smem.ds[kv].data());

    Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kKeys>, Int<kQueries>>{}));
    Tensor tScS_rc = make_tensor(tScS.data(), acc_to_rowcol(tScS.layout()));  // (keys, queries)
    constexpr int kRows = decltype(size<0>(tScS_rc))::value;
    constexpr int kCols = decltype(size<1>(tScS_rc))::value;

    constexpr float kLog2e = 1.4426950408889634f;
    const float scale_log2 = args.scale * kLog2e;
    const float scale_over_cap = Is_softcap ? args.scale / args.softcap : 0.f;
    const float cap_log2 = args.softcap * kLog2e;
    const int key0 = n_block * Traits::kBlockN + kv * kKeys;
    const int group = args.heads_q / args.heads_kv;

    typename Traits::PipelineState state_q, state_do;
    int buffer = 0;
    int dq_tile = 0;  // this CTA's tiles so far, for the dQ staging buffers
    for (int h = 0; h < group; ++h) {
      for (int m_block = range.min; m_block < range.max; ++m_block, buffer ^= 1) {
        const int m0 = m_block * kBlockM + query_first;  // this warpgroup's first query row
        Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kKeys>, Int<kQueries>>{});
        Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kKeys>, Int<kQueries>>{});
        pipeline_q.consumer_wait(state_q);
        // This thread's rows' lse, read before the products are issued: read after S has landed,
        // the loads queued behind the products' own shared-memory traffic and the exponent loop
        // waited for them (Nsight Compute, benchmarks/results/sm90_bwd_h100.md).
        float lse2_cols[kCols];
        {
          float const* lse_log2 = smem.lse_log2.data() + state_q.index() * kBlockM + query_first;
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) lse2_cols[c] = lse_log2[get<1>(tScS_rc(0, c))];
        }
        wgmma<true, -1>(mma_sdp, tSrK, tSrQ(_, _, _, state_q.index()), acc_s);
        pipeline_do.consumer_wait(state_do);
        wgmma<true, -1>(mma_sdp, tdPrV, tdPrdO(_, _, _, state_do.index()), acc_dp);

        float const* dsum = smem.dsum.data() + state_do.index() * kBlockM + query_first;
        Tensor S = make_tensor(acc_s.data(), acc_to_rowcol(acc_s.layout()));
        Tensor dP = make_tensor(acc_dp.data(), acc_to_rowcol(acc_dp.layout()));
        // The mask is needed only where the tile crosses the key end or a diagonal of the band.
        bool need_mask = key0 + kKeys > args.seqlen_k;
        if constexpr (Is_local) {
          need_mask = need_mask || keys.hi(m0) < key0 + kKeys || keys.lo(m0 + kQueries - 1) > key0;
        }
        // P = exp2(S * scale * log2(e) - lse * log2(e)), masked or not (two copies of the loop,
        // chosen once per tile, so the unmasked one carries no index arithmetic).
        auto probabilities = [&](auto masked) {
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const int q_local = get<1>(tScS_rc(0, c));
            const float lse2 = lse2_cols[c];
            CUTE_UNROLL
            for (int r = 0; r < kRows; ++r) {
              float x2 = fmaf(S(r, c), scale_log2, -lse2);
              if (masked) {
                const int key = key0 + get<0>(tScS_rc(r, 0));
                const int row = m0 + q_local;
                if (key >= keys.hi(row) || key < keys.lo(row)) x2 = -INFINITY;
              }
              S(r, c) = exp2f(x2);
            }
          }
        };
        if constexpr (Is_softcap) {
          // The softcap needs tanh' and P together with dP: wait for both products first.
          warpgroup_wait<0>();
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const int q_local = get<1>(tScS_rc(0, c));
            const float lse2 = lse2_cols[c];
            const float ds = dsum[q_local];
            CUTE_UNROLL
            for (int r = 0; r < kRows; ++r) {
              const float th = tanhf(S(r, c) * scale_over_cap);
              float x2 = fmaf(th, cap_log2, -lse2);
              if (need_mask) {
                const int key = key0 + get<0>(tScS_rc(r, 0));
                const int row = m0 + q_local;
                if (key >= keys.hi(row) || key < keys.lo(row)) x2 = -INFINITY;
              }
              const float p = exp2f(x2);
              S(r, c) = p;
              dP(r, c) = p * (dP(r, c) - ds) * (1.f - th * th);
            }
          }
        } else {
          warpgroup_wait<1>();  // S has landed; dP may still run
          if (need_mask) {
            probabilities(std::true_type{});
          } else {
            probabilities(std::false_type{});
          }
          warpgroup_wait<0>();
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const float ds = dsum[get<1>(tScS_rc(0, c))];
            CUTE_UNROLL
            for (int r = 0; r < kRows; ++r) dP(r, c) = S(r, c) * (dP(r, c) - ds);
          }
        }

        Tensor rP = make_tensor_like<Element>(acc_s);
        to_operand(acc_s, rP);
        if constexpr (!kSplit) {
          Tensor tdVrP = make_tensor(rP.data(), acc_to_a_operand(rP.layout()));
          wgmma<false, -1>(mma_dkv, tdVrP, tdVrdOt(_, _, _, state_do.index()), acc_dv);
        }

        Tensor rdS = make_tensor_like<Element>(acc_dp);
        to_operand(acc_dp, rdS);
        // dS^T into this tile's buffer: the other buffer may still be read by the previous dQ of
        // a slower warp, this one was last read two tiles ago, before the barrier below.  With
        // kSplitHeadDim P^T goes the same way (both warpgroups read both halves of each).
        copy(rdS, tdSsdS(_, _, _, buffer));
        if constexpr (kSplit) copy(rP, own_queries(smem.pt.data())(_, _, _, buffer));
        cutlass::arch::fence_view_async_shared();  // generic-proxy writes, read by wgmma
        if constexpr (Traits::kDqSplit) {
          named_barrier_sync(BwdBarriers::kBothWarpgroups, Traits::kConsumerThreads);
        } else {
          named_barrier_sync(BwdBarriers::warpgroup(warpgroup), 128);
        }

        Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<Traits::kDqCols>>{});
        wgmma<true, -1>(mma_dq, get<0>(dq_part0)(_, _, _, buffer), get<1>(dq_part0), acc_dq);
        if constexpr (kDqParts == 2) wgmma<false, -1>(mma_dq, get<0>(dq_part1)(_, _, _, buffer), get<1>(dq_part1), acc_dq);
        if constexpr (kSplit) {
          Tensor sPt = make_tensor(make_smem_ptr(smem.pt.data()), typename Traits::SmemLayoutPt{});
          Tensor sdSt = make_tensor(make_smem_ptr(smem.ds[0].data()), typename Traits::SmemLayoutPt{});
          wgmma<false, -1>(mma_dkv, thr_dkv.partition_fragment_A(sPt)(_, _, _, buffer),
                           tdVrdOt(_, _, _, state_do.index()), acc_dv);
          wgmma<false, -1>(mma_dkv, thr_dkv.partition_fragment_A(sdSt)(_, _, _, buffer),
                           tdKrQt(_, _, _, state_q.index()), acc_dk);
          warpgroup_wait<2>();  // dQ is done, dV and dK may still run
        } else {
          Tensor tdKrdS = make_tensor(rdS.data(), acc_to_a_operand(rdS.layout()));
          wgmma<false, -1>(mma_dkv, tdKrdS, tdKrQt(_, _, _, state_q.index()), acc_dk);
          warpgroup_wait<1>();  // dV and dQ are done, dK may still run
        }
        if constexpr (Traits::kDqAtomic) {
          add_dq(acc_dq, batch, head_kv * group + h, m_block);
        } else {
          stage_dq(acc_dq, dq_tile++);
        }
        warpgroup_wait<0>();  // Q and dO are no longer read
        pipeline_q.consumer_release(state_q);
        pipeline_do.consumer_release(state_do);
        ++state_q;
        ++state_do;
      }
    }
  }

  // dQ of this CTA's tile number `tile` into one of the warpgroup's shared buffers in the dQ
  // fragment order (values 4j..4j+3 of thread t at float4 j * 128 + t, which the conversion kernel
  // maps back; each warp's stores cover 512 contiguous bytes), then handed to the writer warp.  A
  // buffer is free again once the writer's bulk reduce of the tile kDqBuffers earlier has read it.
  template <class AccdQ>
  CUTE_DEVICE void stage_dq(AccdQ const& acc_dq, int tile) const {
    static_assert(decltype(size(acc_dq))::value * 128 == Traits::kDqPart);
    const int b = tile % Traits::kDqBuffers;
    if (tile >= Traits::kDqBuffers) {
      named_barrier_sync(BwdBarriers::dq_empty(warpgroup, b), BwdBarriers::kDqHandoffThreads);
    }
    float* part = smem.dq.data() + (b * Traits::kConsumerWarpgroups + warpgroup) * Traits::kDqPart;
    float4* dst = reinterpret_cast<float4*>(part) + thread;
    CUTE_UNROLL
    for (int j = 0; j < size(acc_dq) / 4; ++j) {
      dst[j * 128] = make_float4(acc_dq(4 * j), acc_dq(4 * j + 1), acc_dq(4 * j + 2), acc_dq(4 * j + 3));
    }
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes, read by the bulk reduce
    named_barrier_arrive(BwdBarriers::dq_full(warpgroup, b), BwdBarriers::kDqHandoffThreads);
  }

  // kDqAtomic: the same fragment order, added straight into dq_accum's tile with one 16-byte
  // atomic per four values (RED.E.ADD.F32x4 in L2; each warp's 32 cover 512 contiguous bytes).
  template <class AccdQ>
  CUTE_DEVICE void add_dq(AccdQ const& acc_dq, int batch, int head, int m_block) const {
    static_assert(decltype(size(acc_dq))::value * 128 == Traits::kDqPart);
    float* tile = args.dq_accum + ((int64_t(batch) * args.heads_q + head) * args.seqlen_q_rounded +
                                   int64_t(m_block) * kBlockM) * kHeadDim;
    float4* dst = reinterpret_cast<float4*>(tile + warpgroup * Traits::kDqPart) + thread;
    CUTE_UNROLL
    for (int j = 0; j < size(acc_dq) / 4; ++j) {
      atomicAdd(dst + j * 128, make_float4(acc_dq(4 * j), acc_dq(4 * j + 1), acc_dq(4 * j + 2), acc_dq(4 * j + 3)));
    }
  }
};

// The writer warp: per query tile, in the consumers' order, each warpgroup's dQ buffer added into
// dq_accum by one bulk reduce (dq_accum's 64-row tile; with kDqSplit warpgroup w's columns are
// part w of it, else both warpgroups add into the whole tile).  Lane 0 issues, the warp waits.
//
// Deterministic mode (args.dq_semaphore set): the key blocks that see a query tile add into it from
// the last key block to the first, so its fp32 sums come out bit-identical run to run.  That is
// the order in which they reach the tile: each walks its query tiles upwards from the start of its
// range, and later key blocks start later (causal, windows).  The blocks that see a tile are
// consecutive (both ends of a block's query range grow with the block), so block n's predecessor
// on tile m is block n + 1 when that one sees m too (m at or past the start of its range), else n
// is the first.  Each block waits until the tile's semaphore holds n + 2 (block n + 1 stored it),
// adds, waits for its adds to complete and stores n + 1.  CTAs start in launch order, and in this
// mode the launch puts higher key blocks of a (kv head, batch) first (see the kernel), so the
// awaited block is already running.
template <class Traits, bool Is_local>
struct BwdDqWriter {
  BwdArgs<Traits> const& args;
  typename Traits::SharedStorage& smem;

  CUTE_DEVICE void run(int n_block, int head_kv, int batch, QueryRange range, int lane) {
    // Few registers here (setmaxnreg): pointers are stepped, not recomputed per tile.
    constexpr int kWarpgroups = Traits::kConsumerWarpgroups;
    constexpr int kPart = Traits::kDqPart;
    constexpr int kTile = Traits::kBlockM * Traits::kHeadDim;
    const int group = args.heads_q / args.heads_kv;
    const int blocks = max(0, range.max - range.min);
    float* head_tile = args.dq_accum + ((int64_t(batch) * args.heads_q + int64_t(head_kv) * group) *
                                            args.seqlen_q_rounded + range.min * Traits::kBlockM) * Traits::kHeadDim;
    const int64_t head_step = int64_t(args.seqlen_q_rounded) * Traits::kHeadDim;
    // Query tiles from here on are seen by key block n_block + 1 as well.
    const int n_blocks = (args.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
    const int shared_start =
        n_block + 1 < n_blocks ? query_blocks<Traits, Is_local>(args, n_block + 1).min : INT_MAX;
    // Tile t (counted over the CTA, as the consumers count) is staged in buffer t % kBuffers; once
    // tile t's reduces are issued, those of tile t - (kBuffers - 1) have read their buffer (at most
    // kBuffers - 1 bulk groups left in flight), the one tile t + 1 takes.
    constexpr int kBuffers = Traits::kDqBuffers;
    int buffer = 0;  // t % kBuffers
#pragma unroll 1
    for (int h = 0; h < group; ++h, head_tile += head_step) {
      float* dst = head_tile;
#pragma unroll 1
      for (int b = 0; b < blocks; ++b, dst += kTile, buffer = (buffer + 1) % kBuffers) {
        int* semaphore = nullptr;  // per (batch, query head, query tile)
        CUTE_UNROLL
        for (int w = 0; w < kWarpgroups; ++w) {
          named_barrier_sync(BwdBarriers::dq_full(w, buffer), BwdBarriers::kDqHandoffThreads);
          if (lane == 0) {
            if (w == 0 && args.dq_semaphore != nullptr) {
              const int m = range.min + b;
              semaphore = args.dq_semaphore + (int64_t(batch) * args.heads_q + head_kv * group + h) *
                                                  (args.seqlen_q_rounded / Traits::kBlockM) + m;
              if (m >= shared_start) wait_flag_equal(semaphore, n_block + 2);
            }
            bulk_reduce_add(dst + (Traits::kDqSplit ? w * kPart : 0),
                            smem.dq.data() + (buffer * kWarpgroups + w) * kPart, kPart * int(sizeof(float)));
          }
        }
        if (lane == 0) {
          tma_store_arrive();  // commits this tile's reduces as one bulk group
          if (semaphore != nullptr) {
            bulk_wait_complete();  // the adds themselves, before the next key block's
            release_flag_store(semaphore, n_block + 1);
          } else {
            tma_store_wait<kBuffers - 1>();  // until tile t - (kBuffers - 1)'s have read shared memory
          }
        }
        __syncwarp();
        // Tile t - (kBuffers - 1), if there is one, frees its buffer for tile t + 1, if there is one.
        const bool read_one = h > 0 || b >= kBuffers - 1;
        const bool last_tile = h + 1 == group && b + 1 == blocks;
        if (read_one && !last_tile) {
          CUTE_UNROLL
          for (int w = 0; w < kWarpgroups; ++w) {
            named_barrier_arrive(BwdBarriers::dq_empty(w, (buffer + 1) % kBuffers), BwdBarriers::kDqHandoffThreads);
          }
        }
      }
    }
    if (lane == 0) bulk_wait_complete();
  }
};

}  // namespace fa::sm90
