// SM80 attention backward, main kernel (FlashAttention-2 design, keys/values outer).
//
// One CTA owns a block of kBlockN keys of one (batch, kv head).  It walks every query tile
// (of every query head of its GQA group, so dK/dV come out summed over the group without
// repeating K/V) that can see those keys, recomputes S = Q K^T and P = exp(S - lse), and
// accumulates dV += P^T dO and dK += dS^T Q in registers; dQ += dS K goes to an fp32 buffer
// with atomics.  Deterministic mode: the grid is num_splits CTAs per (batch, kv head), CTA x
// walks key blocks x, x + num_splits, ... and adds into its own dq_accum split, so every
// element of a split is added by one thread in a fixed order.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <type_traits>

#include "../bwd_params.h"
#include "../common/device_cache.h"
#include "bwd_launch.h"

namespace fa_bwd {

using namespace cute;

// dQ partials are added into dq_accum in the thread order of the dQ MMA fragment (value i of
// thread t of a (kBlockM, d) tile at tile offset i * kNThreads + t), so each warp-wide atomic
// covers 128 contiguous bytes instead of 8 rows x 4 scattered floats; a matching conversion
// kernel maps the values back to (row, col).  FlashAttention-2 keeps its dQ accumulator in such
// a thread-owned order too.  Measured on H100 (benchmarks/results/sm80_bwd_h100.md): 0.80-0.84x
// SDPA flash at d=128 against 0.71-0.81x for the row-major layout, which -DFA_BWD_DQ_ROWMAJOR
// brings back.
// Experimental switches (compile-time -D flags, off by default):
//  measured on H100, no consistent gain:
//  FA_BWD_P_EARLY: P goes to shared memory before the dP = dO V^T product (FlashAttention-2's
//    order), so its stores overlap with that product; the softcap instantiation keeps the
//    fused order (it would have to keep tanh' live across the product).
//  FA_BWD_DOUBLE_DO (in BwdTraits; slower).
//  FA_BWD_DQ_SCALAR: scalar dQ atomics on sm_90 too (see dq_vec4() below).
#ifdef FA_BWD_DQ_ROWMAJOR
inline constexpr bool kDqCoalesced = false;
#else
inline constexpr bool kDqCoalesced = true;
#endif
// On sm_90+ the fragment-ordered tile is grouped by 4 values (values 4j..4j+3 of thread t at
// tile offset (j * kNThreads + t) * 4) and added with 16-byte vector atomics (sm_90's
// red.global.add.v4.f32): a quarter of the atomic instructions, each warp covering 512 contiguous
// bytes; measured on H100 with the two-copy softmax pass: 0.89-0.94x SDPA flash at d=128 against
// 0.85-0.91x with scalar atomics.  SM80 code keeps scalar atomics (-DFA_BWD_DQ_SCALAR: everywhere).
__device__ __forceinline__ constexpr bool dq_vec4() {
#if !defined(FA_BWD_DQ_SCALAR) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return kDqCoalesced;
#else
  return false;
#endif
}
#ifdef FA_BWD_P_EARLY
inline constexpr bool kPEarly = true;
#else
inline constexpr bool kPEarly = false;
#endif

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kNWarps_, int kAtomMSdP, int kAtomNdKV,
          int kAtomMdQ, int kStagesQ_, typename Element_>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  // Two Q buffers let the next tile's Q arrive while dK = dS^T Q still reads the current one.
  // FA_BWD_DOUBLE_DO also double-buffers dO (Q and dO of the next tile issued at the top of an
  // iteration, one barrier fewer); measured slower on H100 (more register pressure), so off.
  static constexpr int kStagesQ = kStagesQ_;
#ifdef FA_BWD_DOUBLE_DO
  static constexpr int kStagesdO = kStagesQ_;
#else
  static constexpr int kStagesdO = 1;
#endif

  using MmaAtom = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                     MMA_Atom<SM80_16x8x16_F32F16F16F32_TN>,
                                     MMA_Atom<SM80_16x8x16_F32BF16BF16F32_TN>>;
  // Each warp covers 16 columns of N per step so that ldmatrix.x4 feeds B fragments whole.
  template <int kAtomM>
  using Mma = TiledMMA<MmaAtom, Layout<Shape<Int<kAtomM>, Int<kNWarps / kAtomM>, _1>>,
                       Tile<Int<16 * kAtomM>, Int<16 * kNWarps / kAtomM>, _16>>;
  using TiledMmaSdP = Mma<kAtomMSdP>;
  using TiledMmadKV = Mma<kAtomNdKV>;
  using TiledMmadQ = Mma<kAtomMdQ>;

