// Tile shape per head dim: 128 query rows per CTA, 4 warps of 32 rows (8 warps for the wide head
// dims), K/V tiles sized so that the accumulators fit in 255 registers and shared memory stays
// within an SM80 CTA's 163 KB.  Head dim 64 uses 64 keys per tile rather than FA2's 128: the
// 128-key tile spilled about 150 bytes per thread (sm_90a build) and ran 4-10% behind SDPA
// on an H100.  Head dim 128 (FA2's shape, which spills in FA2 too) still spills 88-172 bytes
// per thread on sm_80 and 164-228 on sm_90a, in the P.V phase.
#pragma once

#include "fwd_traits.h"

namespace fa::fwd {

template <int kHeadDim, typename Element> struct FwdConfig;
template <typename E> struct FwdConfig<64, E> { using Traits = FwdTraits<64, 128, 64, 4, E>; };
template <typename E> struct FwdConfig<96, E> { using Traits = FwdTraits<96, 128, 64, 4, E>; };
template <typename E> struct FwdConfig<128, E> { using Traits = FwdTraits<128, 128, 64, 4, E>; };
template <typename E> struct FwdConfig<192, E> { using Traits = FwdTraits<192, 128, 64, 8, E>; };
template <typename E> struct FwdConfig<256, E> { using Traits = FwdTraits<256, 128, 64, 8, E>; };

}  // namespace fa::fwd
