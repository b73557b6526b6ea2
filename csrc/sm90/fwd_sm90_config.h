// Tile shape per head dim: 128 query rows per CTA (two consumer warpgroups of 64), K/V tiles as
// wide as the 240 registers of a consumer thread allow (S, P, the next S and O live at once), two
// pipeline stages, all within an SM90 CTA's 227 KB of shared memory.
#pragma once

#include "fwd_sm90_traits.h"

namespace fa::sm90 {

template <int kHeadDim, typename Element> struct FwdConfig;
template <typename E> struct FwdConfig<64, E> { using Traits = FwdTraits<64, 128, 2, E>; };
template <typename E> struct FwdConfig<96, E> { using Traits = FwdTraits<96, 128, 2, E>; };
template <typename E> struct FwdConfig<128, E> { using Traits = FwdTraits<128, 128, 2, E>; };
template <typename E> struct FwdConfig<192, E> { using Traits = FwdTraits<192, 96, 2, E>; };
template <typename E> struct FwdConfig<256, E> { using Traits = FwdTraits<256, 80, 2, E>; };

}  // namespace fa::sm90
