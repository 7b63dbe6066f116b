// CPU inner loops of the fused AdamW ops over one contiguous span of one tensor, chosen at run time
// for the running CPU (AVX2 on x86-64 when present, else the baseline ISA the build targets).
// Plain C++: no torch headers, so nothing but these loops is ever compiled for a wider ISA.
#pragma once

#include <stdint.h>

#include "adamw_math.h"

namespace frontier {
namespace cpu {

// One tensor's pointers and its coefficients for this step.
struct SpanArgs {
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* copy;  // bf16 model copy of an fp32 param, or nullptr
  AdamwCoeffs coeffs;
  float grad_scale;
  uint32_t sr_key;
};

// Update elements [begin, end) of one tensor.
using AdamwSpanFn = void (*)(const SpanArgs& args, int64_t begin, int64_t end);
// Nonzero when any of data[begin:end] * grad_scale is inf or NaN.
using CheckSpanFn = uint32_t (*)(const void* data, float grad_scale, int64_t begin, int64_t end);

// The loop for these dtypes on this CPU. `baseline_only` forces the build's baseline ISA (set by
// ATEN_CPU_CAPABILITY=default, as for PyTorch's own kernels).
AdamwSpanFn select_adamw_span(FrontierDType param, FrontierDType grad, FrontierDType state, bool copy,
                              bool baseline_only);
CheckSpanFn select_check_span(FrontierDType dtype, bool baseline_only);

// "avx2" or "baseline": what select_* picks on this CPU.
const char* active_isa(bool baseline_only);

}  // namespace cpu
}  // namespace frontier
