// CPU implementation of frontier::fused_adamw_ and frontier::nonfinite_check_.
//
// All tensors of one call are treated as one flat index space cut into equal chunks that the
// threads of at::parallel_for take in turn, so a list of many small tensors and one huge tensor
// parallelize alike; each chunk runs the vectorized span loops of fused_adamw_cpu_kernels.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fused_adamw.h"
#include "fused_adamw_cpu_kernels.h"

namespace frontier {
namespace {

// Work is handed out in chunks of this many elements, dynamically: a thread that is descheduled
// (a busy or shared machine) holds up the others by one chunk at most, not by a static share.
constexpr int64_t kChunk = 1 << 16;

// ATEN_CPU_CAPABILITY=default selects PyTorch's baseline kernels; honour it for ours too.
bool baseline_only() {
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  return cap != nullptr && std::strcmp(cap, "default") == 0;
}

// Start offset of every tensor in the flat index space (size n + 1).
std::vector<int64_t> offsets_of(at::TensorList tensors) {
  std::vector<int64_t> offsets(tensors.size() + 1, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    offsets[i + 1] = offsets[i] + tensors[i].numel();
  }
  return offsets;
}

// Call fn(tensor, begin, end) for every piece of the flat index space, chunk by chunk, in parallel.
template <class Fn>
void parallel_over_tensors(const std::vector<int64_t>& offsets, const Fn& fn) {
  const int64_t total = offsets.back();
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  auto run_chunk = [&](int64_t chunk) {
    const int64_t lo = chunk * kChunk;
    const int64_t hi = std::min(total, lo + kChunk);
    // first tensor whose range ends after lo
    size_t t = std::upper_bound(offsets.begin(), offsets.end(), lo) - offsets.begin() - 1;
    for (; t + 1 < offsets.size() && offsets[t] < hi; ++t) {
      const int64_t begin = std::max(lo, offsets[t]) - offsets[t];
      const int64_t end = std::min(hi, offsets[t + 1]) - offsets[t];
      if (begin < end) {
        fn(t, begin, end);
      }
    }
  };
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), chunks);
  if (threads <= 1) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      run_chunk(chunk);
    }
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t chunk = next.fetch_add(1); chunk < chunks; chunk = next.fetch_add(1)) {
      run_chunk(chunk);
    }
  });
}

bool any_nonfinite(at::TensorList tensors, FrontierDType dtype, float grad_scale) {
  const cpu::CheckSpanFn check = cpu::select_check_span(dtype, baseline_only());
  std::atomic<uint32_t> found{0};
  parallel_over_tensors(offsets_of(tensors), [&](size_t t, int64_t begin, int64_t end) {
    if (found.load(std::memory_order_relaxed) == 0 && check(tensors[t].const_data_ptr(), grad_scale, begin, end)) {
      found.store(1, std::memory_order_relaxed);
    }
  });
  return found.load() != 0;
}

void nonfinite_check_cpu(at::TensorList tensors, const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  const FrontierDType dtype = check_nonfinite_args(tensors, grad_scale, found_inf);
  if (any_nonfinite(tensors, dtype, *grad_scale.const_data_ptr<float>())) {
    *found_inf.mutable_data_ptr<float>() = 1.0f;
  }
}

void fused_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList steps, at::TensorList model_copies, const at::Tensor& grad_scale,
                     const at::Tensor& found_inf, double lr, double beta1, double beta2, double eps,
                     double weight_decay, bool check_finite, int64_t seed) {
  const AdamwHyper hyper{lr, beta1, beta2, eps, weight_decay};
  const AdamwCallInfo info =
      check_adamw_args(params, grads, exp_avgs, exp_avg_sqs, steps, model_copies, grad_scale, found_inf, hyper);
  float* flag = found_inf.mutable_data_ptr<float>();
  const float scale = *grad_scale.const_data_ptr<float>();
  if (check_finite && *flag == 0.0f && any_nonfinite(grads, info.grad_dtype, scale)) {
    *flag = 1.0f;
  }
  if (*flag != 0.0f || params.empty()) {
    return;  // skipped: params, states and steps stay as they were
  }
  const cpu::AdamwSpanFn span =
      cpu::select_adamw_span(info.param_dtype, info.grad_dtype, info.state_dtype, info.has_copy, baseline_only());
  std::vector<cpu::SpanArgs> args(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    float* step = steps[i].mutable_data_ptr<float>();
    *step += 1.0f;
    args[i] = cpu::SpanArgs{params[i].mutable_data_ptr(),
                            grads[i].const_data_ptr(),
                            exp_avgs[i].mutable_data_ptr(),
                            exp_avg_sqs[i].mutable_data_ptr(),
                            info.has_copy ? model_copies[i].mutable_data_ptr() : nullptr,
                            adamw_coeffs(hyper, *step),
                            scale,
                            sr_key(static_cast<uint64_t>(seed), static_cast<uint32_t>(i), static_cast<uint32_t>(*step))};
  }
  parallel_over_tensors(offsets_of(params), [&](size_t t, int64_t begin, int64_t end) { span(args[t], begin, end); });
}

}  // namespace
}  // namespace frontier

TORCH_LIBRARY_IMPL(frontier, CPU, m) {
  m.impl("fused_adamw_", &frontier::fused_adamw_cpu);
  m.impl("nonfinite_check_", &frontier::nonfinite_check_cpu);
}
