// Online softmax of the SM90 forward on wgmma accumulators.
//
// Unlike the SM80 step, the output rescale is a separate call: with the intra-warpgroup pipeline
// the product O += P[j-1].V[j-1] is still running on the tensor cores while the softmax of block j
// computes its new row max, so O may only be touched once that product has been waited for.
#pragma once

#include <cute/tensor.hpp>

#include "common/cute_utils.h"
#include "sm90_utils.h"

namespace fa::sm90 {

using namespace cute;

// See fwd/fwd_softmax.h: the running max only moves when p would otherwise exceed 2^threshold.
#ifndef FA_FWD_RESCALE_THRESHOLD
#define FA_FWD_RESCALE_THRESHOLD 8.0f
#endif

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];
  float row_sum[kRows];  // per thread; quad-reduced at the end
  float correction[kRows];
  bool rescale;  // whether the last step moved the max (O must be multiplied by correction)
  float scale_log2;

  CUTE_DEVICE explicit OnlineSoftmax(float scale_log2_) : rescale(false), scale_log2(scale_log2_) {}

  // Replaces the scores s (rows, cols) by unnormalised probabilities, updating max and sums.
  template <bool First, class TS>
  CUTE_DEVICE void step(TS& s) {
    static_assert(decltype(size<0>(s))::value == kRows);
    float block_max[kRows];
    bool grow = false;
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      float m = First ? -INFINITY : row_max[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) m = fmaxf(m, s(mi, ni));
      block_max[mi] = quad_allreduce(m, MaxOp{});
      if constexpr (!First) {
        grow |= (block_max[mi] - row_max[mi]) * scale_log2 > float(FA_FWD_RESCALE_THRESHOLD);
      }
    }
    if constexpr (First) {
      rescale = false;
      CUTE_UNROLL
      for (int mi = 0; mi < kRows; ++mi) {
        row_max[mi] = block_max[mi];
        row_sum[mi] = 0.f;
      }
    } else {
      rescale = FA_FWD_RESCALE_THRESHOLD <= 0.f || __any_sync(0xffffffff, grow);
      if (rescale) {
        CUTE_UNROLL
        for (int mi = 0; mi < kRows; ++mi) {
          const float m = block_max[mi];
          correction[mi] = m == -INFINITY ? 1.f : exp2f((row_max[mi] - m) * scale_log2);
          row_sum[mi] *= correction[mi];
          row_max[mi] = m;
        }
      }
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float m_scaled = row_max[mi] == -INFINITY ? 0.f : row_max[mi] * scale_log2;
      float sum = row_sum[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(s); ++ni) {
        const float p = exp2f(s(mi, ni) * scale_log2 - m_scaled);
        s(mi, ni) = p;
        sum += p;
      }
      row_sum[mi] = sum;
    }
  }

  // Applies the last step's correction to the output accumulator (rows, cols).
  template <class TO>
  CUTE_DEVICE void rescale_output(TO& o) const {
    if (!rescale) return;
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      CUTE_UNROLL
      for (int nj = 0; nj < size<1>(o); ++nj) o(mi, nj) *= correction[mi];
    }
  }
};

}  // namespace fa::sm90
