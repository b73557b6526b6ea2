// Per-device facts the launch paths need on every call but that cost more host time to ask the
// runtime for than the launch itself (device attributes, occupancy, the shared-memory opt-in):
// asked once per device, and per kernel where the caller keeps a cache per kernel, then kept.
// A kernel's attributes belong to the device's primary context, which torch never resets.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <mutex>
#include <set>
#include <tuple>

namespace fa {

constexpr int kMaxCachedDevices = 64;  // a device index past this is asked on every call

using DeviceCache = std::atomic<int>[kMaxCachedDevices];

// value = cache[current device] when known (> 0), else query(device, value), kept when > 0.
template <class Query>
cudaError_t cached_per_device(DeviceCache& cache, int& value, Query query) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) {
      value = known;
      return cudaSuccess;
    }
  }
  err = query(device, value);
  if (err == cudaSuccess && cacheable && value > 0) cache[device].store(value, std::memory_order_relaxed);
  return err;
}

// Lets `kernel` launch with `smem` bytes of dynamic shared memory on the current device: above
// 48 KB a kernel must opt in, once per device and size.
inline cudaError_t opt_in_dynamic_smem(const void* kernel, int smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, int>> done;
  const auto key = std::make_tuple(kernel, device, smem);
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count(key)) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err == cudaSuccess) done.insert(key);
  return err;
}

}  // namespace fa
