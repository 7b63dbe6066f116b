// Torch-side pieces of the multi-tensor AdamW op shared by every backend: argument checks and
// dtype codes. The schema itself lives in ops.cpp; kernels in fused_adamw_cpu.cpp and csrc/cuda/.
#pragma once

#include <ATen/core/Tensor.h>

#include "adamw_math.h"

namespace frontier {

// Map a tensor's dtype to the kernels' code; throws for unsupported dtypes, naming `what`.
FrontierDType dtype_code(const at::Tensor& t, const char* what);

// What the checked arguments of one fused_adamw_ call look like (all lists homogeneous).
struct AdamwCallInfo {
  FrontierDType param_dtype, grad_dtype, state_dtype;
  bool has_copy;
};

// Check every argument of fused_adamw_ (lengths, devices, dtypes, shapes, contiguity, the scalar
// tensors and the hyper-parameter ranges); throws c10::Error with the offending index and value.
AdamwCallInfo check_adamw_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                               at::TensorList exp_avg_sqs, at::TensorList steps, at::TensorList model_copies,
                               const at::Tensor& grad_scale, const at::Tensor& found_inf, const AdamwHyper& h);

// Check the arguments of nonfinite_check_ (one dtype, one device, contiguous); returns the dtype code.
FrontierDType check_nonfinite_args(at::TensorList tensors, const at::Tensor& grad_scale,
                                   const at::Tensor& found_inf);

}  // namespace frontier
