// C ABI of the CUDA fused AdamW launcher. The kernel (fused_adamw_kernel.cu) includes no torch
// headers, so it compiles with a bare nvcc; the torch glue (fused_adamw_cuda.cpp) fills these
// structs from tensors and passes the current stream.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One fused_adamw_ call. Pointer arrays are host arrays of device pointers, one per tensor; dtype
// fields hold FrontierDType codes (csrc/adamw_math.h). grad_scale / found_inf / steps[i] point to
// 1-element fp32 device tensors. Semantics are those of the frontier::fused_adamw_ schema (ops.cpp).
typedef struct FrontierAdamwLaunch {
  int64_t num_tensors;
  void* const* params;
  const void* const* grads;
  void* const* exp_avgs;
  void* const* exp_avg_sqs;
  float* const* steps;
  void* const* model_copies; /* NULL when there are none (bf16 copies of fp32 params otherwise) */
  const int64_t* numels;
  int param_dtype, grad_dtype, state_dtype;
  const float* grad_scale;
  float* found_inf;
  double lr, beta1, beta2, eps, weight_decay;
  int check_finite;
  uint64_t seed;
} FrontierAdamwLaunch;

// Enqueue the whole step on `stream`: [inf/NaN check,] update, step increment. Returns the launch
// error, if any (cudaSuccess otherwise); never synchronizes.
cudaError_t frontier_fused_adamw_cuda(const FrontierAdamwLaunch* args, cudaStream_t stream);

// Set *found_inf = 1 when any tensors[i] * (*grad_scale) holds an inf or NaN.
cudaError_t frontier_nonfinite_check_cuda(int64_t num_tensors, const void* const* tensors, const int64_t* numels,
                                          int dtype, const float* grad_scale, float* found_inf, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
