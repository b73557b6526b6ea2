// Views of wgmma accumulators for the SM90 forward's softmax (common/online_softmax.h) and for
// reusing the probabilities as the A operand of the P.V product.
#pragma once

#include <cute/tensor.hpp>

#include "common/cute_utils.h"
#include "common/online_softmax.h"

namespace fa::sm90 {

using namespace cute;

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

}  // namespace fa::sm90
