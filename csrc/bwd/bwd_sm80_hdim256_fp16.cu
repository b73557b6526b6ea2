// Backward, head dim 256, fp16 (one TU per head dim x dtype keeps the build parallel).
#include "bwd_configs.h"
FA_BWD_INSTANTIATE(256, fp16, cutlass::half_t)
