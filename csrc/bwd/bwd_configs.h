// Tile configurations of the SM80 backward per head dim (8 warps each).  Shared memory stays
// under the A100's 163 KB (2 Q buffers + dO + K + V + P + dS), so these run on SM80 and SM90.
#pragma once
#include "flash_bwd_sm80.cuh"

namespace fa_bwd {

template <int D, typename T> struct BwdConfig;
//                                                 D   M    N   W  MSdP NdKV MdQ stagesQ
template <typename T> struct BwdConfig<64, T>  { using type = BwdTraits<64,  64,  128, 8, 2, 4, 4, 2, T>; };
template <typename T> struct BwdConfig<96, T>  { using type = BwdTraits<96,  64,  128, 8, 2, 4, 4, 2, T>; };
template <typename T> struct BwdConfig<128, T> { using type = BwdTraits<128, 64,  128, 8, 2, 4, 2, 2, T>; };
template <typename T> struct BwdConfig<192, T> { using type = BwdTraits<192, 64,  64,  8, 4, 2, 2, 2, T>; };
template <typename T> struct BwdConfig<256, T> { using type = BwdTraits<256, 64,  64,  8, 4, 2, 2, 1, T>; };

}  // namespace fa_bwd

// Body of one translation unit: defines launch_bwd_sm80_hdim<D>_<NAME>.
#define FA_BWD_INSTANTIATE(D, NAME, T)                                                   \
  namespace fa_bwd {                                                                     \
  static_assert(BwdConfig<D, T>::type::kSmemBytes <= 163 * 1024, "smem over SM80 limit"); \
  int launch_bwd_sm80_hdim##D##_##NAME(const FaBwdParams& p, cudaStream_t s) {           \
    return launch_bwd_main<typename BwdConfig<D, T>::type>(p, s);                        \
  }                                                                                      \
  }
