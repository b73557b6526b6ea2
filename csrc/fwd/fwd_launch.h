// Host side of the SM80 forward: picks the template instance and launches it.
#pragma once

#include <cuda_runtime_api.h>

#include "common/device_cache.h"
#include "common/error.h"
#include "common/fa_params.h"
#include "common/static_switch.h"
#include "common/tile_order.h"
#include "fwd_kernel.h"

namespace fa::fwd {

template <typename Traits, bool Is_local, bool Is_softcap>
int launch(const FaFwdParams& params, cudaStream_t stream) {
  auto kernel = &fa_fwd_sm80_kernel<Traits, Is_local, Is_softcap>;
  constexpr int smem = Traits::kSmemBytes;
  if (cudaError_t err = opt_in_dynamic_smem(reinterpret_cast<const void*>(kernel), smem); err != cudaSuccess) {
    set_last_error(std::string("fa_fwd_sm80: cannot get ") + std::to_string(smem) +
                   " bytes of shared memory: " + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  const int m_blocks = (params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  dim3 grid(m_blocks, params.heads_q, params.batch);
  TileOrder order;
  if constexpr (Is_local) {
    const int pairs = params.heads_q * params.batch;
    FA_REQUIRE(int64_t(m_blocks) * pairs < (int64_t(1) << 31), FA_ERR_UNSUPPORTED,
               "fa_fwd_sm80: more than 2^31 query tiles");
    if (int status = masked_grid_order<fa_fwd_sm80_kernel<Traits, Is_local, Is_softcap>>(
            Traits::kNThreads, smem, m_blocks, pairs, order);
        status != FA_OK)
      return status;
    grid = dim3(order.total());
  }
  kernel<<<grid, Traits::kNThreads, smem, stream>>>(params, order);
  return check_launch("fa_fwd_sm80 launch");
}

template <typename Traits>
int run_fwd(const FaFwdParams& params, cudaStream_t stream) {
#ifdef FA_FWD_DEV_DENSE_ONLY  // compile-time experiments: one instance per unit
  return launch<Traits, false, false>(params, stream);
#else
  const bool local = params.window_left >= 0 || params.window_right >= 0;
  const bool softcap = params.softcap > 0.f;
  return FA_BOOL_SWITCH(local, Is_local, [&] {
    return FA_BOOL_SWITCH(softcap, Is_softcap, [&] { return launch<Traits, Is_local, Is_softcap>(params, stream); });
  });
#endif
}

}  // namespace fa::fwd