  // Rows of 64 halves (128 B) swizzled over 8 rows: conflict-free ldmatrix in both orientations.
  static constexpr int kBlockKSmem = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzle = kBlockKSmem == 32 ? 2 : 3;
  using SmemAtomQKV = decltype(composition(
      Swizzle<kSwizzle, 3, 3>{},
      Layout<Shape<_8, Int<kBlockKSmem>>, Stride<Int<kBlockKSmem>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtomQKV{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtomQKV{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // Transposed views (d, row) of the same bytes, read with ldmatrix.trans.
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockM>>{}, GenRowMajor{})));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));

  static constexpr int kPBlockN = kBlockN % 64 == 0 ? 64 : 32;
  static constexpr int kSwizzlePdS = kPBlockN == 32 ? 2 : 3;
  using SmemAtomPdS = decltype(composition(
      Swizzle<kSwizzlePdS, 3, 3>{},
      Layout<Shape<_8, Int<kPBlockN>>, Stride<Int<kPBlockN>, _1>>{}));
  using SmemLayoutPdS = decltype(tile_to_shape(SmemAtomPdS{}, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  using SmemLayoutPdSt = decltype(composition(
      SmemLayoutPdS{}, make_layout(Shape<Int<kBlockN>, Int<kBlockM>>{}, GenRowMajor{})));

  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomStore = Copy_Atom<AutoVectorizingCopyWithAssumedAlignment<32>, Element>;

  static constexpr int kGmemThreadsPerRow = kBlockKSmem / 8;
  using GmemLayoutAtom = Layout<Shape<Int<kNThreads / kGmemThreadsPerRow>, Int<kGmemThreadsPerRow>>,
                                Stride<Int<kGmemThreadsPerRow>, _1>>;
  using GmemTiledCopyLoad = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, _8>>{}));
  using GmemTiledCopyStore = decltype(make_tiled_copy(
      Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, GmemLayoutAtom{},
      Layout<Shape<_1, _8>>{}));

  static constexpr int kSizeQ = kBlockM * kHeadDim;
  static constexpr int kSizeKV = kBlockN * kHeadDim;
  static constexpr int kSizePdS = kBlockM * kBlockN;
  static constexpr int kSmemElems =
      (kStagesQ + kStagesdO) * kSizeQ + 2 * kSizeKV + 2 * kSizePdS;
  // lse per Q stage and D (rowsum dO*O) per dO stage, fp32, after the bf16/fp16 tiles.
  static constexpr int kSmemBytes =
      kSmemElems * int(sizeof(Element)) + (kStagesQ + kStagesdO) * kBlockM * 4;
};

// ((2,2),MMA_M,MMA_N) accumulator layout -> ((2,MMA_M),(2,MMA_N)) = (row, col) view.
template <class Layout>
__device__ __forceinline__ auto acc_rowcol(Layout const& l) {
  static_assert(decltype(rank<0>(l))::value == 2);
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

// Global -> shared copy of a (rows, d) tile with cp.async; rows at or past max_rows are
// zero-filled (no global read), so edge tiles contribute exact zeros to every product.
template <class Element, class Src, class Dst, class Coord>
__device__ __forceinline__ void load_rows(Src const& src, Dst& dst, Coord const& coord,
                                          int max_rows) {
  using ZfillAtom = Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, Element>;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    const bool ok = get<0>(coord(0, m, 0)) < max_rows;
    copy(ZfillAtom{}.with(ok), src(_, m, _), dst(_, m, _));
  }
}

// acc += A B^T from shared memory, ldmatrix of k-slice k+1 overlapping the MMAs of slice k.
template <class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma,
          class CopyA, class CopyB, class ThrCopyA, class ThrCopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, FragA& rA, FragB& rB, SmemA const& sA,
                                        SmemB const& sB, TiledMma const& mma, CopyA const& copy_a,
                                        CopyB const& copy_b, ThrCopyA const& thr_a,
                                        ThrCopyB const& thr_b) {
  Tensor rA_v = thr_a.retile_D(rA);
  Tensor rB_v = thr_b.retile_D(rB);
  copy(copy_a, sA(_, _, _0{}), rA_v(_, _, _0{}));
  copy(copy_b, sB(_, _, _0{}), rB_v(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k < size<2>(rA) - 1) {
      copy(copy_a, sA(_, _, k + 1), rA_v(_, _, k + 1));
      copy(copy_b, sB(_, _, k + 1), rB_v(_, _, k + 1));
    }
    cute::gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// 4-byte cp.async with zero fill when !valid (src is not read then).
__device__ __forceinline__ void cp_async_f32(float* dst, const float* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
               "r"(valid ? 4 : 0));
}

__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// A dummy shared tensor of the given shape: fragments depend on shape only, and plain layouts
// avoid asking CuTe for strides of swizzled (composed) layouts.
template <typename Element, int R, int C>
__device__ __forceinline__ auto shape_only() {
  return make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)),
                     make_layout(Shape<Int<R>, Int<C>>{}, GenRowMajor{}));
}

// One query tile of a CTA's walk: query block m of one query head, with the element offsets
// of its first row in Q, dO, the row statistics (lse and D, both [B,Hq,Sq]) and dq_accum; or
// the difference between two tiles.
struct QTile {
  int m;
  int64_t q, dout, stat, dq;
};

