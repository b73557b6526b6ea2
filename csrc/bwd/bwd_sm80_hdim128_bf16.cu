// Backward, head dim 128, bf16 (one TU per head dim x dtype keeps the build parallel).
#include "bwd_configs.h"
FA_BWD_INSTANTIATE(128, bf16, cutlass::bfloat16_t)
