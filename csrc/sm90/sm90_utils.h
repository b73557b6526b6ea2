// What the SM90 kernels (forward and backward) share: CuTe's configuration for sm_90a, named
// barriers, one wgmma batch, and the global tensors their TMA descriptors are made from.
#pragma once

// wgmma takes any N that is a multiple of 8; CuTe's op selectors consider the shapes outside
// powers of two (the 80-key tiles of head dim 256) only when asked.
#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#endif

// CuTe encodes TMA descriptors through cuTensorMapEncodeTiled, defined in tensor_map_encode.cpp
// with the driver lookup done once (CUTLASS would repeat it for every descriptor).
#ifndef CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL
#define CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL
#endif

#include <cute/tensor.hpp>  // first: the atom headers below assume it
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace fa::sm90 {

using namespace cute;

// setmaxnreg moves registers within the CTA's own allocation (its share of the SM's 64K registers
// over its threads, in steps of 8 per thread), so the producer warpgroup's 128 threads and the
// consumers' may not hold more than that in all: a consumer increase the producer's decrease does
// not cover waits forever.
constexpr bool setmaxnreg_fits(int producer, int consumer_threads, int consumer, int ctas_per_sm = 1) {
  const int threads = 128 + consumer_threads;
  return 128 * producer + consumer_threads * consumer <= 65536 / ctas_per_sm / threads / 8 * 8 * threads;
}

CUTE_DEVICE void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
CUTE_DEVICE void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Adds `bytes` of fp32 from shared memory into global memory element by element, in L2, as one
// bulk operation of the async proxy (one instruction for a whole tile instead of one atomic per
// 16 bytes per thread).  Both addresses 16-byte aligned, bytes a multiple of 16.
CUTE_DEVICE void bulk_reduce_add(float* gmem, float const* smem, int bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
               "r"(cast_smem_ptr_to_uint(smem)), "r"(bytes)
               : "memory");
}
// Waits until this thread's committed bulk operations have completed, not only read shared
// memory (CuTe's tma_store_wait waits for the reads).
CUTE_DEVICE void bulk_wait_complete() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Spins until *flag == value (acquire at GPU scope), then orders the async proxy (bulk reduces
// issued next) after what the flag's writer had completed.
CUTE_DEVICE void wait_flag_equal(int const* flag, int value) {
  int seen;
  do {
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(seen) : "l"(flag) : "memory");
  } while (seen != value);
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
// After bulk_wait_complete: makes this thread's completed bulk reduces visible, then stores
// value to *flag (release at GPU scope).
CUTE_DEVICE void release_flag_store(int* flag, int value) {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
}

// acc (+)= A.B over all k slices as one wgmma batch; waits until at most kWait batches of this
// warpgroup are still in flight (kWait < 0: no wait).
template <bool kZeroInit, int kWait, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma(TiledMma& tiled_mma, TA const& tCrA, TB const& tCrB, TC& tCrC) {
  // A from registers (P), or shared-memory descriptors (Q).
  constexpr bool kARegisters = !is_same_v<typename TA::engine_type::iterator, GMMA::DescriptorIterator>;
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<TA&>(tCrA));
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  if constexpr (kZeroInit) tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    cute::gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  if constexpr (kWait >= 0) warpgroup_wait<kWait>();
  warpgroup_fence_operand(tCrC);
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<TA&>(tCrA));
}

// src converted into dst's own registers (same number of elements, same order).  Converting into
// a temporary and copying that element by element made ptxas move every 16-bit half on its own
// (a PRMT or LOP3 per element after each packed conversion, Nsight Compute of the SM90 forward).
template <class EngineS, class LayoutS, class EngineD, class LayoutD>
CUTE_DEVICE void convert_into(Tensor<EngineS, LayoutS> const& src, Tensor<EngineD, LayoutD>& dst) {
  using From = typename EngineS::value_type;
  using To = typename EngineD::value_type;
  constexpr int N = decltype(size(src))::value;
  static_assert(decltype(size(dst))::value == N);
  cutlass::NumericArrayConverter<To, From, N> convert;
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, N> const*>(src.data()));
}

// A wgmma accumulator ((2, 2, V), MMA_M, MMA_N) seen as (rows, cols) = ((2, MMA_M), (2, V, MMA_N)):
// value mode 1 steps 8 rows, modes 0 and 2 step 1 and 8 columns.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_to_rowcol(Layout const& l) {
  static_assert(decltype(rank<0>(l))::value == 3, "expects an SM90 accumulator layout");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The same accumulator (64 x N, one wgmma tile) as the register A operand of a k16 wgmma:
// ((2, 2, 2), MMA_M, N / 16), the third value mode being the upper 8 columns of each k16 slice.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_to_a_operand(Layout const& l) {
  static_assert(decltype(size<2>(l))::value == 1, "expects one wgmma tile along N");
  auto cols = logical_divide(get<0, 2>(l), Tile<_2>{});  // ((2, V / 2))
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0, 0>(cols)), get<1>(l), get<0, 1>(cols));
}

// The TMA unit wants every stride a nonzero multiple of 16 bytes, even of a mode of extent 1 (the
// Python side passes 0 there): give such modes the stride of a dense tensor.
inline void dense_if_unused(int64_t& head_stride, int64_t& batch_stride, int64_t row_stride, int seqlen, int heads) {
  if (head_stride == 0) head_stride = row_stride * seqlen;
  if (batch_stride == 0) batch_stride = head_stride * heads;
}

// A [batch, heads, seqlen, head dim] tensor as TMA sees it: (seqlen, head dim, heads, batch).
template <int kHeadDim, class Ptr>
auto seq_major_tensor(Ptr ptr, int seqlen, int heads, int batch, int64_t row, int64_t head, int64_t bat) {
  dense_if_unused(head, bat, row, seqlen, heads);
  return make_tensor(make_gmem_ptr(ptr), make_layout(make_shape(seqlen, int32_t(kHeadDim), heads, batch),
                                                     make_stride(row, _1{}, head, bat)));
}

}  // namespace fa::sm90