// kMayMask = false: the launch guarantees that no key is ever masked (Sk a multiple of kBlockN,
// no window, no causal), and the mask code is compiled out.  A runtime per-tile choice is not
// enough: ptxas if-converts it, so every tile would issue the masked and the unmasked softmax.
template <class Tr, bool kSoftcap, bool kMayMask>
__global__ void __launch_bounds__(Tr::kNThreads, 1)
    flash_bwd_dq_dk_dv_sm80_kernel(const FaBwdParams p) {
  using Element = typename Tr::Element;
  constexpr int kM = Tr::kBlockM;
  constexpr int kN = Tr::kBlockN;
  constexpr int kD = Tr::kHeadDim;

  extern __shared__ __align__(128) char smem_raw[];
  Element* smem_q = reinterpret_cast<Element*>(smem_raw);
  Element* smem_do = smem_q + Tr::kStagesQ * Tr::kSizeQ;
  Element* smem_k = smem_do + Tr::kStagesdO * Tr::kSizeQ;
  Element* smem_v = smem_k + Tr::kSizeKV;
  Element* smem_p = smem_v + Tr::kSizeKV;
  Element* smem_ds = smem_p + Tr::kSizePdS;
  float* smem_lse = reinterpret_cast<float*>(smem_ds + Tr::kSizePdS);
  float* smem_dsum = smem_lse + Tr::kStagesQ * kM;

  const int tid = threadIdx.x;
  const int kv_head = blockIdx.y;
  const int batch = blockIdx.z;
  const int seqlen_q = int(p.seqlen_q);
  const int seqlen_k = int(p.seqlen_k);
  const int group = int(p.heads_q / p.heads_kv);
  const int n_blocks = (seqlen_k + kN - 1) / kN;
  const int m_blocks = (seqlen_q + kM - 1) / kM;
  const int off = p.diag_offset;
  const bool has_right = p.window_right >= 0;
  const bool has_left = p.window_left >= 0;
  const int wr = p.window_right;
  const int wl = p.window_left;
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale_log2 = p.scale * kLog2e;
  const float cap = p.softcap;
  const float scale_over_cap = kSoftcap ? p.scale / cap : 0.f;
  const float cap_log2 = cap * kLog2e;

  float* dq_accum = p.dq_accum + (p.deterministic ? int64_t(blockIdx.x) : int64_t(0)) *
                                     (p.batch * p.heads_q * p.seqlen_q_rounded * kD);

  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Tr::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Tr::SmemLayoutKV{});
  Tensor sKt = make_tensor(make_smem_ptr(smem_k), typename Tr::SmemLayoutKt{});
  auto sdO_at = [&](int stage) {
    return make_tensor(make_smem_ptr(smem_do + stage * Tr::kSizeQ), typename Tr::SmemLayoutQ{});
  };
  auto sdOt_at = [&](int stage) {
    return make_tensor(make_smem_ptr(smem_do + stage * Tr::kSizeQ), typename Tr::SmemLayoutQt{});
  };
  Tensor sP = make_tensor(make_smem_ptr(smem_p), typename Tr::SmemLayoutPdS{});
  Tensor sPt = make_tensor(make_smem_ptr(smem_p), typename Tr::SmemLayoutPdSt{});
  Tensor sdS = make_tensor(make_smem_ptr(smem_ds), typename Tr::SmemLayoutPdS{});
  Tensor sdSt = make_tensor(make_smem_ptr(smem_ds), typename Tr::SmemLayoutPdSt{});
  auto sQ_at = [&](int stage) {
    return make_tensor(make_smem_ptr(smem_q + stage * Tr::kSizeQ), typename Tr::SmemLayoutQ{});
  };
  auto sQt_at = [&](int stage) {
    return make_tensor(make_smem_ptr(smem_q + stage * Tr::kSizeQ), typename Tr::SmemLayoutQt{});
  };

  typename Tr::GmemTiledCopyLoad gmem_load;
  auto gthr = gmem_load.get_thread_slice(tid);
  Tensor cQ = gthr.partition_S(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  Tensor cKV = gthr.partition_S(make_identity_tensor(Shape<Int<kN>, Int<kD>>{}));

  auto gtile = [&](const void* base, const int64_t* st, int b, int h, int rows, int blk, auto bm) {
    const Element* ptr = static_cast<const Element*>(base) + b * st[0] + h * st[1];
    Tensor g = make_tensor(make_gmem_ptr(ptr), make_shape(rows, Int<kD>{}), make_stride(st[2], _1{}));
    return local_tile(g, make_shape(bm, Int<kD>{}), make_coord(blk, 0));
  };
  // This thread's part of the (kM, d) Q or dO tile whose first row is at `tile`.  Rebuilt per
  // load from the walk's tile offset (a few instructions): per-thread 64-bit pointers kept live
  // across the loop instead got spilled.
  auto gmem_part = [&](const void* base, int64_t tile, const int64_t* st) {
    Tensor g = make_tensor(make_gmem_ptr(static_cast<const Element*>(base) + tile),
                           make_shape(Int<kM>{}, Int<kD>{}), make_stride(st[2], _1{}));
    return gthr.partition_S(g);
  };

  typename Tr::TiledMmaSdP mma_sdp;
  typename Tr::TiledMmadKV mma_dkv;
  typename Tr::TiledMmadQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  auto thr_dkv = mma_dkv.get_thread_slice(tid);
  auto thr_dq = mma_dq.get_thread_slice(tid);

  // Register fragments (operands of the five products).
  Tensor rQ = thr_sdp.partition_fragment_A(shape_only<Element, kM, kD>());
  Tensor rK = thr_sdp.partition_fragment_B(shape_only<Element, kN, kD>());
  Tensor rdO = thr_sdp.partition_fragment_A(shape_only<Element, kM, kD>());
  Tensor rV = thr_sdp.partition_fragment_B(shape_only<Element, kN, kD>());
  Tensor rPt = thr_dkv.partition_fragment_A(shape_only<Element, kN, kM>());
  Tensor rdOt = thr_dkv.partition_fragment_B(shape_only<Element, kD, kM>());
  Tensor rdSt = thr_dkv.partition_fragment_A(shape_only<Element, kN, kM>());
  Tensor rQt = thr_dkv.partition_fragment_B(shape_only<Element, kD, kM>());
  Tensor rdS = thr_dq.partition_fragment_A(shape_only<Element, kM, kN>());
  Tensor rKt = thr_dq.partition_fragment_B(shape_only<Element, kD, kN>());

  // ldmatrix partitions.
  auto cp_sdp_a = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, mma_sdp);
  auto cp_sdp_b = make_tiled_copy_B(typename Tr::SmemCopyAtom{}, mma_sdp);
  auto cp_dkv_a = make_tiled_copy_A(typename Tr::SmemCopyAtomT{}, mma_dkv);
  auto cp_dkv_b = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, mma_dkv);
  auto cp_dq_a = make_tiled_copy_A(typename Tr::SmemCopyAtom{}, mma_dq);
  auto cp_dq_b = make_tiled_copy_B(typename Tr::SmemCopyAtomT{}, mma_dq);
  auto t_sdp_a = cp_sdp_a.get_thread_slice(tid);
  auto t_sdp_b = cp_sdp_b.get_thread_slice(tid);
  auto t_dkv_a = cp_dkv_a.get_thread_slice(tid);
  auto t_dkv_b = cp_dkv_b.get_thread_slice(tid);
  auto t_dq_a = cp_dq_a.get_thread_slice(tid);
  auto t_dq_b = cp_dq_b.get_thread_slice(tid);

  Tensor tSsK = t_sdp_b.partition_S(sK);
  Tensor tSsV = t_sdp_b.partition_S(sV);
  Tensor tdVsPt = t_dkv_a.partition_S(sPt);
  Tensor tdKsdSt = t_dkv_a.partition_S(sdSt);
  Tensor tdQsdS = t_dq_a.partition_S(sdS);
  Tensor tdQsKt = t_dq_b.partition_S(sKt);

  // P and dS: accumulator registers -> shared.
  auto cp_store_sdp = make_tiled_copy_C(typename Tr::SmemCopyAtomStore{}, mma_sdp);
  auto t_store_sdp = cp_store_sdp.get_thread_slice(tid);
  Tensor tPsP = t_store_sdp.partition_D(sP);
  Tensor tPsdS = t_store_sdp.partition_D(sdS);

  // Coordinates of this thread's accumulator elements.
  Tensor cS_raw = thr_sdp.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kN>>{}));
  Tensor cS = make_tensor(cS_raw.data(), acc_rowcol(cS_raw.layout()));
  Tensor cdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  constexpr int kRows = decltype(size<0>(cS))::value;
  constexpr int kCols = decltype(size<1>(cS))::value;

  Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});
  Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<kN>, Int<kD>>{});

  const int step = gridDim.x;
  for (int n_block = blockIdx.x; n_block < n_blocks; n_block += step) {
    const int n0 = n_block * kN;
    const int n_last = min(n0 + kN, seqlen_k) - 1;
    // Query tiles that can see at least one key of this block.
    int m_begin = 0, m_end = m_blocks;
    if (kMayMask && has_right) {
      const int first_row = n0 - off - wr;
      m_begin = first_row <= 0 ? 0 : first_row / kM;
    }
    if (kMayMask && has_left) {
      const int last_row = n_last - off + wl;
      m_end = last_row < 0 ? 0 : min(m_end, last_row / kM + 1);
    }
    const int nm = max(m_end - m_begin, 0);
    const int n_tiles = nm * group;

    clear(acc_dk);
    clear(acc_dv);

    // The walk: query blocks m_begin .. m_end - 1 of each query head of the group in turn.  A
    // tile's offsets are the previous tile's plus one of two precomputed steps (next block, or
    // first block of the next head): no division and no address rebuild per tile (with them,
    // the unmasked loop at d=128 took about 1000 instructions per tile on sm_90a, now 840).
    QTile cur;
    {
      const int h = kv_head * group;
      const int row = m_begin * kM;
      const int64_t bh = int64_t(batch) * p.heads_q + h;
      cur.m = m_begin;
      cur.q = batch * p.q_strides[0] + h * p.q_strides[1] + row * p.q_strides[2];
      cur.dout = batch * p.dout_strides[0] + h * p.dout_strides[1] + row * p.dout_strides[2];
      cur.stat = bh * p.seqlen_q + row;
      cur.dq = (bh * p.seqlen_q_rounded + row) * kD;
    }
    const int back = (nm - 1) * kM;  // rows from the first to the last block of a head
    const QTile to_block{1, kM * p.q_strides[2], kM * p.dout_strides[2], kM, kM * kD};
    const QTile to_head{-(nm - 1), p.q_strides[1] - back * p.q_strides[2],
                        p.dout_strides[1] - back * p.dout_strides[2], p.seqlen_q - back,
                        (p.seqlen_q_rounded - back) * kD};
    // Selects rather than a branch: ptxas then keeps the steps in uniform registers (about 40
    // fewer instructions per tile than adding inside `if`/`else`).
    auto advance = [&](QTile& c) {
      const bool next_head = c.m + 1 == m_end;
      c.m += next_head ? to_head.m : to_block.m;
      c.q += next_head ? to_head.q : to_block.q;
      c.dout += next_head ? to_head.dout : to_block.dout;
      c.stat += next_head ? to_head.stat : to_block.stat;
      c.dq += next_head ? to_head.dq : to_block.dq;
    };

    // Q (+ lse) and dO (+ D) of a tile, as cp.async; rows past Sq are zero-filled (the 4-byte
    // statistics read row 0 instead of past the end).
    auto load_q = [&](const QTile& c, int stage) {
      const int rows = seqlen_q - c.m * kM;
      Tensor dst = gthr.partition_D(sQ_at(stage));
      load_rows<Element>(gmem_part(p.q, c.q, p.q_strides), dst, cQ, rows);
      const bool ok = tid < rows;
      if (tid < kM) cp_async_f32(smem_lse + stage * kM + tid, p.lse + c.stat + (ok ? tid : 0), ok);
    };
    auto load_do = [&](const QTile& c, int stage) {
      const int rows = seqlen_q - c.m * kM;
      Tensor dst = gthr.partition_D(sdO_at(stage));
      load_rows<Element>(gmem_part(p.dout, c.dout, p.dout_strides), dst, cQ, rows);
      const bool ok = tid < rows;
      if (tid < kM) cp_async_f32(smem_dsum + stage * kM + tid, p.dsum + c.stat + (ok ? tid : 0), ok);
    };

    if (n_tiles > 0) {
      Tensor gK = gtile(p.k, p.k_strides, batch, kv_head, seqlen_k, n_block, Int<kN>{});
      Tensor gV = gtile(p.v, p.v_strides, batch, kv_head, seqlen_k, n_block, Int<kN>{});
      Tensor tKsK = gthr.partition_D(sK);
      Tensor tVsV = gthr.partition_D(sV);
      load_rows<Element>(gthr.partition_S(gK), tKsK, cKV, seqlen_k - n0);
      load_rows<Element>(gthr.partition_S(gV), tVsV, cKV, seqlen_k - n0);
      load_q(cur, 0);
      load_do(cur, 0);
      cp_async_fence();
    }

    for (int t = 0; t < n_tiles; ++t) {
      QTile next = cur;
      advance(next);
      const int m0 = cur.m * kM;
      const int stage = Tr::kStagesQ == 2 ? (t & 1) : 0;
      const int stage_do = Tr::kStagesdO == 2 ? (t & 1) : 0;
      const int next_stage = Tr::kStagesQ == 2 ? stage ^ 1 : 0;
      const int next_stage_do = Tr::kStagesdO == 2 ? stage_do ^ 1 : 0;
      const bool has_next = t + 1 < n_tiles;

      cp_async_wait<0>();
      __syncthreads();
      // Both buffers of the next tile were last read in the previous iteration, before the
      // barrier above.
      if (Tr::kStagesdO == 2 && has_next) {
        load_q(next, next_stage);
        load_do(next, next_stage_do);
        cp_async_fence();
      }

      Tensor sQ = sQ_at(stage);
      Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<kM>, Int<kN>>{});
      clear(acc_s);
      gemm_ss(acc_s, rQ, rK, t_sdp_a.partition_S(sQ), tSsK, mma_sdp, cp_sdp_a, cp_sdp_b, t_sdp_a,
              t_sdp_b);

      // Next Q into the other buffer (last read by dK of the previous tile, before the barrier).
      if (Tr::kStagesQ == 2 && Tr::kStagesdO == 1 && has_next) {
        load_q(next, next_stage);
        cp_async_fence();
      }

      constexpr bool kEarly = kPEarly && !kSoftcap;
      Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<kM>, Int<kN>>{});
      clear(acc_dp);
      auto gemm_dp = [&] {
        gemm_ss(acc_dp, rdO, rV, t_sdp_a.partition_S(sdO_at(stage_do)), tSsV, mma_sdp, cp_sdp_a,
                cp_sdp_b, t_sdp_a, t_sdp_b);
      };
      if constexpr (!kEarly) gemm_dp();

      // Mask (kMayMask only): the allowed keys of a row are the tile columns lo .. hi (Sk edge,
      // window, causal), taken relative to this thread's first column, so that an element tests
      // its compile-time column offset against two per-row bounds.  One pass for every tile:
      // ptxas if-converts a per-tile choice between a masked and an unmasked copy of the pass,
      // and then issues both copies on every tile (d=128, sm_90a: about 1290 instructions per
      // tile with the two copies, 1000 with this pass).  With the unmasked instance and the tile
      // walk above, the main kernel is 1.21-1.25x faster on H100 than before (d=128, 512-16k
      // keys, causal and not; benchmarks/results/sm80_bwd_h100.md).
      constexpr int kFar = 1 << 30;  // a bound that excludes no key
      const int col0 = get<1>(cS(0, 0));
      const int hi_edge = seqlen_k - n0 - 1 - col0;
      const int hi_diag = has_right ? m0 + off + wr - n0 - col0 : kFar;  // hi = row + hi_diag
      const int lo_diag = has_left ? m0 + off - wl - n0 - col0 : -kFar;  // lo = row + lo_diag
      Tensor S = make_tensor(acc_s.data(), acc_rowcol(acc_s.layout()));
      Tensor dP = make_tensor(acc_dp.data(), acc_rowcol(acc_dp.layout()));
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const int row_local = get<0>(cS(r, 0));
        // Rows without any allowed key get lse = +inf, so their P is exactly 0.  Rows past Sq
        // need no test: their Q, dO, lse and D are zero-filled, so P = 1 (or 0 where masked)
        // meets dP = D = 0 and dO = 0, and they add exact zeros to dV and dK.
        float lse = smem_lse[stage * kM + row_local];
        if (lse == -CUDART_INF_F) lse = CUDART_INF_F;
        const float lse2 = lse * kLog2e;
        const float dsum = smem_dsum[stage_do * kM + row_local];
        const int lo = row_local + lo_diag;
        const int hi = min(hi_edge, row_local + hi_diag);
        CUTE_UNROLL
        for (int c = 0; c < kCols; ++c) {
          // x2 = log2(e) * (x - lse), one FMA; lse2 = +inf gives -inf, so P = 0.
          float x2;
          float dtanh = 1.f;
          if constexpr (kSoftcap) {
            const float th = fast_tanh(S(r, c) * scale_over_cap);
            x2 = fmaf(th, cap_log2, -lse2);
            dtanh = 1.f - th * th;
          } else {
            x2 = fmaf(S(r, c), scale_log2, -lse2);
          }
          if constexpr (kMayMask) {
            const int k = get<1>(cS(0, c)) - col0;
            if (k < lo || k > hi) x2 = -CUDART_INF_F;
          }
          const float pr = exp2f(x2);
          S(r, c) = pr;
          if constexpr (!kEarly) dP(r, c) = pr * (dP(r, c) - dsum) * dtanh;
        }
      }

      if constexpr (kEarly) {
        {
          Tensor rP = make_tensor_like<Element>(acc_s);
          CUTE_UNROLL
          for (int i = 0; i < size(acc_s); ++i) rP(i) = Element(acc_s(i));
          copy(cp_store_sdp, t_store_sdp.retile_S(rP), tPsP);
        }
        gemm_dp();
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float dsum = smem_dsum[stage_do * kM + get<0>(cS(r, 0))];
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) dP(r, c) = S(r, c) * (dP(r, c) - dsum);
        }
        Tensor rdSv = make_tensor_like<Element>(acc_dp);
        CUTE_UNROLL
        for (int i = 0; i < size(acc_dp); ++i) rdSv(i) = Element(acc_dp(i));
        copy(cp_store_sdp, t_store_sdp.retile_S(rdSv), tPsdS);
      } else {
        Tensor rP = make_tensor_like<Element>(acc_s);
        Tensor rdSv = make_tensor_like<Element>(acc_dp);
        CUTE_UNROLL
        for (int i = 0; i < size(acc_s); ++i) {
          rP(i) = Element(acc_s(i));
          rdSv(i) = Element(acc_dp(i));
        }
        copy(cp_store_sdp, t_store_sdp.retile_S(rP), tPsP);
        copy(cp_store_sdp, t_store_sdp.retile_S(rdSv), tPsdS);
      }
      __syncthreads();

      // dV += P^T dO
      gemm_ss(acc_dv, rPt, rdOt, tdVsPt, t_dkv_b.partition_S(sdOt_at(stage_do)), mma_dkv, cp_dkv_a,
              cp_dkv_b, t_dkv_a, t_dkv_b);
      if (Tr::kStagesdO == 1) {
        __syncthreads();  // everyone is done with sdO before the next tile's dO lands there
        if (has_next) {
          load_do(next, next_stage_do);
          cp_async_fence();
        }
      }

      // dQ_partial = dS K, added into fp32 dq_accum (scaled by the convert kernel).
      {
        Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kM>, Int<kD>>{});
        clear(acc_dq);
        gemm_ss(acc_dq, rdS, rKt, tdQsdS, tdQsKt, mma_dq, cp_dq_a, cp_dq_b, t_dq_a, t_dq_b);
        // dq_accum rows are padded to a multiple of 128 >= kM, so no row predicate: rows past
        // Sq add exact zeros (their dS is 0) to rows nobody reads.
        if constexpr (kDqCoalesced) {
          static_assert(decltype(size(acc_dq))::value * Tr::kNThreads == kM * kD);
          if constexpr (dq_vec4()) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            float4* dq_thr = reinterpret_cast<float4*>(dq_accum + cur.dq) + tid;
            CUTE_UNROLL
            for (int j = 0; j < size(acc_dq) / 4; ++j) {
              atomicAdd(dq_thr + j * Tr::kNThreads,
                        make_float4(acc_dq(4 * j), acc_dq(4 * j + 1), acc_dq(4 * j + 2), acc_dq(4 * j + 3)));
            }
#endif
          } else {
            float* dq_thr = dq_accum + cur.dq + tid;
            CUTE_UNROLL
            for (int i = 0; i < size(acc_dq); ++i) atomicAdd(dq_thr + i * Tr::kNThreads, acc_dq(i));
          }
        } else {
          const int r0 = get<0>(cdQ(0)), c0 = get<1>(cdQ(0));
          float* dq_thr = dq_accum + cur.dq + r0 * kD + c0;
          CUTE_UNROLL
          for (int i = 0; i < size(acc_dq); ++i) {
            const int dr = get<0>(cdQ(i)) - r0, dc = get<1>(cdQ(i)) - c0;
            atomicAdd(dq_thr + dr * kD + dc, acc_dq(i));
          }
        }
      }

      // dK += dS^T Q
      gemm_ss(acc_dk, rdSt, rQt, tdKsdSt, t_dkv_b.partition_S(sQt_at(stage)), mma_dkv, cp_dkv_a,
              cp_dkv_b, t_dkv_a, t_dkv_b);

      if (Tr::kStagesQ == 1 && has_next) {
        __syncthreads();
        load_q(next, next_stage);
        cp_async_fence();
      }
      cur = next;
    }

    // Epilogue: dK (scaled) and dV through shared memory (reusing sK/sV) to 16-byte stores.
    cp_async_wait<0>();
    __syncthreads();
    {
      auto cp_store_dkv = make_tiled_copy_C(typename Tr::SmemCopyAtomStore{}, mma_dkv);
      auto t_store_dkv = cp_store_dkv.get_thread_slice(tid);
      Tensor rdK = make_tensor_like<Element>(acc_dk);
      Tensor rdV = make_tensor_like<Element>(acc_dv);
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dk); ++i) {
        rdK(i) = Element(acc_dk(i) * p.scale);
        rdV(i) = Element(acc_dv(i));
      }
      copy(cp_store_dkv, t_store_dkv.retile_S(rdK), t_store_dkv.partition_D(sK));
      copy(cp_store_dkv, t_store_dkv.retile_S(rdV), t_store_dkv.partition_D(sV));
    }
    __syncthreads();
    {
      typename Tr::GmemTiledCopyStore gmem_store;
      auto sthr = gmem_store.get_thread_slice(tid);
      Tensor tsK = sthr.partition_S(sK);
      Tensor tsV = sthr.partition_S(sV);
      Tensor rK_out = make_fragment_like(tsK);
      Tensor rV_out = make_fragment_like(tsV);
      copy(gmem_store, tsK, rK_out);
      copy(gmem_store, tsV, rV_out);
      auto out_tile = [&](void* base, const int64_t* st) {
        Element* ptr = static_cast<Element*>(base) + batch * st[0] + kv_head * st[1];
        Tensor g = make_tensor(make_gmem_ptr(ptr), make_shape(seqlen_k, Int<kD>{}),
                               make_stride(st[2], _1{}));
        return sthr.partition_D(local_tile(g, Shape<Int<kN>, Int<kD>>{}, make_coord(n_block, 0)));
      };
      Tensor gdK = out_tile(p.dk, p.dk_strides);
      Tensor gdV = out_tile(p.dv, p.dv_strides);
      Tensor cO = sthr.partition_S(make_identity_tensor(Shape<Int<kN>, Int<kD>>{}));
      CUTE_UNROLL
      for (int mi = 0; mi < size<1>(gdK); ++mi) {
        if (get<0>(cO(0, mi, 0)) < seqlen_k - n0) {
          copy(gmem_store, rK_out(_, mi, _), gdK(_, mi, _));
          copy(gmem_store, rV_out(_, mi, _), gdV(_, mi, _));
        }
      }
    }
    __syncthreads();  // sK/sV are reloaded by the next key block
  }
}

