// Online softmax of the SM90 forward, on accumulators in registers.
#pragma once

#include <cute/tensor.hpp>

#include "cute_utils.h"

namespace fa {

using namespace cute;

// Rescaling the output accumulator costs a multiply per accumulator element, as much ALU work as
// the exponentials of a 64-key block.  The running max is therefore only moved when some row of
// the warp would otherwise see p above 2^FA_FWD_RESCALE_THRESHOLD (fine in fp32 sums and in the
// 16-bit P operand); out and lse stay exact since the sum and the accumulator share the stale max.
// Random scores almost never grow that much after the first block.  0 disables it.
#ifndef FA_FWD_RESCALE_THRESHOLD
#define FA_FWD_RESCALE_THRESHOLD 8.0f
#endif

// The online softmax over blocks of scores (rows, cols) held in registers, rows spread over the
// four threads of an mma quad (SM80 mma.sync and SM90 wgmma accumulators alike), in units where
// p = exp2(s * scale_log2 - max * scale_log2).  step() replaces a block of scores by unnormalised
// probabilities and updates the running max and (per-thread) sums; rescale_output() then applies
// the step's correction to the output accumulator.  The two are apart because the SM90 kernel's
// P.V product of the previous block is still running when the next step computes its max.
// The SM80 forward still has its own fused copy (fwd/fwd_softmax.h): moving it onto this one was
// compile-checked (its spills moved by -8..+12 bytes) but not run on a GPU, so it did not land.

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

}  // namespace fa
