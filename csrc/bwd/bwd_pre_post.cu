// Backward pre- and post-processing (memory-bound, plain CUDA):
//  - fa_bwd_dot_do_o_kernel: D_i = sum_d dO[i,d] * O[i,d] in fp32, and zeroing of the rows of the
//    fp32 dQ accumulator (every split) that the main kernel adds into;
//  - fa_bwd_convert_dq_kernel: dq = scale * sum over splits of a row-major dq_accum (only in
//    -DFA_BWD_DQ_ROWMAJOR builds), cast to q's dtype and written through dq's strides; the main
//    kernel's launcher runs the conversion that matches the layout its kernel writes.
// Each lane owns 8 consecutive elements (16-byte accesses): the conversion gives a warp one
// (batch, head, row), the preprocessing a group of lanes (lanes_per_row).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../bwd_params.h"
#include "bwd_launch.h"

namespace fa_bwd {
namespace {

constexpr int kWarpsPerBlock = 8;

struct alignas(16) Vec8 {
  uint4 raw;
};

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if constexpr (sizeof(T) == 2 && std::is_same_v<T, __half>) f[i] = __half2float(h[i]);
    else f[i] = __bfloat162float(h[i]);
  }
}

template <typename T>
__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint4 raw;
  T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if constexpr (std::is_same_v<T, __half>) h[i] = __float2half_rn(f[i]);
    else h[i] = __float2bfloat16_rn(f[i]);
  }
  return raw;
}

struct RowIndex {
  int64_t b, h, i;
};

__device__ __forceinline__ RowIndex split_row(int64_t row, int64_t heads, int64_t seqlen) {
  RowIndex r;
  r.i = row % seqlen;
  const int64_t bh = row / seqlen;
  r.h = bh % heads;
  r.b = bh / heads;
  return r;
}

// Lanes per row in the preprocessing: every lane owns one 16-byte chunk where the head dim allows
// (a warp covers 4 rows at d=64, 2 at d=128); with one warp per row, half the lanes of a d=128
// warp idled and the kernel took 106 us against FlashAttention-2's 95 (H100, 16k tokens).
__host__ __device__ constexpr int lanes_per_row(int64_t head_dim) {
  return head_dim / 8 <= 8 ? 8 : head_dim / 8 <= 16 ? 16 : 32;
}

template <typename T>
__global__ void fa_bwd_dot_do_o_kernel(const FaBwdParams p) {
  const int group = lanes_per_row(p.head_dim);
  const int lane = threadIdx.x % 32, sub = lane % group;
  const int64_t row = (int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32) * (32 / group) + lane / group;
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  const bool valid = row < rows;  // no early return: the whole warp takes part in the shuffles
  const RowIndex r = split_row(valid ? row : 0, p.heads_q, p.seqlen_q);
  const int chunks = int(p.head_dim / 8);
  const T* o = static_cast<const T*>(p.out) + r.b * p.out_strides[0] + r.h * p.out_strides[1] +
               r.i * p.out_strides[2];
  const T* dout = static_cast<const T*>(p.dout) + r.b * p.dout_strides[0] +
                  r.h * p.dout_strides[1] + r.i * p.dout_strides[2];
  float acc = 0.f;
  for (int c = sub; valid && c < chunks; c += group) {
    float fo[8], fd[8];
    unpack8<T>(*reinterpret_cast<const uint4*>(o + c * 8), fo);
    unpack8<T>(*reinterpret_cast<const uint4*>(dout + c * 8), fd);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc += fo[i] * fd[i];
  }
  for (int s = group / 2; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (!valid) return;
  if (sub == 0) p.dsum[row] = acc;

  const int64_t accum_row = (row - r.i) / p.seqlen_q * p.seqlen_q_rounded + r.i;
  const int64_t split_stride = p.batch * p.heads_q * p.seqlen_q_rounded * p.head_dim;
  const int splits = p.deterministic ? p.num_splits : 1;
  // The last row's lanes also zero the padding rows up to seqlen_q_rounded: the main kernel
  // may keep dQ partials there (its default dq_accum order stores a tile in MMA-fragment order,
  // spread over all the tile's rows), so they must start at zero too.
  const int64_t zero_rows = r.i == p.seqlen_q - 1 ? p.seqlen_q_rounded - r.i : 1;
  for (int s = 0; s < splits; ++s) {
    float4* dst = reinterpret_cast<float4*>(p.dq_accum + s * split_stride + accum_row * p.head_dim);
    for (int64_t c = sub; c < 2 * chunks * zero_rows; c += group) dst[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

template <typename T>
__global__ void fa_bwd_convert_dq_kernel(const FaBwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  if (row >= rows) return;
  const RowIndex r = split_row(row, p.heads_q, p.seqlen_q);
  const int chunks = int(p.head_dim / 8);
  const int64_t accum_row = (row - r.i) / p.seqlen_q * p.seqlen_q_rounded + r.i;
  const int64_t split_stride = p.batch * p.heads_q * p.seqlen_q_rounded * p.head_dim;
  const int splits = p.deterministic ? p.num_splits : 1;
  T* dq = static_cast<T*>(p.dq) + r.b * p.dq_strides[0] + r.h * p.dq_strides[1] +
          r.i * p.dq_strides[2];
  for (int c = lane; c < chunks; c += 32) {
    float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    // Fixed summation order over splits: part of what makes deterministic mode bit-stable.
    for (int s = 0; s < splits; ++s) {
      const float4* src =
          reinterpret_cast<const float4*>(p.dq_accum + s * split_stride + accum_row * p.head_dim) + 2 * c;
      const float4 a = src[0], b = src[1];
      f[0] += a.x; f[1] += a.y; f[2] += a.z; f[3] += a.w;
      f[4] += b.x; f[5] += b.y; f[6] += b.z; f[7] += b.w;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] *= p.scale;
    *reinterpret_cast<uint4*>(dq + c * 8) = pack8<T>(f);
  }
}

template <typename T>
int launch_pre_t(const FaBwdParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  const int64_t rows_per_block = kWarpsPerBlock * (32 / lanes_per_row(p.head_dim));
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  fa_bwd_dot_do_o_kernel<T><<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(p);
  return int(cudaGetLastError());
}

template <typename T>
int launch_post_t(const FaBwdParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  fa_bwd_convert_dq_kernel<T><<<unsigned(blocks), kWarpsPerBlock * 32, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace

int launch_bwd_preprocess(const FaBwdParams& p, cudaStream_t stream) {
  return p.dtype == FA_BWD_BF16 ? launch_pre_t<__nv_bfloat16>(p, stream)
                                : launch_pre_t<__half>(p, stream);
}

int launch_bwd_convert_dq(const FaBwdParams& p, cudaStream_t stream) {
  return p.dtype == FA_BWD_BF16 ? launch_post_t<__nv_bfloat16>(p, stream)
                                : launch_post_t<__half>(p, stream);
}

}  // namespace fa_bwd
