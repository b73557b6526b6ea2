// Device helpers shared by the CuTe kernels (forward and backward).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

namespace fa {

using namespace cute;

// An SM80 mma accumulator fragment ((2, 2), MMA_M, MMA_N) seen as (rows, cols) =
// ((2, MMA_M), (2, MMA_N)): value mode 1 steps 8 rows, value mode 0 two adjacent columns.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_to_rowcol(Layout const& l) {
  static_assert(decltype(rank<0>(l))::value == 2, "expects an SM80 accumulator layout");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

// An m16n8k16 accumulator ((2, 2), MMA_M, MMA_N) reused as the A operand of the next product:
// two adjacent n8 accumulators form one k16 A fragment, ((2, 2, 2), MMA_M, MMA_N / 2).
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_to_a_operand(Layout const& l) {
  auto split = logical_divide(l, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
}

template <typename To, class Engine, class Layout>
CUTE_DEVICE auto convert_type(Tensor<Engine, Layout> const& src) {
  using From = typename Engine::value_type;
  constexpr int N = decltype(size(src))::value;
  Tensor dst = make_tensor<To>(src.layout());
  cutlass::NumericArrayConverter<To, From, N> convert;
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, N> const*>(src.data()));
  return dst;
}

struct MaxOp {
  CUTE_DEVICE float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  CUTE_DEVICE float operator()(float a, float b) const { return a + b; }
};

// The four threads of an mma quad hold one accumulator row between them.
template <class Op>
CUTE_DEVICE float quad_allreduce(float x, Op op) {
  x = op(x, __shfl_xor_sync(0xffffffff, x, 2));
  x = op(x, __shfl_xor_sync(0xffffffff, x, 1));
  return x;
}

// Copies a (CPY, CPY_ROWS, CPY_COLS) partition row by row where the row index (from an identity
// tensor partitioned the same way) is below max_rows; other rows of dst are zeroed so that no
// stale shared memory (possibly NaN) reaches the products.
template <class TiledCopy, class TS, class TD, class TC>
CUTE_DEVICE void copy_rows_or_zero(TiledCopy const& tiled_copy, TS const& src, TD&& dst,
                                   TC const& coords, int max_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coords(0, m, 0)) < max_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) copy(tiled_copy, src(_, m, k), dst(_, m, k));
    } else {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) clear(dst(_, m, k));
    }
  }
}

// Writes only rows below max_rows (the tile may extend past the tensor).
template <class TiledCopy, class TS, class TD, class TC>
CUTE_DEVICE void copy_rows(TiledCopy const& tiled_copy, TS const& src, TD&& dst, TC const& coords,
                           int max_rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coords(0, m, 0)) < max_rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) copy(tiled_copy, src(_, m, k), dst(_, m, k));
    }
  }
}

}  // namespace fa

namespace fa {

// acc += A.B with both operands in shared memory, loading k-slice k+1 into registers (ldmatrix)
// while the tensor cores work on slice k.
template <class Acc, class TA, class TB, class TsA, class TsB, class TiledMma, class CopyA,
          class ThrCopyA, class CopyB, class ThrCopyB>
CUTE_DEVICE void gemm_smem_smem(Acc& acc, TA& tCrA, TB& tCrB, TsA const& tCsA, TsB const& tCsB,
                                TiledMma const& tiled_mma, CopyA const& copy_a, ThrCopyA const& thr_copy_a,
                                CopyB const& copy_b, ThrCopyB const& thr_copy_b) {
  Tensor tCrA_view = thr_copy_a.retile_D(tCrA);
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  copy(copy_a, tCsA(_, _, _0{}), tCrA_view(_, _, _0{}));
  copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    if (k < size<2>(tCrA) - 1) {
      copy(copy_a, tCsA(_, _, k + 1), tCrA_view(_, _, k + 1));
      copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    }
    gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

// acc += A.B with A already in registers (the softmax probabilities) and B in shared memory.
template <class Acc, class TA, class TB, class TsB, class TiledMma, class CopyB, class ThrCopyB>
CUTE_DEVICE void gemm_reg_smem(Acc& acc, TA const& tCrA, TB& tCrB, TsB const& tCsB, TiledMma const& tiled_mma,
                               CopyB const& copy_b, ThrCopyB const& thr_copy_b) {
  Tensor tCrB_view = thr_copy_b.retile_D(tCrB);
  copy(copy_b, tCsB(_, _, _0{}), tCrB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    if (k < size<2>(tCrA) - 1) copy(copy_b, tCsB(_, _, k + 1), tCrB_view(_, _, k + 1));
    gemm(tiled_mma, tCrA(_, _, k), tCrB(_, _, k), acc);
  }
}

}  // namespace fa
