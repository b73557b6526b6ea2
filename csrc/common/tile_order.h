// Launch order of the tiles of a masked (causal or windowed) grid.
//
// With a causal mask the tiles of one (head, batch) pair cost from one key block to all of them,
// and the hardware hands out CTAs in launch order.  Pair after pair, each pair's longest tile
// first, keeps a pair's tiles in flight together (they read the same K and V, or Q and dO, once
// from DRAM), but the last pairs' long tiles start near the end of the grid and the GPU idles
// while a few of them finish: a list-scheduling model puts that tail at 5-15% of a causal kernel,
// and the SM80 forward's causal time was 13% above half its non-causal time on an H100.
//
// So pairs run one after another as before, except the last ones: the last group of pairs goes
// rank by rank (every pair's longest tile, then every pair's next longest, ...), so its short tiles
// fill the tail.  The group holds about two waves of tiles.  Ordering every pair that way (in
// groups sized to the L2) balanced the tail as well, but measured 5-13% slower on the SM90
// kernels at 512-1k tokens: a pair's tiles then run waves apart and re-read its K and V from DRAM.
// Used by the SM80 and SM90 forwards and the SM90 backward; the SM80 backward keeps its plain grid
// (with this order it ran 2-4% slower at 512 and 16k tokens and at most 1.5% faster elsewhere: each
// of its key blocks reads the whole of its pair's Q and dO, so the last group's pairs outgrow L2).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "device_cache.h"
#include "error.h"

namespace fa {

struct TileOrder {
  int blocks = 0;      // tiles per pair; 0 = the launch keeps its plain (block, head, batch) grid
  int lead_pairs = 0;  // pairs taken one after another, each longest tile first
  int last_pairs = 0;  // pairs of the last group, taken rank by rank

  __host__ __device__ bool enabled() const { return blocks > 0; }
  __host__ __device__ int total() const { return blocks * (lead_pairs + last_pairs); }

  // Tile t of the launch order as (rank, pair): rank 0 is a pair's longest tile.
  __host__ __device__ void tile(int t, int& rank, int& pair) const {
    const int lead_tiles = lead_pairs * blocks;
    if (t < lead_tiles) {
      pair = t / blocks;
      rank = t - pair * blocks;
    } else {
      const int u = t - lead_tiles;
      rank = u / last_pairs;
      pair = lead_pairs + (u - rank * last_pairs);
    }
  }
};

// Multiprocessors of the current device.
inline int multiprocessor_count(int& sms) {
  static DeviceCache cache{};
  cudaError_t err = cached_per_device(cache, sms, [](int device, int& value) {
    return cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device);
  });
  if (err != cudaSuccess) {
    set_last_error(std::string("cannot query the device: ") + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  return FA_OK;
}

// CTAs of `Kernel` (launched with `threads` threads and `smem` dynamic shared-memory bytes) that one
// multiprocessor holds at once.
template <auto Kernel>
int resident_ctas_per_sm(int threads, int smem, int& count) {
  static DeviceCache cache{};
  cudaError_t err = cached_per_device(cache, count, [&](int, int& value) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&value, Kernel, threads, smem);
    value = std::max(value, 1);
    return e;
  });
  if (err != cudaSuccess) {
    set_last_error(std::string("cannot query the kernel's occupancy: ") + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  return FA_OK;
}

// The order for `pairs` pairs of `blocks` tiles each with `slots` CTAs resident at once.
inline TileOrder longest_first_tail(int blocks, int pairs, int slots) {
  TileOrder order;
  if (blocks <= 0 || pairs <= 0) return order;
  const int64_t tail = (2 * int64_t(slots) + blocks - 1) / blocks;  // pairs in two waves of tiles
  order.blocks = blocks;
  order.last_pairs = int(std::min<int64_t>(pairs, std::max<int64_t>(1, tail)));
  order.lead_pairs = pairs - order.last_pairs;
  return order;
}

// The order of a masked launch of `Kernel` with `blocks` tiles per pair.
template <auto Kernel>
int masked_grid_order(int threads, int smem, int blocks, int pairs, TileOrder& order) {
  int sms = 0, per_sm = 0;
  if (int status = multiprocessor_count(sms); status != FA_OK) return status;
  if (int status = resident_ctas_per_sm<Kernel>(threads, smem, per_sm); status != FA_OK) return status;
  order = longest_first_tail(blocks, pairs, sms * per_sm);
  return FA_OK;
}

}  // namespace fa
