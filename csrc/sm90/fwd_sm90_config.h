// Tile shape per head dim: 128 query rows per CTA (two consumer warpgroups of 64; three, 192 rows,
// for head dim 64, whose softmax is as long as its products), K/V tiles as wide as the registers
// of a consumer thread allow (the next S, P and O live at once), two pipeline stages, all within an
// SM90 CTA's 227 KB of shared memory.  Without a mask wider key
// tiles amortise each block's fixed costs (row max shuffles, barriers); with a causal or window
// mask narrower ones waste less on the diagonal.
#pragma once

#include <type_traits>

#include "fwd_sm90_traits.h"

namespace fa::sm90 {

// ShortTraits replace Traits up to kShortSeqlenK keys.  Head dim 64 with a mask: with few keys
// the 192-row tiles spend much of their work on the diagonal (measured on H100, causal, 16k
// tokens: 128-row tiles 5% faster at 512 keys and 8% at 1k, 5-6% slower at 2k-4k; without a mask
// 192 rows stay ahead, level at 512-1k and 6-10% faster from 2k).  Since the 128-row tiles of a
// masked launch come from the dynamic scheduler (and the 192-row ones still a CTA each), they are
// 4.7% faster at 2k too, level at 4k, 6% slower at 8k-16k (same-lease A/B,
// benchmarks/results/ab_h100_sm90_d64_short_tiles_dynamic.json).  Head dim 128 without a mask:
// 128-key tiles up to 8k keys (H100, 16k tokens: 5% faster at 512, 2% at 1k, about 1% at 2k-8k,
// level at 8448 = 48 x 176 and 1% slower at 16k), where 176-key ones lose more to the partial
// last block and per-tile fixed costs than they gain per block.
template <int kHeadDim, typename Element, bool Is_local> struct FwdConfig;
template <typename E, bool L> struct FwdConfig<64, E, L> {
  using Traits = FwdTraits<64, 128, 2, E, 3>;
  using ShortTraits = std::conditional_t<L, FwdTraits<64, 128, 2, E, 2>, Traits>;
  static constexpr int kShortSeqlenK = L ? 2048 : 0;
};
template <typename E, bool L> struct FwdConfig<96, E, L> { using Traits = FwdTraits<96, 128, 2, E>; };
template <typename E, bool L> struct FwdConfig<128, E, L> {
  using Traits = FwdTraits<128, L ? 128 : 176, 2, E>;
  using ShortTraits = FwdTraits<128, 128, 2, E>;
  static constexpr int kShortSeqlenK = L ? 0 : 8192;
};
template <typename E, bool L> struct FwdConfig<192, E, L> { using Traits = FwdTraits<192, 96, 2, E>; };
template <typename E, bool L> struct FwdConfig<256, E, L> { using Traits = FwdTraits<256, 80, 2, E>; };

// The tile shape for a call: ShortTraits where the config has them and the keys are few.
template <class Config, class = void>
struct HasShortTraits : std::false_type {};
template <class Config>
struct HasShortTraits<Config, std::void_t<typename Config::ShortTraits>> : std::true_type {};

}  // namespace fa::sm90
