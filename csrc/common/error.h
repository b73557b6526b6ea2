// Error reporting shared by every entry point of the library (forward and backward).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "fa_params.h"

namespace fa {

// Stores the message returned by fa_last_error() on this thread.
void set_last_error(const std::string& message);
void clear_last_error();

// Turns the state after a launch into a status code and message.
inline int check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    set_last_error(std::string(what) + ": " + cudaGetErrorString(err));
    return FA_ERR_CUDA;
  }
  return FA_OK;
}

}  // namespace fa

#define FA_REQUIRE(cond, code, msg)        \
  do {                                     \
    if (!(cond)) {                         \
      ::fa::set_last_error(msg);           \
      return (code);                       \
    }                                      \
  } while (0)
