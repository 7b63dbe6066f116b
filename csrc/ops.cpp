// Schemas of the frontier ops (one definition for every backend) and the Python module init.
//
// frontier::fused_adamw_ is one AdamW step over lists of tensors, in place:
//   * params (fp32 masters or bf16), grads (fp32/bf16/fp16), exp_avgs + exp_avg_sqs (fp32, or bf16
//     stored with stochastic rounding), steps (one 1-element fp32 tensor per param, incremented),
//     model_copies (empty, or a bf16 copy per fp32 param, written in the same pass);
//   * grads are multiplied by grad_scale (unscale x clip coefficient) before use;
//   * found_inf (1-element fp32) is an in/out flag: with check_finite the op first sets it to 1 if
//     any scaled grad is inf/NaN; when it is nonzero the whole step is skipped (nothing written);
//   * seed picks the stochastic-rounding stream (with the tensor's index and step).
// frontier::nonfinite_check_ sets found_inf to 1 when any tensor * grad_scale has an inf/NaN, so a
// step split over several fused_adamw_ calls can check every grad before updating any param.
// Fake (meta) implementations are registered in Python: frontier/optim/ops.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(frontier, m) {
  m.set_python_module("frontier.optim.ops");
  m.def(
      "fused_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] steps, Tensor(e!)[] model_copies, Tensor grad_scale, Tensor(f!) found_inf, *, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, bool check_finite, int seed) -> ()");
  m.def("nonfinite_check_(Tensor[] tensors, Tensor grad_scale, Tensor(a!) found_inf) -> ()");
}

// `import frontier._C` loads this library (and so registers the ops); it defines no Python API.
#define FRONTIER_CONCAT2(a, b) a##b
#define FRONTIER_CONCAT(a, b) FRONTIER_CONCAT2(a, b)
PyMODINIT_FUNC FRONTIER_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
