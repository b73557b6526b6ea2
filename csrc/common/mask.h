// Which keys a query row may see (causal, both alignments, sliding window), and the masking of a
// score tile by it.  Shared by the SM80 and SM90 forward kernels.
#pragma once

#include <cute/tensor.hpp>

namespace fa {

using namespace cute;

// Keys a query row may see: [lo, hi).  Causal is window_right = 0 (folded on the host).
struct KeyRange {
  int seqlen_k, offset, window_left, window_right;

  CUTE_DEVICE int hi(int row) const {
    return window_right >= 0 ? min(seqlen_k, row + offset + window_right + 1) : seqlen_k;
  }
  CUTE_DEVICE int lo(int row) const { return window_left >= 0 ? max(0, row + offset - window_left) : 0; }
};

// Sets disallowed scores of a (rows, cols) tile to -inf.  coords gives each element's position in
// the tile; row0/col0 place the tile in the sequence.
template <bool Is_local, class TS, class TC>
CUTE_DEVICE void mask_scores(TS& s, TC const& coords, int row0, int col0, KeyRange const& keys) {
  CUTE_UNROLL
  for (int mi = 0; mi < size<0>(s); ++mi) {
    const int row = row0 + get<0>(coords(mi, 0));
    const int hi = Is_local ? keys.hi(row) : keys.seqlen_k;
    const int lo = Is_local ? keys.lo(row) : 0;
    CUTE_UNROLL
    for (int ni = 0; ni < size<1>(s); ++ni) {
      const int col = col0 + get<1>(coords(mi, ni));
      if (col >= hi || col < lo) s(mi, ni) = -INFINITY;
    }
  }
}

}  // namespace fa
