// The light kernels around the SM90 backward (memory-bound, one warp per row or per tile):
//  - preprocessing: rowsum(dO * O) and lse * log2(e) per query row, padded to seqlen_q_rounded
//    (so the producer can move a tile's 64 values with one bulk copy: +inf lse past seqlen_q and
//    for rows without keys makes their P exactly zero), and zeroing of dq_accum;
//  - conversion: dq = scale * dq_accum from the dQ fragment order (BwdConsumer::stage_dq) to the
//    output's layout and dtype.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cute/tensor.hpp>

#include "bwd_params.h"
#include "bwd_sm90_traits.h"

namespace fa::sm90 {

using namespace cute;

constexpr int kPrepWarps = 8;

template <class Element>
CUTE_DEVICE float dot8(uint4 a, uint4 b) {
  const Element* x = reinterpret_cast<const Element*>(&a);
  const Element* y = reinterpret_cast<const Element*>(&b);
  float acc = 0.f;
  CUTE_UNROLL
  for (int i = 0; i < 8; ++i) acc += float(x[i]) * float(y[i]);
  return acc;
}

template <class Traits>
__global__ void __launch_bounds__(kPrepWarps * 32)
    fa_bwd_sm90_preprocess_kernel(const FaBwdParams p, float* lse_log2) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kPrepWarps + threadIdx.x / 32;  // of [B, Hq, seqlen_q_rounded]
  if (row >= p.batch * p.heads_q * p.seqlen_q_rounded) return;
  const int64_t i = row % p.seqlen_q_rounded;
  const int64_t bh = row / p.seqlen_q_rounded;
  const int64_t b = bh / p.heads_q, h = bh % p.heads_q;
  float dsum = 0.f, lse2 = CUDART_INF_F;
  if (i < p.seqlen_q) {
    const Element* o = static_cast<const Element*>(p.out) + b * p.out_strides[0] + h * p.out_strides[1] + i * p.out_strides[2];
    const Element* d = static_cast<const Element*>(p.dout) + b * p.dout_strides[0] + h * p.dout_strides[1] + i * p.dout_strides[2];
    for (int c = lane; c < kHeadDim / 8; c += 32) {
      dsum += dot8<Element>(reinterpret_cast<const uint4*>(o)[c], reinterpret_cast<const uint4*>(d)[c]);
    }
    CUTE_UNROLL
    for (int s = 16; s > 0; s >>= 1) dsum += __shfl_xor_sync(0xffffffffu, dsum, s);
    const float lse = p.lse[bh * p.seqlen_q + i];
    if (lse != -CUDART_INF_F) lse2 = lse * 1.4426950408889634f;
  }
  if (lane == 0) {
    p.dsum[row] = dsum;
    lse_log2[row] = lse2;
  }
  float4* dq = reinterpret_cast<float4*>(p.dq_accum + row * kHeadDim);
  for (int c = lane; c < kHeadDim / 4; c += 32) dq[c] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// One CTA per 64-row tile, 128 threads per part of the tile's columns (BwdConsumer::stage_dq);
// thread t of part w reads the values thread t of a consumer warpgroup added there, and finds
// their (row, column) from the same wgmma partition.
template <class Traits>
constexpr int convert_dq_threads() {
  return 128 * (Traits::kHeadDim / Traits::kDqCols);
}

template <class Traits>
__global__ void __launch_bounds__(convert_dq_threads<Traits>()) fa_bwd_sm90_convert_dq_kernel(const FaBwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  const int m_blocks = int(p.seqlen_q_rounded / kBlockM);
  const int m_block = blockIdx.x % m_blocks;
  const int64_t bh = blockIdx.x / m_blocks;
  const int64_t b = bh / p.heads_q, h = bh % p.heads_q;
  const int m0 = m_block * kBlockM;
  if (m0 >= p.seqlen_q) return;
  constexpr int kCols = Traits::kDqCols;
  const int part = threadIdx.x / 128, thread = threadIdx.x % 128;
  typename Traits::TiledMmadQ mma_dq;
  Tensor coords = mma_dq.get_thread_slice(thread).partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kCols>>{}));
  const float* tile = p.dq_accum + (bh * p.seqlen_q_rounded + m0) * kHeadDim + part * (kBlockM * kCols);
  const float4* src = reinterpret_cast<const float4*>(tile) + thread;
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_strides[0] + h * p.dq_strides[1];
  CUTE_UNROLL
  for (int j = 0; j < size(coords) / 4; ++j) {
    const float4 v = src[j * 128];
    const float vals[4] = {v.x, v.y, v.z, v.w};
    CUTE_UNROLL
    for (int e = 0; e < 4; e += 2) {  // values 2k, 2k + 1 are neighbouring columns of one row
      const int row = m0 + get<0>(coords(4 * j + e));
      const int col = part * kCols + get<1>(coords(4 * j + e));
      if (row < p.seqlen_q) {
        Element pair[2] = {Element(vals[e] * p.scale), Element(vals[e + 1] * p.scale)};
        *reinterpret_cast<uint32_t*>(dq + row * p.dq_strides[2] + col) = *reinterpret_cast<uint32_t*>(pair);
      }
    }
  }
}

}  // namespace fa::sm90
