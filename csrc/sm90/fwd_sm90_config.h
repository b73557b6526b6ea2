// Tile shape per head dim: 128 query rows per CTA (two consumer warpgroups of 64; three, 192 rows,
// for head dim 64, whose softmax is as long as its products; one, two CTAs per SM, for short
// sequences at head dims 64 and 128), K/V tiles as wide as the registers
// of a consumer thread allow (the next S, P and O live at once), two pipeline stages, all within an
// SM90 CTA's 227 KB of shared memory.  Without a mask wider key
// tiles amortise each block's fixed costs (row max shuffles, barriers); with a causal or window
// mask narrower ones waste less on the diagonal.
#pragma once

#include <climits>
#include <type_traits>

#include "fwd_sm90_traits.h"

namespace fa::sm90 {

// A tile shape and the most keys it is taken for; a config's Tiers are tried in order (the last
// one serves any length).
template <class Traits_, int kMaxSeqlenK_ = INT_MAX>
struct Tier {
  using Traits = Traits_;
  static constexpr int kMaxSeqlenK = kMaxSeqlenK_;
};
template <class... T>
struct Tiers {};

// ShortTraits replace Traits up to the bound of their tier.  Head dim 64: with few keys the 192-row
// tiles spend much of their work on the diagonal or on per-tile costs; single-warpgroup tiles of 64
// rows, two CTAs per SM, hide one CTA's tile start and end under the other's products.  Against
// the 128-row masked tiles before them (same-lease A/B, H100, 16k tokens, main kernel,
// benchmarks/results/ab_h100_sm90_fwd_1wg.json): causal 1.11x at 512 keys, 1.08x at 1k, 1.06x at
// 2k; without a mask, against the 192-row tiles, 1.04x at 512 but 0.99x at 1k and 0.89x at 2k.
// Their shared memory leaves room for a third K/V stage (1.03x at causal 512, level elsewhere,
// ab_h100_sm90_fwd_d64_1wg_stages3.json), but with it the masked instances' consumers spill 16
// bytes at the 216 registers the dynamic scheduler leaves them: two stages.  With a mask and up to
// 512 keys (ShortestTraits) the key tiles are 64 wide, which wastes half as much on the diagonal
// and leaves registers for four stages: against the 128-key tiles (same lease, main kernel,
// causal, ab_h100_sm90_fwd_d64_n64.json) 1.03x at 512 keys but 0.97x at 1k and 0.92x at 2k.
// (The 128-row masked tiles had replaced the 192-row ones up to 2k: 5-8% faster at 512-1k and,
// taken from the dynamic scheduler, 4.7% at 2k, ab_h100_sm90_d64_short_tiles_dynamic.json.)
// Head dim 128 without a mask: 128-key tiles up to 8k keys (H100, 16k tokens: 5% faster at 512,
// 2% at 1k, about 1% at 2k-8k, level at 8448 = 48 x 176 and 1% slower at 16k), where 176-key ones
// lose more to the partial last block and per-tile fixed costs than they gain per block.  With a
// mask, single-warpgroup tiles of 64 x 64 (with two stages and an output buffer, two CTAs' shared
// memory allows no wider key tile at this head dim) gain only at 512 keys (1.05x; 0.95x at 1k,
// 0.84x at 2k).
// Head dim 256: 80-key tiles leave a last block of 32 keys at 512 (7 blocks for 6.4 blocks of
// work); 64-key ones have none to waste there and at 1k, and win where the mask makes blocks few
// (causal 1.047x at 512, 1.036x at 1k; unmasked 1.013x at 512 but 0.977x at 1k,
// ab_h100_sm90_fwd_prefetch_qbuf_d256.json).
template <int kHeadDim, typename Element, bool Is_local> struct FwdConfig;
template <typename E, bool L> struct FwdConfig<64, E, L> {
  using Traits = FwdTraits<64, 128, 2, E, 3>;
  using ShortTraits = FwdTraits<64, 128, 2, E, 1>;
  using ShortestTraits = FwdTraits<64, 64, 4, E, 1>;
  using Tiers = std::conditional_t<L, sm90::Tiers<Tier<ShortestTraits, 512>, Tier<ShortTraits, 2048>, Tier<Traits>>,
                                   sm90::Tiers<Tier<ShortTraits, 512>, Tier<Traits>>>;
};
template <typename E, bool L> struct FwdConfig<96, E, L> {
  using Traits = FwdTraits<96, 128, 2, E>;
  using Tiers = sm90::Tiers<Tier<Traits>>;
};
template <typename E, bool L> struct FwdConfig<128, E, L> {
  using Traits = FwdTraits<128, L ? 128 : 176, 2, E>;
  using ShortTraits = std::conditional_t<L, FwdTraits<128, 64, 2, E, 1>, FwdTraits<128, 128, 2, E>>;
  using Tiers = sm90::Tiers<Tier<ShortTraits, L ? 512 : 8192>, Tier<Traits>>;
};
template <typename E, bool L> struct FwdConfig<192, E, L> {
  using Traits = FwdTraits<192, 96, 2, E>;
  using Tiers = sm90::Tiers<Tier<Traits>>;
};
template <typename E, bool L> struct FwdConfig<256, E, L> {
  using Traits = FwdTraits<256, 80, 2, E>;
  using ShortTraits = FwdTraits<256, 64, 2, E>;
  using Tiers = sm90::Tiers<Tier<ShortTraits, L ? 1024 : 512>, Tier<Traits>>;
};

}  // namespace fa::sm90
