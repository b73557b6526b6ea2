// Masking and the online softmax of the forward main loop, on accumulators in registers.
#pragma once

#include <cute/tensor.hpp>

#include "common/cute_utils.h"
#include "common/mask.h"

namespace fa::fwd {

using namespace cute;

// Rescaling the output accumulator costs a multiply per accumulator element, as much ALU work as
// the exponentials of a 64-key block.  The running max is therefore only moved when some row of
// the warp would otherwise see p above 2^kRescaleThreshold (fine in fp32 sums and in the 16-bit
// P operand); out and lse stay exact since the sum and the accumulator share the stale max.
// Random scores almost never grow that much after the first block.  0 disables it.
#ifndef FA_FWD_RESCALE_THRESHOLD
#define FA_FWD_RESCALE_THRESHOLD 8.0f
#endif

// One step of the online softmax over a new block of scores s (rows, cols), in units where
// p = exp2(s * scale_log2 - max * scale_log2).  Rescales the output accumulator rows when the
// running max moves, replaces s by the unnormalised probabilities and adds them to the running
// (per-thread, not yet quad-reduced) row sums.  A row whose max is still -inf keeps p = 0.
template <bool First, int kRows, class TS, class TO>
CUTE_DEVICE void online_softmax_step(TS& s, TO& o, float (&row_max)[kRows], float (&row_sum)[kRows],
                                     float scale_log2) {
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
      // NaN (both -inf) compares false: a row that has seen no key yet needs nothing.
      grow |= (block_max[mi] - row_max[mi]) * scale_log2 > float(FA_FWD_RESCALE_THRESHOLD);
    }
  }
  if constexpr (First) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      row_max[mi] = block_max[mi];
      row_sum[mi] = 0.f;
    }
  } else if (FA_FWD_RESCALE_THRESHOLD <= 0.f || __any_sync(0xffffffff, grow)) {
    CUTE_UNROLL
    for (int mi = 0; mi < kRows; ++mi) {
      const float m = block_max[mi];  // >= row_max[mi]
      const float correction = m == -INFINITY ? 1.f : exp2f((row_max[mi] - m) * scale_log2);
      row_sum[mi] *= correction;
      CUTE_UNROLL
      for (int nj = 0; nj < size<1>(o); ++nj) o(mi, nj) *= correction;
      row_max[mi] = m;
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

}  // namespace fa::fwd
