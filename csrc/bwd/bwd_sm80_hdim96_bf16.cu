// Backward, head dim 96, bf16 (one TU per head dim x dtype keeps the build parallel).
#include "bwd_configs.h"
FA_BWD_INSTANTIATE(96, bf16, cutlass::bfloat16_t)
