// cuTensorMapEncodeTiled for CuTe's TMA descriptors, resolved from the driver once.
//
// By default CUTLASS looks the driver function up (cudaGetDriverEntryPoint) on every descriptor
// it encodes: four per forward call, which cost hundreds of microseconds per call on an H100 and
// left the GPU idle between short kernels.  The SM90 units define
// CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL (fwd_sm90_traits.h) so CuTe calls the symbol directly,
// and this definition (hidden, like every symbol of the library but its C entry points) forwards
// to a pointer fetched on first use.  Nothing links against libcuda: the library still loads on
// machines without a driver.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

namespace {

PFN_cuTensorMapEncodeTiled_v12000 resolve() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found;
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    return nullptr;
  }
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

}  // namespace

extern "C" CUresult CUDAAPI cuTensorMapEncodeTiled(CUtensorMap* tensor_map, CUtensorMapDataType data_type,
                                                   cuuint32_t rank, void* address, const cuuint64_t* dims,
                                                   const cuuint64_t* strides, const cuuint32_t* box,
                                                   const cuuint32_t* element_strides, CUtensorMapInterleave interleave,
                                                   CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2_promotion,
                                                   CUtensorMapFloatOOBfill oob_fill) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = resolve();
  if (encode == nullptr) return CUDA_ERROR_NOT_FOUND;
  return encode(tensor_map, data_type, rank, address, dims, strides, box, element_strides, interleave, swizzle,
                l2_promotion, oob_fill);
}