// dq = scale * sum over splits of dq_accum, for the fragment-ordered accumulator
// (the default; see kDqCoalesced).  One CTA per (query tile, head, batch) with the main kernel's thread
// count: thread t reads values i * kNThreads + t of the tile (coalesced) and, through the same
// dQ MMA partition as the main kernel, knows their (row, col).  The tile is assembled in shared
// memory and written as whole 16-byte row chunks: stored straight from the fragment order (4-byte
// pieces of eight rows per warp instruction) it took 118-156 us against FlashAttention-2's 77 at
// d=128, 16k tokens (H100), as the SM90 conversion did before the same change.
template <class Tr>
__global__ void __launch_bounds__(Tr::kNThreads)
    flash_bwd_convert_dq_fragment_kernel(const FaBwdParams p) {
  using Element = typename Tr::Element;
  constexpr int kM = Tr::kBlockM;
  constexpr int kD = Tr::kHeadDim;
  const int tid = threadIdx.x;
  const int m0 = blockIdx.x * kM;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  typename Tr::TiledMmadQ mma_dq;
  auto thr_dq = mma_dq.get_thread_slice(tid);
  Tensor acc = partition_fragment_C(mma_dq, Shape<Int<kM>, Int<kD>>{});
  Tensor cdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kM>, Int<kD>>{}));
  static_assert(decltype(size(acc))::value % 2 == 0);
  clear(acc);
  const int64_t tile = (int64_t(b) * p.heads_q + h) * p.seqlen_q_rounded + m0;
  const int64_t split_stride = p.batch * p.heads_q * p.seqlen_q_rounded * kD;
  const int splits = p.deterministic ? p.num_splits : 1;
  // Fixed summation order over splits (deterministic mode stays bit-stable).
  if constexpr (dq_vec4()) {
    static_assert(decltype(size(acc))::value % 4 == 0);
    const float4* src = reinterpret_cast<const float4*>(p.dq_accum + tile * kD) + tid;
    for (int s = 0; s < splits; ++s) {
      CUTE_UNROLL
      for (int j = 0; j < size(acc) / 4; ++j) {
        const float4 v = src[s * (split_stride / 4) + j * Tr::kNThreads];
        acc(4 * j) += v.x;
        acc(4 * j + 1) += v.y;
        acc(4 * j + 2) += v.z;
        acc(4 * j + 3) += v.w;
      }
    }
  } else {
    const float* src = p.dq_accum + tile * kD + tid;
    for (int s = 0; s < splits; ++s) {
      CUTE_UNROLL
      for (int i = 0; i < size(acc); ++i) acc(i) += src[s * split_stride + i * Tr::kNThreads];
    }
  }
  // Rows padded by 16 bytes: the fragment's 4-byte pieces of eight consecutive rows then fall in
  // different banks.
  constexpr int kRowPitch = kD + 8;
  __shared__ __align__(16) Element tile_smem[kM * kRowPitch];
  // Values 2j and 2j+1 of an SM80 MMA accumulator are columns c, c+1 of one row.
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const Element pair[2] = {Element(acc(i) * p.scale), Element(acc(i + 1) * p.scale)};
    *reinterpret_cast<uint32_t*>(tile_smem + get<0>(cdQ(i)) * kRowPitch + get<1>(cdQ(i))) =
        *reinterpret_cast<const uint32_t*>(pair);
  }
  __syncthreads();
  constexpr int kChunksPerRow = kD / 8;  // 16-byte chunks
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_strides[0] + h * p.dq_strides[1];
  CUTE_UNROLL
  for (int c = tid; c < kM * kChunksPerRow; c += Tr::kNThreads) {
    const int row = c / kChunksPerRow, chunk = c % kChunksPerRow;
    if (m0 + row < p.seqlen_q) {
      *reinterpret_cast<uint4*>(dq + (m0 + row) * p.dq_strides[2] + chunk * 8) =
          *reinterpret_cast<const uint4*>(tile_smem + row * kRowPitch + chunk * 8);
    }
  }
}

