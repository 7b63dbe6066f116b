// CUDA dispatch of frontier::fused_adamw_ and frontier::nonfinite_check_: checks the arguments
// (shared with the CPU path), gathers device pointers and enqueues the plain-CUDA launcher
// (fused_adamw_kernel.cu) on the current stream. Compiled only when torch has CUDA (setup.py).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../fused_adamw.h"
#include "fused_adamw_kernel.h"

namespace frontier {
namespace {

std::vector<void*> pointers(at::TensorList tensors) {
  std::vector<void*> out;
  out.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    out.push_back(t.data_ptr());
  }
  return out;
}

std::vector<int64_t> numels(at::TensorList tensors) {
  std::vector<int64_t> out;
  out.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    out.push_back(t.numel());
  }
  return out;
}

void nonfinite_check_cuda(at::TensorList tensors, const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  const FrontierDType dtype = check_nonfinite_args(tensors, grad_scale, found_inf);
  TORCH_CHECK(grad_scale.is_cuda(), "frontier::nonfinite_check_: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(grad_scale.device());
  const std::vector<void*> data = pointers(tensors);
  const std::vector<int64_t> sizes = numels(tensors);
  C10_CUDA_CHECK(frontier_nonfinite_check_cuda(static_cast<int64_t>(tensors.size()), data.data(), sizes.data(), dtype,
                                               grad_scale.const_data_ptr<float>(), found_inf.mutable_data_ptr<float>(),
                                               c10::cuda::getCurrentCUDAStream().stream()));
}

void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                      at::TensorList steps, at::TensorList model_copies, const at::Tensor& grad_scale,
                      const at::Tensor& found_inf, double lr, double beta1, double beta2, double eps,
                      double weight_decay, bool check_finite, int64_t seed) {
  const AdamwHyper hyper{lr, beta1, beta2, eps, weight_decay};
  const AdamwCallInfo info =
      check_adamw_args(params, grads, exp_avgs, exp_avg_sqs, steps, model_copies, grad_scale, found_inf, hyper);
  TORCH_CHECK(grad_scale.is_cuda(), "frontier::fused_adamw_: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(grad_scale.device());
  const std::vector<void*> p = pointers(params), g = pointers(grads), m = pointers(exp_avgs),
                           v = pointers(exp_avg_sqs), c = pointers(model_copies);
  std::vector<float*> s;
  for (const at::Tensor& step : steps) {
    s.push_back(step.mutable_data_ptr<float>());
  }
  const std::vector<int64_t> sizes = numels(params);
  FrontierAdamwLaunch args{};
  args.num_tensors = static_cast<int64_t>(params.size());
  args.params = p.data();
  args.grads = g.data();
  args.exp_avgs = m.data();
  args.exp_avg_sqs = v.data();
  args.steps = s.data();
  args.model_copies = info.has_copy ? c.data() : nullptr;
  args.numels = sizes.data();
  args.param_dtype = info.param_dtype;
  args.grad_dtype = info.grad_dtype;
  args.state_dtype = info.state_dtype;
  args.grad_scale = grad_scale.const_data_ptr<float>();
  args.found_inf = found_inf.mutable_data_ptr<float>();
  args.lr = lr;
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.check_finite = check_finite ? 1 : 0;
  args.seed = static_cast<uint64_t>(seed);
  C10_CUDA_CHECK(frontier_fused_adamw_cuda(&args, c10::cuda::getCurrentCUDAStream().stream()));
}

}  // namespace
}  // namespace frontier

TORCH_LIBRARY_IMPL(frontier, CUDA, m) {
  m.impl("fused_adamw_", &frontier::fused_adamw_cuda);
  m.impl("nonfinite_check_", &frontier::nonfinite_check_cuda);
}
