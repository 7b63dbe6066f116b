// Argument checks for the fused AdamW ops, shared by the CPU kernel and the CUDA glue.
#include "fused_adamw.h"

#include <c10/util/Exception.h>

namespace frontier {

FrontierDType dtype_code(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return FRONTIER_F32;
    case at::kBFloat16:
      return FRONTIER_BF16;
    case at::kHalf:
      return FRONTIER_F16;
    default:
      TORCH_CHECK(false, "frontier::fused_adamw_: ", what, " has dtype ", t.scalar_type(),
                  "; expected float32, bfloat16 or float16");
  }
}

namespace {

void check_scalar_flag(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, "frontier: ", name,
              " must be a 1-element float32 tensor, got dtype ", t.scalar_type(), " with ", t.numel(),
              " elements");
  TORCH_CHECK(t.device() == device, "frontier: ", name, " is on ", t.device(), " but the tensors are on ", device);
}

// Every tensor of `list` is on `device`, contiguous and, when `shape_of` is given, shaped like it.
void check_list(at::TensorList list, const char* name, const at::Device& device, at::TensorList shape_of) {
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& t = list[i];
    TORCH_CHECK(t.defined(), "frontier::fused_adamw_: ", name, "[", i, "] is undefined");
    TORCH_CHECK(t.device() == device, "frontier::fused_adamw_: ", name, "[", i, "] is on ", t.device(),
                " but params[0] is on ", device);
    TORCH_CHECK(t.is_contiguous(), "frontier::fused_adamw_: ", name, "[", i, "] must be contiguous");
    if (!shape_of.empty()) {
      TORCH_CHECK(t.sizes() == shape_of[i].sizes(), "frontier::fused_adamw_: ", name, "[", i, "] has shape ",
                  t.sizes(), " but params[", i, "] has shape ", shape_of[i].sizes());
    }
  }
}

// All tensors of a non-empty list share one dtype; returns its code.
FrontierDType list_dtype(at::TensorList list, const char* name) {
  const FrontierDType code = dtype_code(list[0], name);
  for (size_t i = 1; i < list.size(); ++i) {
    TORCH_CHECK(list[i].scalar_type() == list[0].scalar_type(), "frontier::fused_adamw_: ", name, "[", i,
                "] has dtype ", list[i].scalar_type(), " but ", name, "[0] has ", list[0].scalar_type(),
                " (one call takes one dtype per list)");
  }
  return code;
}

}  // namespace

AdamwCallInfo check_adamw_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                               at::TensorList exp_avg_sqs, at::TensorList steps, at::TensorList model_copies,
                               const at::Tensor& grad_scale, const at::Tensor& found_inf, const AdamwHyper& h) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "frontier::fused_adamw_: params, grads, exp_avgs, exp_avg_sqs and steps must have the same length, got ",
              n, ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size(), ", ", steps.size());
  TORCH_CHECK(model_copies.empty() || model_copies.size() == n,
              "frontier::fused_adamw_: model_copies must be empty or as long as params (", n, "), got ",
              model_copies.size());
  TORCH_CHECK(h.lr >= 0.0, "frontier::fused_adamw_: lr must be >= 0, got ", h.lr);
  TORCH_CHECK(h.beta1 >= 0.0 && h.beta1 < 1.0, "frontier::fused_adamw_: beta1 must be in [0, 1), got ", h.beta1);
  TORCH_CHECK(h.beta2 >= 0.0 && h.beta2 < 1.0, "frontier::fused_adamw_: beta2 must be in [0, 1), got ", h.beta2);
  TORCH_CHECK(h.eps > 0.0, "frontier::fused_adamw_: eps must be > 0, got ", h.eps);
  TORCH_CHECK(h.weight_decay >= 0.0, "frontier::fused_adamw_: weight_decay must be >= 0, got ", h.weight_decay);
  AdamwCallInfo info{FRONTIER_F32, FRONTIER_F32, FRONTIER_F32, !model_copies.empty()};
  const at::Device device = n ? params[0].device() : grad_scale.device();
  check_scalar_flag(grad_scale, "grad_scale", device);
  check_scalar_flag(found_inf, "found_inf", device);
  if (n == 0) {
    return info;
  }
  check_list(params, "params", device, {});
  check_list(grads, "grads", device, params);
  check_list(exp_avgs, "exp_avgs", device, params);
  check_list(exp_avg_sqs, "exp_avg_sqs", device, params);
  check_list(model_copies, "model_copies", device, params);
  for (size_t i = 0; i < n; ++i) {
    check_scalar_flag(steps[i], "steps[i]", device);
  }
  info.param_dtype = list_dtype(params, "params");
  info.grad_dtype = list_dtype(grads, "grads");
  info.state_dtype = list_dtype(exp_avgs, "exp_avgs");
  TORCH_CHECK(info.param_dtype != FRONTIER_F16, "frontier::fused_adamw_: params must be float32 or bfloat16");
  TORCH_CHECK(info.state_dtype != FRONTIER_F16, "frontier::fused_adamw_: exp_avgs must be float32 or bfloat16");
  TORCH_CHECK(list_dtype(exp_avg_sqs, "exp_avg_sqs") == info.state_dtype,
              "frontier::fused_adamw_: exp_avg_sqs must have the dtype of exp_avgs (", exp_avgs[0].scalar_type(), ")");
  if (info.has_copy) {
    TORCH_CHECK(list_dtype(model_copies, "model_copies") == FRONTIER_BF16 && info.param_dtype == FRONTIER_F32,
                "frontier::fused_adamw_: model_copies must be bfloat16 copies of float32 (master) params");
  }
  return info;
}

FrontierDType check_nonfinite_args(at::TensorList tensors, const at::Tensor& grad_scale,
                                   const at::Tensor& found_inf) {
  const at::Device device = tensors.empty() ? grad_scale.device() : tensors[0].device();
  check_scalar_flag(grad_scale, "grad_scale", device);
  check_scalar_flag(found_inf, "found_inf", device);
  if (tensors.empty()) {
    return FRONTIER_F32;
  }
  check_list(tensors, "tensors", device, {});
  return list_dtype(tensors, "tensors");
}

}  // namespace frontier