template <class Tr>
int launch_bwd_convert_dq_for(const FaBwdParams& p, cudaStream_t stream) {
  if constexpr (kDqCoalesced) {
    dim3 grid(unsigned((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM), unsigned(p.heads_q),
              unsigned(p.batch));
    flash_bwd_convert_dq_fragment_kernel<Tr><<<grid, Tr::kNThreads, 0, stream>>>(p);
    return int(cudaGetLastError());
  } else {
    return launch_bwd_convert_dq(p, stream);
  }
}

// Main kernel, then the dQ conversion that matches its dq_accum layout.
template <class Tr>
int launch_bwd_main(const FaBwdParams& p, cudaStream_t stream) {
  const int n_blocks = int((p.seqlen_k + Tr::kBlockN - 1) / Tr::kBlockN);
  const int grid_x = p.deterministic ? p.num_splits : n_blocks;
  dim3 grid(grid_x, unsigned(p.heads_kv), unsigned(p.batch));
  const int smem = Tr::kSmemBytes;
  auto run = [&](auto kernel) -> int {
    cudaError_t e = fa::opt_in_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    if (e != cudaSuccess) return int(e);
    kernel<<<grid, Tr::kNThreads, smem, stream>>>(p);
    return int(cudaGetLastError());
  };
  // Causal is window_right = 0, so it keeps the mask.  Softcap has one instance, with the mask
  // (its models are causal; an unmasked one would add a fourth kernel to every unit's build).
  const bool may_mask = p.seqlen_k % Tr::kBlockN != 0 || p.window_left >= 0 || p.window_right >= 0;
  int err;
  if (p.softcap > 0.f) {
    err = run(flash_bwd_dq_dk_dv_sm80_kernel<Tr, true, true>);
  } else if (may_mask) {
    err = run(flash_bwd_dq_dk_dv_sm80_kernel<Tr, false, true>);
  } else {
    err = run(flash_bwd_dq_dk_dv_sm80_kernel<Tr, false, false>);
  }
  if (err) return err;
  return launch_bwd_convert_dq_for<Tr>(p, stream);
}

}  // namespace fa_bwd
