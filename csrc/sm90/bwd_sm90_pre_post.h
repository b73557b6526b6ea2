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

// Preprocessing's work split: a row of head_dim elements is read as 16-byte chunks by a group of
// lanes (a power of two, so the row sum is a shuffle within the group), and each lane takes
// kPrepRowsPerLane rows at once so that several loads are in flight per thread: with one warp per
// row, half the lanes of a head-dim-128 warp (three quarters at 64) had nothing to load and the
// kernel ran well under the memory bandwidth it is bound by.
template <int kHeadDim>
struct PrepShape {
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks of a bf16/fp16 row
  static constexpr int kLanes = kChunks <= 8 ? 8 : (kChunks <= 16 ? 16 : 32);
  static constexpr int kRowsPerLane = 2;
  static constexpr int kRowsPerWarp = 32 / kLanes * kRowsPerLane;
  static constexpr int kRowsPerBlock = kPrepWarps * kRowsPerWarp;
  static_assert(kChunks <= kLanes && kHeadDim % 8 == 0);
};

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
  using Shape_ = PrepShape<kHeadDim>;
  constexpr int kLanes = Shape_::kLanes, kChunks = Shape_::kChunks, kRows = Shape_::kRowsPerLane;
  const int lane = threadIdx.x % 32;
  const int chunk = lane % kLanes;
  const int64_t total = p.batch * p.heads_q * p.seqlen_q_rounded;
  // Rows of [B, Hq, seqlen_q_rounded]: this lane group's kRows rows, one group-stride apart.
  const int64_t first = int64_t(blockIdx.x) * Shape_::kRowsPerBlock +
                        (threadIdx.x / 32) * Shape_::kRowsPerWarp + lane / kLanes;
  constexpr int kGroupStride = 32 / kLanes;
  uint4 o[kRows], d[kRows];
  bool live[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = first + r * kGroupStride;
    const int64_t i = row % p.seqlen_q_rounded, bh = row / p.seqlen_q_rounded;
    live[r] = row < total && i < p.seqlen_q && chunk < kChunks;
    o[r] = d[r] = make_uint4(0, 0, 0, 0);
    if (live[r]) {
      const int64_t b = bh / p.heads_q, h = bh % p.heads_q;
      o[r] = reinterpret_cast<const uint4*>(static_cast<const Element*>(p.out) + b * p.out_strides[0] +
                                            h * p.out_strides[1] + i * p.out_strides[2])[chunk];
      d[r] = reinterpret_cast<const uint4*>(static_cast<const Element*>(p.dout) + b * p.dout_strides[0] +
                                            h * p.dout_strides[1] + i * p.dout_strides[2])[chunk];
    }
  }
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = first + r * kGroupStride;
    float dsum = live[r] ? dot8<Element>(o[r], d[r]) : 0.f;
    CUTE_UNROLL
    for (int s = kLanes / 2; s > 0; s >>= 1) dsum += __shfl_xor_sync(0xffffffffu, dsum, s);
    if (row >= total) continue;
    const int64_t i = row % p.seqlen_q_rounded, bh = row / p.seqlen_q_rounded;
    if (chunk == 0) {
      float lse2 = CUDART_INF_F;
      if (i < p.seqlen_q) {
        const float lse = p.lse[bh * p.seqlen_q + i];
        if (lse != -CUDART_INF_F) lse2 = lse * 1.4426950408889634f;
      }
      p.dsum[row] = dsum;
      lse_log2[row] = lse2;
      if (p.deterministic && row % Traits::kBlockM == 0) p.dq_semaphore[row / Traits::kBlockM] = 0;
    }
    float4* dq = reinterpret_cast<float4*>(p.dq_accum + row * kHeadDim);
    CUTE_UNROLL
    for (int c = chunk; c < kHeadDim / 4; c += kLanes) dq[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

// One CTA per 64-row tile, 128 threads per part of the tile's columns (BwdConsumer::stage_dq);
// thread t of part w reads the values thread t of a consumer warpgroup added there, and finds
// their (row, column) from the same wgmma partition.  The converted tile is assembled in shared
// memory and written out as whole 16-byte row chunks: stored straight from the fragment order,
// each warp instruction wrote 4-byte pieces of eight rows, and the kernel took three times as
// long as cuDNN's conversion of the same bytes (218 against 74 us, head dim 128, 16k tokens).
template <class Traits>
constexpr int convert_dq_threads() {
  return 128 * (Traits::kHeadDim / Traits::kDqCols);
}

template <class Traits>
__global__ void __launch_bounds__(convert_dq_threads<Traits>()) fa_bwd_sm90_convert_dq_kernel(const FaBwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kThreads = convert_dq_threads<Traits>();
  // Rows padded by 16 bytes: the fragment's 4-byte pieces of eight consecutive rows then fall in
  // different banks.
  constexpr int kRowPitch = kHeadDim + 8;
  __shared__ __align__(16) Element tile_smem[kBlockM * kRowPitch];
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
  constexpr int kLoads = decltype(size(coords))::value / 4;
  float4 v[kLoads];
  CUTE_UNROLL
  for (int j = 0; j < kLoads; ++j) v[j] = src[j * 128];  // all loads in flight before any use
  CUTE_UNROLL
  for (int j = 0; j < kLoads; ++j) {
    const float vals[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
    CUTE_UNROLL
    for (int e = 0; e < 4; e += 2) {  // values 2k, 2k + 1 are neighbouring columns of one row
      const int row = get<0>(coords(4 * j + e));
      const int col = part * kCols + get<1>(coords(4 * j + e));
      Element pair[2] = {Element(vals[e] * p.scale), Element(vals[e + 1] * p.scale)};
      *reinterpret_cast<uint32_t*>(tile_smem + row * kRowPitch + col) = *reinterpret_cast<uint32_t*>(pair);
    }
  }
  __syncthreads();
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  Element* dq = static_cast<Element*>(p.dq) + b * p.dq_strides[0] + h * p.dq_strides[1];
  CUTE_UNROLL
  for (int c = threadIdx.x; c < kBlockM * kChunksPerRow; c += kThreads) {
    const int row = c / kChunksPerRow, chunk = c % kChunksPerRow;
    if (m0 + row < p.seqlen_q) {
      *reinterpret_cast<uint4*>(dq + (m0 + row) * p.dq_strides[2] + chunk * 8) =
          *reinterpret_cast<const uint4*>(tile_smem + row * kRowPitch + chunk * 8);
    }
  }
}

}  // namespace fa::sm90
